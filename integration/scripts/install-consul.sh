#!/usr/bin/env bash
# Installs a pinned Consul binary, built from the Go module proxy, into a cache
# outside the repository. Prints the binary's path on stdout.
#
# Consul's go.mod carries replace directives, so `go install` refuses it; we
# copy the module, drop the replace block and build it with -mod=mod. The build
# takes about 11 minutes on 2 cores, hence the cache.
set -euo pipefail

CONSUL_VERSION="${CONSUL_VERSION:-1.20.6}"
CACHE_DIR="${LAMEDUCK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lameduck}"
BIN="$CACHE_DIR/consul-$CONSUL_VERSION/consul"

if [ -x "$BIN" ] && "$BIN" version >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi

echo "install-consul: building consul v$CONSUL_VERSION (about 11 minutes on 2 cores) into $BIN" >&2
work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

dir="$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "github.com/hashicorp/consul@v$CONSUL_VERSION" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [ -z "$dir" ] || [ ! -d "$dir" ]; then
  echo "install-consul: go mod download did not return a module directory for consul v$CONSUL_VERSION" >&2
  exit 1
fi

cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
# Drop the multi-line `replace ( ... )` block and any single-line replace.
sed -i -e '/^replace (/,/^)/d' -e '/^replace /d' "$work/src/go.mod"

mkdir -p "$(dirname "$BIN")"
(cd "$work/src" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -o "$BIN.tmp" .)
mv "$BIN.tmp" "$BIN"
"$BIN" version >&2
echo "$BIN"
