#!/usr/bin/env bash
# Stops the Nacos started by start-nacos.sh: TERM, wait up to NACOS_STOP_TIMEOUT
# seconds (default 30), then KILL. Removes the PID file. No-op if not running.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=nacos-lib.sh
. "$SCRIPT_DIR/nacos-lib.sh"
RUN_DIR="${LAMEDUCK_RUN_DIR:-/tmp/lameduck-run}/nacos"
PID_FILE="$RUN_DIR/nacos.pid"
TIMEOUT="${NACOS_STOP_TIMEOUT:-30}"

say() { echo "stop-nacos: $*" >&2; }

if [ ! -f "$PID_FILE" ]; then
  say "not running (no $PID_FILE)"
  exit 0
fi
pid="$(cat "$PID_FILE" 2>/dev/null || true)"
case "$pid" in
  '' | *[!0-9]*)
    say "ignoring malformed PID file $PID_FILE"
    rm -f "$PID_FILE"
    exit 0
    ;;
esac
if ! alive "$pid"; then
  say "not running (stale PID $pid)"
  rm -f "$PID_FILE"
  exit 0
fi

kill -TERM "$pid" 2>/dev/null || true
await_exit "$pid" $((SECONDS + TIMEOUT)) "$TIMEOUT" || exit 1
rm -f "$PID_FILE"
say "stopped (pid $pid)"
