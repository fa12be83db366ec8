#pragma once

#include <cstdint>
#include <random>
#include <string>

namespace keel::bench {

// Picks benchmark keys as etcd's benchmark does: `key_size` bytes, zero
// filled, holding the signed varint of an index in [0, key_space_size) —
// sequential (i mod space) or uniformly random from a seeded generator.
// Thread-compatible: give each client loop its own generator.
class KeyGenerator {
 public:
  // REQUIRES: key_size >= 1, key_space_size >= 1.
  KeyGenerator(int key_size, uint64_t key_space_size, bool sequential, uint64_t seed);

  // The key of request number `i` (sequential mode) or a random key.
  std::string Next(uint64_t i);
  // The key for index `index` (no randomness).
  std::string KeyAt(uint64_t index) const;

 private:
  int key_size_;
  uint64_t key_space_size_;
  bool sequential_;
  std::mt19937_64 rng_;
};

// Appends the zig-zag varint encoding of `v` (Go's binary.PutVarint).
void AppendVarint(int64_t v, std::string* out);

// A value of `size` bytes: `prefix` followed by filler ('x'); truncated to
// `size` if the prefix is longer.
std::string MakeValue(int size, const std::string& prefix = "");

}  // namespace keel::bench
