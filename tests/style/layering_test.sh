#!/usr/bin/env bash
# Keeps the layers honest (STYLE.md section 1): fails if a folder includes a
# library it must not see.
#  - libevent (event2/) only in proxy/tcp/
#  - grpc++ (grpcpp/) never in the Backend interface's decorators or store/
#  - LevelDB only in store/ and member/
#  - each folder includes only the folders below it (DESIGN.md's table)
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
check 'grpcpp/' 'grpc++ in the Backend interface, namespace/, cache/, coalesce/ or store/' 'api/server/|common/|proxy/|member/|cmd/|bench/'
check 'leveldb/' 'LevelDB outside store/ and member/' 'store/|member/'
# deps <folder> <include-prefix regex it must not use> <description>
deps() {
  local hits
  hits=$(grep -rnE "#include \"($2)" --include='*.h' --include='*.cc' "$1" 2>/dev/null || true)
  if [ -n "$hits" ]; then
    echo "FAIL: $3:"; echo "$hits"; fail=1
  else
    echo "ok: $3"
  fi
}
deps common '(api|proxy|namespace|cache|coalesce|store|member|cmd|bench)/' 'common/ uses nothing above it'
deps api '(proxy|namespace|cache|coalesce|store|member|cmd|bench)/' 'api/ uses only common/'
deps namespace '(proxy|cache|coalesce|store|member|cmd|bench|api/server)/' 'namespace/ uses only api/ and common/'
deps cache '(proxy|namespace|coalesce|store|member|cmd|bench|api/server)/' 'cache/ uses only api/ and common/'
deps coalesce '(proxy|namespace|cache|store|member|cmd|bench|api/server)/' 'coalesce/ uses only api/ and common/'
deps proxy/tcp '(api|proxy/grpc|namespace|cache|coalesce|store|member|cmd|bench)/' 'proxy/tcp/ uses only common/'
deps proxy/grpc '(proxy/tcp|store|member|cmd|bench)/' 'proxy/grpc/ uses api/, common/ and the decorators'
exit $fail
