#!/usr/bin/env bash
# Stops the Nacos cluster started by start-nacos-cluster.sh: TERM to every node,
# wait up to NACOS_STOP_TIMEOUT seconds (default 30), then KILL. Removes the PID
# files and the nodes' data (so the next start is a clean cluster); keeps logs
# and the shared secrets. No-op if not running.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=nacos-lib.sh
. "$SCRIPT_DIR/nacos-lib.sh"
CLUSTER_DIR="${LAMEDUCK_RUN_DIR:-/tmp/lameduck-run}/nacos-cluster"
TIMEOUT="${NACOS_STOP_TIMEOUT:-30}"

say() { echo "stop-nacos-cluster: $*" >&2; }

if [ ! -d "$CLUSTER_DIR" ]; then
  say "not running (no $CLUSTER_DIR)"
  exit 0
fi

pids=()
for dir in "$CLUSTER_DIR"/node*; do
  [ -d "$dir" ] || continue
  pid_file="$dir/nacos.pid"
  pid="$(cat "$pid_file" 2>/dev/null || true)"
  case "$pid" in
    '' | *[!0-9]*) ;;
    *)
      if alive "$pid" "$dir"; then
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
      fi
      ;;
  esac
done

deadline=$((SECONDS + TIMEOUT))
status=0
for pid in "${pids[@]}"; do
  await_exit "$pid" "$deadline" "$TIMEOUT" || status=1
done
[ "$status" = 0 ] || exit 1

for dir in "$CLUSTER_DIR"/node*; do
  [ -d "$dir" ] || continue
  rm -rf "$dir/nacos.pid" "$dir/data" "$dir/tmp"
done
if [ "${#pids[@]}" -eq 0 ]; then
  say "not running; removed data in $CLUSTER_DIR"
else
  say "stopped (pids ${pids[*]}); removed data in $CLUSTER_DIR"
fi
