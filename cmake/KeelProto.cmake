# keel_proto_generate(<out_srcs_var> <out_hdrs_var> GRPC <ON|OFF> PROTOS <files...>)
# Runs protoc (and the gRPC C++ plugin when GRPC is ON) on .proto files that
# live under the repository root, so generated headers are included as
# "api/etcdserverpb/rpc.pb.h", matching the proto import paths.
function(keel_proto_generate srcs_var hdrs_var)
  cmake_parse_arguments(ARG "" "GRPC" "PROTOS" ${ARGN})
  set(srcs)
  set(hdrs)
  foreach(proto ${ARG_PROTOS})
    get_filename_component(abs ${proto} ABSOLUTE)
    file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${abs})
    string(REGEX REPLACE "\\.proto$" "" stem ${rel})
    set(outs ${PROJECT_BINARY_DIR}/${stem}.pb.cc ${PROJECT_BINARY_DIR}/${stem}.pb.h)
    set(args --cpp_out=${PROJECT_BINARY_DIR})
    if(ARG_GRPC)
      set(outs ${PROJECT_BINARY_DIR}/${stem}.grpc.pb.cc ${PROJECT_BINARY_DIR}/${stem}.grpc.pb.h)
      set(args --grpc_out=${PROJECT_BINARY_DIR}
               --plugin=protoc-gen-grpc=$<TARGET_FILE:gRPC::grpc_cpp_plugin>)
    endif()
    add_custom_command(
      OUTPUT ${outs}
      COMMAND protobuf::protoc -I ${PROJECT_SOURCE_DIR} ${args} ${abs}
      DEPENDS ${abs} protobuf::protoc
      COMMENT "protoc ${rel}"
      VERBATIM)
    foreach(o ${outs})
      if(o MATCHES "\\.cc$")
        list(APPEND srcs ${o})
      else()
        list(APPEND hdrs ${o})
      endif()
    endforeach()
  endforeach()
  set(${srcs_var} ${srcs} PARENT_SCOPE)
  set(${hdrs_var} ${hdrs} PARENT_SCOPE)
endfunction()
