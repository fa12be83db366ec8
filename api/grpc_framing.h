#pragma once

// gRPC on the wire, for the code that frames gRPC messages itself (the
// grpc-proxy's frame relay, keel-bench's h2 transport): the message prefix in
// HTTP/2 DATA frames (1 byte compressed flag, 4 bytes big-endian length) and
// the percent-encoding of the grpc-message trailer.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

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

// A grpc-message value: gRPC's percent-encoding of bytes outside 0x20-0x7E
// and of '%' itself.
inline std::string GrpcMessageEncoded(std::string_view message) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(message.size());
  for (const char ch : message) {
    const auto b = static_cast<unsigned char>(ch);
    if (b < 0x20 || b > 0x7E || b == '%') {
      out.push_back('%');
      out.push_back(kHex[b >> 4]);
      out.push_back(kHex[b & 0xF]);
    } else {
      out.push_back(ch);
    }
  }
  return out;
}

// The inverse of GrpcMessageEncoded (a malformed escape is kept as it is).
inline std::string GrpcMessageDecoded(std::string_view value) {
  const auto nibble = [](char ch) -> int {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    return -1;
  };
  std::string out;
  out.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    const int high = value[i] == '%' && i + 2 < value.size() ? nibble(value[i + 1]) : -1;
    const int low = high >= 0 ? nibble(value[i + 2]) : -1;
    if (low >= 0) {
      out.push_back(static_cast<char>(high * 16 + low));
      i += 2;
    } else {
      out.push_back(value[i]);
    }
  }
  return out;
}

}  // namespace keel::api
