#!/usr/bin/env bash
# Stops the Nacos cluster started by start-nacos-cluster.sh: TERM to every node,
# wait up to NACOS_STOP_TIMEOUT seconds (default 30), then KILL. Removes the PID
# files and the nodes' data (so the next start is a clean cluster); keeps logs
# and the shared secrets. No-op if not running.
set -euo pipefail

CLUSTER_DIR="${LAMEDUCK_RUN_DIR:-/tmp/lameduck-run}/nacos-cluster"
TIMEOUT="${NACOS_STOP_TIMEOUT:-30}"
LAUNCH_CLASS=lameduck.nacos.Launch

# Our Nacos node, alive: the PID runs our launcher with that node's home
# (guards against a reused PID).
alive() {
  kill -0 "$1" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "$LAUNCH_CLASS" &&
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "-Dnacos.home=$2 "
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

if [ ! -d "$CLUSTER_DIR" ]; then
  echo "stop-nacos-cluster: not running (no $CLUSTER_DIR)" >&2
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
  while exists "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.2
  done
  if exists "$pid"; then
    echo "stop-nacos-cluster: pid $pid still running after ${TIMEOUT}s; sending KILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do exists "$pid" || break; sleep 0.1; done
  fi
  if exists "$pid"; then
    echo "stop-nacos-cluster: pid $pid survived KILL" >&2
    status=1
  fi
done
[ "$status" = 0 ] || exit 1

for dir in "$CLUSTER_DIR"/node*; do
  [ -d "$dir" ] || continue
  rm -rf "$dir/nacos.pid" "$dir/data" "$dir/tmp"
done
if [ "${#pids[@]}" -eq 0 ]; then
  echo "stop-nacos-cluster: not running; removed data in $CLUSTER_DIR" >&2
else
  echo "stop-nacos-cluster: stopped (pids ${pids[*]}); removed data in $CLUSTER_DIR" >&2
fi
