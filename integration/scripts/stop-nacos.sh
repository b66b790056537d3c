#!/usr/bin/env bash
# Stops the Nacos started by start-nacos.sh: TERM, wait up to NACOS_STOP_TIMEOUT
# seconds (default 30), then KILL. Removes the PID file. No-op if not running.
set -euo pipefail

RUN_DIR="${LAMEDUCK_RUN_DIR:-/tmp/lameduck-run}/nacos"
PID_FILE="$RUN_DIR/nacos.pid"
TIMEOUT="${NACOS_STOP_TIMEOUT:-30}"
LAUNCH_CLASS=lameduck.nacos.Launch

# Our Nacos, alive: the PID runs our launcher (guards against a reused PID).
alive() {
  kill -0 "$1" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "$LAUNCH_CLASS"
}

# Still running or exiting. While the JVM exits, its main thread can already be
# a zombie (and /proc/PID/cmdline empty) while other threads still hold the
# listening sockets, so wait until no thread is left.
exists() {
  kill -0 "$1" 2>/dev/null || return 1
  local state threads
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)"
  threads="$(ls "/proc/$1/task" 2>/dev/null | wc -l)"
  [ -n "$state" ] && { [ "$state" != Z ] || [ "$threads" -gt 1 ]; }
}

if [ ! -f "$PID_FILE" ]; then
  echo "stop-nacos: not running (no $PID_FILE)" >&2
  exit 0
fi
pid="$(cat "$PID_FILE" 2>/dev/null || true)"
case "$pid" in
  '' | *[!0-9]*)
    echo "stop-nacos: ignoring malformed PID file $PID_FILE" >&2
    rm -f "$PID_FILE"
    exit 0
    ;;
esac
if ! alive "$pid"; then
  echo "stop-nacos: not running (stale PID $pid)" >&2
  rm -f "$PID_FILE"
  exit 0
fi

kill -TERM "$pid" 2>/dev/null || true
deadline=$((SECONDS + TIMEOUT))
while exists "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
  sleep 0.2
done
if exists "$pid"; then
  echo "stop-nacos: pid $pid still running after ${TIMEOUT}s; sending KILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 50); do exists "$pid" || break; sleep 0.1; done
fi
if exists "$pid"; then
  echo "stop-nacos: pid $pid survived KILL" >&2
  exit 1
fi
rm -f "$PID_FILE"
echo "stop-nacos: stopped (pid $pid)" >&2
