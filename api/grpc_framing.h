#pragma once

// The gRPC message prefix on the wire (HTTP/2 DATA frames), for the code that
// frames gRPC messages itself (the grpc-proxy's frame relay, keel-bench's h2
// transport): 1 byte compressed flag, 4 bytes big-endian length.

#include <cstddef>
#include <cstdint>
#include <string>

#include "google/protobuf/message_lite.h"

namespace keel::api {

inline constexpr size_t kGrpcPrefix = 5;

// The message length a prefix (kGrpcPrefix bytes at `prefix`) announces.
inline uint64_t GrpcMessageLength(const uint8_t* prefix) {
  return (uint64_t{prefix[1]} << 24) | (uint64_t{prefix[2]} << 16) | (uint64_t{prefix[3]} << 8) |
         uint64_t{prefix[4]};
}

// Appends the prefix of an uncompressed message of `length` bytes.
inline void AppendGrpcPrefix(std::string& out, size_t length) {
  const auto n = static_cast<uint32_t>(length);
  const char prefix[kGrpcPrefix] = {0, static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                                    static_cast<char>(n >> 8), static_cast<char>(n)};
  out.append(prefix, kGrpcPrefix);
}

// `message` serialized behind its prefix, in one buffer.
inline std::string GrpcFramed(const google::protobuf::MessageLite& message) {
  const size_t size = message.ByteSizeLong();
  std::string framed;
  framed.reserve(kGrpcPrefix + size);
  AppendGrpcPrefix(framed, size);
  framed.resize(kGrpcPrefix + size);
  message.SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(framed.data() + kGrpcPrefix));
  return framed;
}

}  // namespace keel::api
