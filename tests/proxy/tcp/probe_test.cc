#include "proxy/tcp/probe.h"

#include <string>

#include "gtest/gtest.h"

namespace keel::proxy::tcp {
namespace {

std::string Response(const std::string& status, const std::string& body) {
  return "HTTP/1.1 " + status + "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

TEST(CheckHealthResponse, HealthyEtcd) {
  EXPECT_TRUE(CheckHealthResponse(Response("200 OK", R"({"health":"true"})")).ok());
  // etcd 3.5 adds a reason field.
  EXPECT_TRUE(CheckHealthResponse(Response("200 OK", R"({"health":"true","reason":""})")).ok());
}

TEST(CheckHealthResponse, UnhealthyOrNotEtcd) {
  EXPECT_FALSE(
      CheckHealthResponse(Response("503 Service Unavailable", R"({"health":"false"})")).ok());
  EXPECT_FALSE(CheckHealthResponse(Response("200 OK", R"({"health":"false"})")).ok());
  EXPECT_FALSE(CheckHealthResponse(Response("200 OK", R"({"health":true})")).ok());
  EXPECT_FALSE(CheckHealthResponse(Response("404 Not Found", "404 page not found")).ok());
  EXPECT_FALSE(CheckHealthResponse(Response("200 OK", "ok")).ok());
  EXPECT_FALSE(CheckHealthResponse("HTTP/1.1 200 OK\r\n").ok());               // no end of headers
  EXPECT_FALSE(CheckHealthResponse(std::string("\x00\x00\x12\x04", 4)).ok());  // HTTP/2
}

TEST(CheckHealthResponse, ReasonNamesTheStatus) {
  absl::Status s =
      CheckHealthResponse(Response("503 Service Unavailable", R"({"health":"false"})"));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("503"), absl::string_view::npos) << s;
}

}  // namespace
}  // namespace keel::proxy::tcp
