#!/usr/bin/env bash
# Starts a Consul dev agent on loopback, installing it first if needed.
# Idempotent: a running agent (PID file + leader elected) is left alone.
# Prints the address to export as CONSUL_HTTP_ADDR.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
RUN_DIR="${LAMEDUCK_RUN_DIR:-/tmp/lameduck-run}/consul"
CONSUL_HTTP_PORT="${CONSUL_HTTP_PORT:-8500}"
READY_TIMEOUT="${CONSUL_READY_TIMEOUT:-60}"
addr="127.0.0.1:$CONSUL_HTTP_PORT"
pidfile="$RUN_DIR/consul.pid"
log="$RUN_DIR/consul.log"

ready() { curl -fsS --max-time 2 "http://$addr/v1/status/leader" 2>/dev/null | grep -q ':'; }

if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && ready; then
  echo "CONSUL_HTTP_ADDR=$addr"
  exit 0
fi

bin="$("$here/install-consul.sh")"
mkdir -p "$RUN_DIR"
if curl -fsS --max-time 2 "http://$addr/v1/status/leader" >/dev/null 2>&1; then
  echo "start-consul: something else already answers on $addr; stop it or set CONSUL_HTTP_PORT" >&2
  exit 1
fi

# -dev keeps state in memory only; DNS is off because nothing here uses it.
nohup "$bin" agent -dev -client 127.0.0.1 -bind 127.0.0.1 -http-port "$CONSUL_HTTP_PORT" \
  -dns-port -1 -grpc-port -1 -grpc-tls-port -1 -log-level warn >"$log" 2>&1 &
echo $! >"$pidfile"

deadline=$((SECONDS + READY_TIMEOUT))
until ready; do
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "start-consul: consul exited during start-up; last lines of $log:" >&2
    tail -n 50 "$log" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "start-consul: consul not ready on $addr after ${READY_TIMEOUT}s; last lines of $log:" >&2
    tail -n 50 "$log" >&2
    exit 1
  fi
  sleep 0.2
done
echo "CONSUL_HTTP_ADDR=$addr"
