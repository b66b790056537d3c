#!/usr/bin/env bash
# Stops the Consul agent started by start-consul.sh, by PID. No-op if none.
set -euo pipefail
RUN_DIR="${LAMEDUCK_RUN_DIR:-/tmp/lameduck-run}/consul"
pidfile="$RUN_DIR/consul.pid"
[ -f "$pidfile" ] || exit 0
pid="$(cat "$pidfile")"
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
fi
rm -f "$pidfile"
