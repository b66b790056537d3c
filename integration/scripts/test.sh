#!/usr/bin/env bash
# The project's test command (`make test`): starts real Consul and Nacos on
# loopback, standalone and as clusters, installing them first if they are missing (the first run builds
# Consul, about 11 minutes on 2 cores, and caches it outside the repo), then
# runs go vet and every test with the race detector. Servers this script
# started are stopped when it ends; servers already running are left alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts=integration/scripts
RUN_DIR="${LAMEDUCK_RUN_DIR:-/tmp/lameduck-run}"

started=()
cleanup() {
  for s in "${started[@]}"; do "$scripts/stop-$s.sh" || true; done
}
trap cleanup EXIT

# Every package builds and vets on Linux, macOS and Windows (Makefile's
# cross): cheap, so it fails fast, before any server starts.
make --no-print-directory cross

# The report tests render SVG with rsvg-convert; they fail without it below.
"$scripts/install-rsvg.sh" >/dev/null

# Every fuzz target for a few seconds (about a minute in all), also before any
# server starts: the parsers of what comes from outside (registry URLs, --config,
# admin JSON, /proc and sock_diag). `make fuzz` runs them longer.
FUZZTIME=4s "$scripts/fuzz.sh"

# Running already: a standalone server's PID file names a live process, or a
# cluster's first member answers.
running() {
  case "$1" in
    consul-cluster) curl -fsS --max-time 2 "http://127.0.0.11:8500/v1/status/leader" >/dev/null 2>&1 ;;
    nacos-cluster) curl -fsS --max-time 2 "http://127.0.0.1:8858/nacos/v3/admin/core/state/readiness" >/dev/null 2>&1 ;;
    *) [ -f "$RUN_DIR/$1/$1.pid" ] && kill -0 "$(cat "$RUN_DIR/$1/$1.pid")" 2>/dev/null ;;
  esac
}

# The standalone servers, then the clusters (integration/cluster_test.go):
# 3 Consul servers and 2 client agents on 127.0.0.11-22, 3 Nacos nodes on
# 8858/8868/8878. One at a time: JVMs starting together on 2 cores are slow.
for s in consul nacos consul-cluster nacos-cluster; do
  if running "$s"; then
    "$scripts/start-$s.sh" >/dev/null # running: just check it is ready
  else
    echo "test: starting $s ($SECONDS s)" >&2
    "$scripts/start-$s.sh" >/dev/null
    started+=("$s")
  fi
done
echo "test: servers ready ($SECONDS s)" >&2

# A missing server now fails the integration tests instead of skipping them.
export LAMEDUCK_INTEGRATION=1
go vet ./...
# Every package of ours runs with the race detector. The integration tests
# run without it: nacos-sdk-go v2.3.2 races with itself (its push handler and
# its reconnect's redoSubscribe both call ServiceInfoHolder.ProcessService),
# which would fail tests at random for a bug that is not ours. Our Nacos
# adapter runs under -race in its unit tests, against a fake SDK.
go test -race -count=1 -timeout 20m $(go list ./... | grep -v '/integration$')
go test -count=1 -timeout 20m ./integration/...
go run ./integration/proof -rounds 1 -out "${TMPDIR:-/tmp}/lameduck-proof-ci"
go run ./integration/proof -topology cluster -rounds 1 -out "${TMPDIR:-/tmp}/lameduck-proof-cluster-ci"
