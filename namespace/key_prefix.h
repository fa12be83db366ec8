#pragma once

// The pure core of `--namespace`: how keys, range ends and returned keys map
// between a namespaced client and the backend (spec/proxy.md 2.9, with our
// fixes: the correct prefix end, and keys outside the prefix never returned).

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace keel::ns {

// One key prefix P. Immutable after construction, so thread-safe.
class KeyPrefix {
 public:
  // REQUIRES: !prefix.empty().
  explicit KeyPrefix(std::string prefix);

  // P itself.
  const std::string& prefix() const { return prefix_; }
  // end(P): the smallest key greater than every key starting with P.
  const std::string& end() const { return end_; }

  // The backend key for client key `key`: P+key.
  std::string Key(std::string_view key) const;
  // The backend range_end for client range_end `range_end`: empty stays empty
  // (a single key), the single byte "\x00" (every key >= key) becomes end(P),
  // anything else becomes P+range_end.
  std::string RangeEnd(std::string_view range_end) const;

  // Whether backend key `key` starts with P.
  bool Contains(std::string_view key) const;
  // The client key for backend key `key` (P cut off); nullopt when `key` does
  // not start with P and so must not reach the client.
  std::optional<std::string> Strip(std::string_view key) const;
  // The client keys for `keys`, in order: those starting with P, stripped;
  // the others are left out.
  std::vector<std::string> Filter(const std::vector<std::string>& keys) const;

  // etcd's prefix end of `key`: increment the last byte below 0xff and cut
  // everything after it; "\x00" (no upper bound) when every byte is 0xff or
  // `key` is empty.
  static std::string PrefixEnd(std::string_view key);

 private:
  std::string prefix_;
  std::string end_;
};

}  // namespace keel::ns
