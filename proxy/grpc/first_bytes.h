#pragma once

#include <cstddef>
#include <string_view>

namespace keel::proxy::grpcproxy {

// What a client connection's first bytes say it speaks. The grpc-proxy's
// port serves HTTP/2 (gRPC) and HTTP/1.1 side by side, as etcd's cmux does,
// in plain text (the accept loop peeks) and under TLS (the TlsTerminator
// looks at the decrypted bytes).
enum class FirstBytes {
  kTooFew,  // nothing yet, or a start of the HTTP/2 preface: wait for more
  kHttp2,   // the HTTP/2 preface
  kOther,   // anything else (HTTP/1.x, or garbage for the HTTP server to refuse)
};

// "PRI " starts only the HTTP/2 preface: this many bytes decide.
inline constexpr size_t kFirstBytesNeeded = 4;

// `head`: the first bytes so far, any number of them.
inline FirstBytes ClassifyFirstBytes(std::string_view head) {
  constexpr std::string_view kHttp2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  const std::string_view start = head.substr(0, kFirstBytesNeeded);
  if (kHttp2Preface.substr(0, start.size()) != start) return FirstBytes::kOther;
  return start.size() < kFirstBytesNeeded ? FirstBytes::kTooFew : FirstBytes::kHttp2;
}

}  // namespace keel::proxy::grpcproxy
