#!/bin/sh
# Keeps docs/architecture.md's picture true: reads its tables ("Layers and what each may
# include", the known exceptions, the networking files) and checks every project include of
# proto/ and daemon/ against them. Usage: layering_test.sh SOURCE_DIR
set -eu
src=$1
doc=$src/docs/architecture.md
cd "$src"
failed=0
fail() { echo "FAIL: $*"; failed=1; }

# The rows of the markdown table whose header starts with "| $1 |": the cells, '|'-separated.
table() {
  awk -v head="| $1 |" '
    index($0, head) == 1 { on = 1; next }
    on && /^\|---/ { next }
    on && /^\|/ { print; next }
    on { exit }' "$doc"
}
cells() { printf '%s\n' "$1" | awk -F'|' -v n="$2" '{ gsub(/`/, "", $n); gsub(/^ +| +$/, "", $n); print $n }'; }

layers=$(table layer)
[ -n "$layers" ] || { echo "FAIL: no layer table in $doc"; exit 1; }
exceptions=$(table file)
used_exceptions=""

# The layer of a file or of an included header ("proto/x.h", "daemon/sync/x.h", "daemon/x.cpp").
layer_of() {
  printf '%s\n' "$layers" | while IFS= read -r row; do
    for f in $(cells "$row" 3 | tr ',' ' '); do
      case $1 in "$f"*) cells "$row" 2; return ;; esac
    done
  done
}

for file in proto/*.h proto/*.cpp daemon/*.cpp daemon/*/*.h daemon/*/*.cpp; do
  [ -f "$file" ] || continue
  own=$(layer_of "$file")
  [ -n "$own" ] || { fail "$file: its folder has no row in the layer table of $doc"; continue; }
  allowed=$(printf '%s\n' "$layers" | while IFS= read -r row; do
    if [ "$(cells "$row" 2)" = "$own" ]; then cells "$row" 4 | tr -d ' ' | tr ',' ' '; fi; done)
  for inc in $(sed -n 's/^#include "\(\(proto\|daemon\)\/[^"]*\)".*/\1/p' "$file"); do
    target=$(layer_of "$inc")
    case " $allowed " in *" $target "*) continue ;; esac
    row=$(printf '%s\n' "$exceptions" | awk -F'|' -v f="$file" -v i="$inc" '
      { gsub(/[` ]/, "", $2); gsub(/[` ]/, "", $3) } $2 == f && $3 == i { print "yes" }')
    if [ "$row" = yes ]; then
      used_exceptions="$used_exceptions $file:$inc"
    else
      fail "$file ($own) includes $inc ($target); $own may include: $allowed"
    fi
  done
done

# Every exception is still needed.
printf '%s\n' "$exceptions" | while IFS= read -r row; do
  [ -n "$row" ] || continue  # an empty table: no exception
  f=$(cells "$row" 2)
  i=$(cells "$row" 3)
  case "$used_exceptions " in *" $f:$i "*) ;; *) echo "FAIL: exception $f -> $i is no longer used: remove it from $doc" ;; esac
done >"${TMPDIR:-/tmp}/layering.$$"
if [ -s "${TMPDIR:-/tmp}/layering.$$" ]; then cat "${TMPDIR:-/tmp}/layering.$$"; failed=1; fi
rm -f "${TMPDIR:-/tmp}/layering.$$"

# Asio and Beast only in the files the doc lists; no TLS below transport and serve.
net=$(cells "$(table networking | grep 'Asio and Beast')" 3 | tr ',' ' ')
[ -n "$net" ] || fail "no networking row in $doc"
for file in $(grep -lE '#include <boost/(asio|beast)' proto/* daemon/*.cpp daemon/*/* 2>/dev/null); do
  case " $net " in *" $file "*) ;; *) fail "$file includes Asio or Beast (allowed only in:$net)" ;; esac
done
for file in $(grep -lE '#include <(openssl/ssl\.h|boost/asio|boost/beast)' proto/* daemon/sync/* 2>/dev/null); do
  fail "$file includes networking code (proto/ and daemon/sync/ stay free of it)"
done

[ "$failed" = 0 ] && echo "layering: ok ($(printf '%s\n' "$layers" | wc -l) layers)"
exit "$failed"
