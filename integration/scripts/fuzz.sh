#!/usr/bin/env bash
# Runs every fuzz target in the repository (each `func FuzzX(f *testing.F)` in a
# _test.go file) for FUZZTIME, one target per `go test -fuzz` (it takes one at a
# time): the registry URL parser, the --config decoder, the admin client's JSON and
# the /wait query, the /proc/net/tcp and sock_diag parsers. test.sh runs it for 4s
# each before any server starts; `make fuzz` runs it longer.
#
# A failing input is written to the package's testdata/fuzz/FuzzX/ and fails the
# run. Fix the bug and commit the input with the fix: `go test` then runs it as a
# seed, a regression test.
set -euo pipefail
cd "$(dirname "$0")/../.."
FUZZTIME="${FUZZTIME:-4s}"
# Minimising each new interesting input takes up to 60s by default, which stalls
# a short run; a crasher is still shrunk, for at most this long.
FUZZMINIMIZETIME="${FUZZMINIMIZETIME:-2s}"

start=$SECONDS
n=0
# "path/to/file_test.go:func FuzzX(f *testing.F) {" -> "./path/to FuzzX"
while read -r pkg name; do
  t0=$SECONDS
  if ! out=$(go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZETIME" "$pkg" 2>&1); then
    printf '%s\n' "$out" | tail -n 40 >&2
    echo "fuzz: $name in $pkg failed; the input is under $pkg/testdata/fuzz/$name/" >&2
    exit 1
  fi
  echo "fuzz: $name ($pkg) $((SECONDS - t0))s" >&2
  n=$((n + 1))
done < <(grep -rE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . \
  | sed -E 's#^(.*)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]*)\(.*#\1 \2#' | sort)
if [ "$n" -eq 0 ]; then
  echo "fuzz: no fuzz targets found" >&2
  exit 1
fi
echo "fuzz: $n targets, ${FUZZTIME} each, $((SECONDS - start))s in all" >&2
