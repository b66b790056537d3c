#!/usr/bin/env bash
# Stops the Consul cluster started by start-consul-cluster.sh: TERM to every
# agent, KILL to those still running after CONSUL_CLUSTER_STOP_TIMEOUT seconds
# (default 5), then removes the PID files and the data dirs, so the next start
# is a fresh cluster. Logs stay (NAME.log). No-op if nothing is running.
#
# Environment (all optional):
#   CONSUL_CLUSTER_STOP_TIMEOUT  seconds between TERM and KILL (default 5)
#   LAMEDUCK_RUN_DIR             run dir parent (default /tmp/lameduck-run)
set -euo pipefail

CL_DIR="${LAMEDUCK_RUN_DIR:-/tmp/lameduck-run}/consul-cluster"
TIMEOUT="${CONSUL_CLUSTER_STOP_TIMEOUT:-5}"

say() { echo "stop-consul-cluster: $*" >&2; }

[ -d "$CL_DIR" ] || exit 0

# Our agent for member NAME ($2), alive and not a zombie (see start script).
alive() {
  local pid="$1" name="$2" state
  kill -0 "$pid" 2>/dev/null || return 1
  state="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)"
  [ -n "$state" ] && [ "$state" != Z ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$CL_DIR/$name"
}

names=() pids=()
for f in "$CL_DIR"/*.pid; do
  [ -f "$f" ] || continue
  name="$(basename "$f" .pid)"
  pid="$(cat "$f" 2>/dev/null || true)"
  case "$pid" in '' | *[!0-9]*) say "ignoring malformed PID file $f"; rm -f "$f"; continue ;; esac
  if alive "$pid" "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    names+=("$name") pids+=("$pid")
  fi
done

running() {
  local i
  for i in "${!pids[@]}"; do alive "${pids[$i]}" "${names[$i]}" && return 0; done
  return 1
}

deadline=$((SECONDS + TIMEOUT))
while running && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
if running; then
  for i in "${!pids[@]}"; do
    if alive "${pids[$i]}" "${names[$i]}"; then
      say "${names[$i]} (pid ${pids[$i]}) still running after ${TIMEOUT}s; sending KILL"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
  done
  for _ in $(seq 50); do running || break; sleep 0.1; done
fi
if running; then
  say "agents survived KILL: ${pids[*]}"
  exit 1
fi

rm -f "$CL_DIR"/*.pid
rm -rf "$CL_DIR"/consul-*/
if [ "${#pids[@]}" -gt 0 ]; then
  say "stopped ${names[*]}"
fi
