#!/usr/bin/env bash
# Keeps the layers honest (STYLE.md section 1): fails if a folder includes a
# library it must not see.
#  - libevent (event2/) only in proxy/tcp/
#  - grpc++ (grpcpp/) never in the Backend interface's decorators or store/
#  - LevelDB only in store/ and member/
set -uo pipefail
cd "${KEEL_SOURCE_DIR:-$(dirname "$0")/../..}"
fail=0
check() {  # check <pattern> <description> <allowed-dir-regex>
  local hits
  hits=$(grep -rnE "#include [<\"]$1" --include='*.h' --include='*.cc' \
           api common proxy namespace cache coalesce store member cmd bench 2>/dev/null |
         grep -vE "^($3)" || true)
  if [ -n "$hits" ]; then
    echo "FAIL: $2:"; echo "$hits"; fail=1
  else
    echo "ok: $2"
  fi
}
check 'event2/' 'libevent outside proxy/tcp/' 'proxy/tcp/'
check 'grpcpp/' 'grpc++ in namespace/, cache/, coalesce/ or store/' 'api/|common/|proxy/|member/|cmd/|bench/'
check 'leveldb/' 'LevelDB outside store/ and member/' 'store/|member/'
exit $fail
