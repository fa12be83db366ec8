#include "namespace/key_prefix.h"

#include <utility>

namespace keel::ns {

KeyPrefix::KeyPrefix(std::string prefix) : prefix_(std::move(prefix)), end_(PrefixEnd(prefix_)) {}

std::string KeyPrefix::Key(std::string_view key) const {
  std::string out;
  out.reserve(prefix_.size() + key.size());
  out.append(prefix_);
  out.append(key);
  return out;
}

std::string KeyPrefix::RangeEnd(std::string_view range_end) const {
  if (range_end.empty()) return std::string();
  // The single byte 0 means "no upper bound" (etcd's --from-key and "all
  // keys"); inside the namespace the bound is the end of P, not P+"\x00",
  // which would select nothing but the key P itself.
  if (range_end.size() == 1 && range_end[0] == '\0') return end_;
  return Key(range_end);
}

bool KeyPrefix::Contains(std::string_view key) const { return key.starts_with(prefix_); }

std::optional<std::string> KeyPrefix::Strip(std::string_view key) const {
  if (!Contains(key)) return std::nullopt;
  return std::string(key.substr(prefix_.size()));
}

std::vector<std::string> KeyPrefix::Filter(const std::vector<std::string>& keys) const {
  std::vector<std::string> out;
  for (const std::string& key : keys) {
    if (std::optional<std::string> stripped = Strip(key)) out.push_back(std::move(*stripped));
  }
  return out;
}

std::string KeyPrefix::PrefixEnd(std::string_view key) {
  // etcd's clientv3.GetPrefixRangeEnd. The grpc-proxy's namespace wrapper
  // instead keeps the overflowed 0xff bytes as 0x00 ("a\xff" -> "b\x00"),
  // which wrongly includes the key "b" (scenario 41); we cut them off.
  std::string end(key);
  for (size_t i = end.size(); i > 0; --i) {
    if (static_cast<unsigned char>(end[i - 1]) < 0xff) {
      end[i - 1] = static_cast<char>(static_cast<unsigned char>(end[i - 1]) + 1);
      end.resize(i);
      return end;
    }
  }
  return std::string(1, '\0');
}

}  // namespace keel::ns
