#include "bench/keys.h"

namespace keel::bench {

void AppendVarint(int64_t v, std::string* out) {
  uint64_t u = static_cast<uint64_t>(v) << 1;
  if (v < 0) u = ~u;
  while (u >= 0x80) {
    out->push_back(static_cast<char>((u & 0x7f) | 0x80));
    u >>= 7;
  }
  out->push_back(static_cast<char>(u));
}

KeyGenerator::KeyGenerator(int key_size, uint64_t key_space_size, bool sequential, uint64_t seed)
    : key_size_(key_size), key_space_size_(key_space_size), sequential_(sequential), rng_(seed) {}

std::string KeyGenerator::KeyAt(uint64_t index) const {
  std::string varint;
  AppendVarint(static_cast<int64_t>(index), &varint);
  std::string key(static_cast<size_t>(key_size_), '\0');
  // As in etcd: the varint fills the key from the start; a key shorter than
  // the varint keeps only its first bytes.
  for (size_t i = 0; i < key.size() && i < varint.size(); ++i) key[i] = varint[i];
  return key;
}

std::string KeyGenerator::Next(uint64_t i) {
  if (sequential_) return KeyAt(i % key_space_size_);
  std::uniform_int_distribution<uint64_t> dist(0, key_space_size_ - 1);
  return KeyAt(dist(rng_));
}

std::string MakeValue(int size, const std::string& prefix) {
  std::string v = prefix;
  if (static_cast<int>(v.size()) > size) v.resize(static_cast<size_t>(size));
  v.resize(static_cast<size_t>(size), 'x');
  return v;
}

}  // namespace keel::bench
