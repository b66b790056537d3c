#!/usr/bin/env bash
# Starts a real Consul cluster on loopback for integration tests: 3 servers
# (consul-s1..s3 on 127.0.0.11-13) and 2 client agents (consul-c1, consul-c2 on
# 127.0.0.21-22), installing Consul first if needed. Each agent binds its own
# address, so all keep Consul's default ports (server RPC 8300, serf LAN 8301,
# HTTP 8500) and the cluster coexists with start-consul.sh's dev agent on
# 127.0.0.1. DNS, gRPC, gRPC-TLS and serf WAN are off.
#
# Waits until every agent reports the same leader, the raft configuration holds
# all servers as voters (/v1/status/peers lists them all) and every member is in
# the catalog with a passing serfHealth, then prints the variables a test needs
# as `export NAME=value` lines on stdout.
#
# Idempotent and self-healing: a running healthy cluster is left alone. A member
# that is dead (a test SIGKILLed it through NAME.pid) is restarted on its old
# data dir, and the script waits until the cluster is whole again. A running
# member whose flags differ from the wanted ones (e.g. CONSUL_CLUSTER_STREAMING
# changed) is stopped and restarted.
#
# Environment (all optional):
#   CONSUL_CLUSTER_SERVER_IPS     server addresses, space or comma separated
#                                 (default "127.0.0.11 127.0.0.12 127.0.0.13");
#                                 the Nth is consul-sN; bootstrap-expect = count
#   CONSUL_CLUSTER_CLIENT_IPS     client agent addresses (default
#                                 "127.0.0.21 127.0.0.22"); the Nth is consul-cN
#   CONSUL_CLUSTER_STREAMING      "false": client agents run with
#                                 use_streaming_backend = false ("true" sets it
#                                 explicitly); default: Consul's default (on)
#   CONSUL_CLUSTER_SERVER_HCL     extra HCL for the servers, CONSUL_CLUSTER_CLIENT_HCL
#                                 for the client agents (each one single-line
#                                 -hcl fragment). Servers default to
#                                 'autopilot { cleanup_dead_servers = false }', so they
#                                 heal in ~1 s however long a member was dead
#                                 (see the voter check below). Autopilot settings
#                                 are stored in raft when the cluster is created;
#                                 later restarts do not change them, so stop the
#                                 cluster first (or use `consul operator autopilot`)
#   CONSUL_CLUSTER_READY_TIMEOUT  readiness deadline in seconds (default 90)
#   LAMEDUCK_RUN_DIR              run dir parent (default /tmp/lameduck-run); the
#                                 cluster uses $LAMEDUCK_RUN_DIR/consul-cluster/
#                                 {NAME/ (data dir), NAME.pid, NAME.log}
#   CONSUL_VERSION, LAMEDUCK_CACHE_DIR   passed to install-consul.sh
#
# All addresses must be in 127.0.0.0/8 (on Linux all of it is on lo; macOS
# needs `ifconfig lo0 alias ADDR` for each).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
CL_DIR="${LAMEDUCK_RUN_DIR:-/tmp/lameduck-run}/consul-cluster"
READY_TIMEOUT="${CONSUL_CLUSTER_READY_TIMEOUT:-90}"
STREAMING="${CONSUL_CLUSTER_STREAMING:-}"
# Tests kill servers and heal them: keeping a dead server in the raft
# configuration lets it rejoin as a voter in about a second, instead of as a
# non-voter promoted 10-20 s later. Read only when the cluster is first made.
default_server_hcl='autopilot { cleanup_dead_servers = false }'
SERVER_HCL="${CONSUL_CLUSTER_SERVER_HCL-$default_server_hcl}"
CLIENT_HCL="${CONSUL_CLUSTER_CLIENT_HCL:-}"
read -r -a SERVER_IPS <<<"$(echo "${CONSUL_CLUSTER_SERVER_IPS:-127.0.0.11 127.0.0.12 127.0.0.13}" | tr ',' ' ')"
read -r -a CLIENT_IPS <<<"$(echo "${CONSUL_CLUSTER_CLIENT_IPS:-127.0.0.21 127.0.0.22}" | tr ',' ' ')"
HTTP_PORT=8500

die() { echo "start-consul-cluster: $*" >&2; exit 1; }
say() { echo "start-consul-cluster: $*" >&2; }

command -v curl >/dev/null 2>&1 || die "curl not found on PATH"
case "$READY_TIMEOUT" in '' | *[!0-9]*) die "CONSUL_CLUSTER_READY_TIMEOUT must be a number of seconds, got '$READY_TIMEOUT'" ;; esac
case "$STREAMING" in '' | true | false) ;; *) die "CONSUL_CLUSTER_STREAMING must be true, false or empty, got '$STREAMING'" ;; esac
[ "${#SERVER_IPS[@]}" -ge 1 ] || die "CONSUL_CLUSTER_SERVER_IPS is empty"

# Members, in order: NAMES[i] runs on IPS[i] with role ROLES[i].
NAMES=() IPS=() ROLES=()
for i in "${!SERVER_IPS[@]}"; do NAMES+=("consul-s$((i + 1))") IPS+=("${SERVER_IPS[$i]}") ROLES+=(server); done
for i in "${!CLIENT_IPS[@]}"; do NAMES+=("consul-c$((i + 1))") IPS+=("${CLIENT_IPS[$i]}") ROLES+=(client); done
for ip in "${IPS[@]}"; do
  [[ "$ip" =~ ^127\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] || die "$ip is not an address in 127.0.0.0/8"
  [ "$ip" != 127.0.0.1 ] || die "127.0.0.1 is start-consul.sh's dev agent; pick other loopback addresses"
done
[ "$(printf '%s\n' "${IPS[@]}" | sort | uniq -d)" = "" ] || die "an address is listed twice: ${IPS[*]}"

# The agent's arguments (after the binary) for member $1, one per line.
agent_args() {
  local i="$1" ip="${IPS[$1]}" s
  printf '%s\n' agent -node "${NAMES[$i]}" -bind "$ip" -client "$ip" -advertise "$ip" \
    -data-dir "$CL_DIR/${NAMES[$i]}" -http-port "$HTTP_PORT" \
    -dns-port -1 -grpc-port -1 -grpc-tls-port -1 -serf-wan-port -1 -log-level warn \
    -hcl 'disable_update_check = true'
  # Outside -dev, Consul asks checkpoint-api.hashicorp.com for updates; the
  # line above keeps all traffic on loopback. The default retry interval is
  # 30s, far too slow when the servers start at the same time as the clients.
  for s in "${SERVER_IPS[@]}"; do printf '%s\n' -retry-join "$s"; done
  printf '%s\n' -retry-interval 1s
  if [ "${ROLES[$i]}" = server ]; then
    # raft_multiplier 1 is Consul's recommended production value (the default,
    # 5, suits small VMs): a lost leader is replaced in ~1-3 s instead of ~10 s,
    # which tests that kill the leader depend on.
    printf '%s\n' -server -bootstrap-expect "${#SERVER_IPS[@]}" -hcl 'performance { raft_multiplier = 1 }'
    [ -z "$SERVER_HCL" ] || printf '%s\n' -hcl "$SERVER_HCL"
  else
    [ -z "$STREAMING" ] || printf '%s\n' -hcl "use_streaming_backend = $STREAMING"
    [ -z "$CLIENT_HCL" ] || printf '%s\n' -hcl "$CLIENT_HCL"
  fi
}

pidfile() { echo "$CL_DIR/$1.pid"; }
logfile() { echo "$CL_DIR/$1.log"; }

# Our agent for member NAME ($2), alive: the PID ($1) runs consul with that
# node name and data dir, and is not a zombie (a SIGKILLed agent whose parent
# has not reaped it yet still answers kill -0).
alive() {
  local pid="$1" name="$2" state
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  state="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)"
  [ -n "$state" ] && [ "$state" != Z ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$CL_DIR/$name"
}

read_pid() {
  local f
  f="$(pidfile "$1")"
  [ -f "$f" ] && cat "$f" 2>/dev/null || true
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

get() { curl -fsS --max-time 2 "http://$1:$HTTP_PORT$2" 2>/dev/null || true; }

any_alive() {
  local i
  for i in "$@"; do alive "$(read_pid "${NAMES[$i]}")" "${NAMES[$i]}" && return 0; done
  return 1
}

# Stops the members (indexes) given, all at once: TERM, up to 5 s, then KILL.
# For members restarted with other flags, or abandoned after a failed start.
stop_members() {
  local i pid
  for i in "$@"; do
    pid="$(read_pid "${NAMES[$i]}")"
    if alive "$pid" "${NAMES[$i]}"; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for _ in $(seq 50); do any_alive "$@" || break; sleep 0.1; done
  for i in "$@"; do
    pid="$(read_pid "${NAMES[$i]}")"
    if alive "$pid" "${NAMES[$i]}"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  for _ in $(seq 50); do any_alive "$@" || break; sleep 0.1; done
  for i in "$@"; do rm -f "$(pidfile "${NAMES[$i]}")"; done
}

STARTED=() # indexes of the members this call started
tail_logs() {
  local i log
  for i in "$@"; do
    log="$(logfile "${NAMES[$i]}")"
    [ -f "$log" ] || continue
    echo "start-consul-cluster: last 30 lines of $log:" >&2
    tail -n 30 "$log" >&2
  done
}
# Stops the members this call started and failed to bring up (their data dirs
# stay, so a new call restarts them where they were).
abandon() {
  [ "${#STARTED[@]}" -eq 0 ] || stop_members "${STARTED[@]}"
}

# Why the cluster is not ready yet (empty when it is), on stdout.
not_ready() {
  local i ip name leader="" l body s
  for i in "${!NAMES[@]}"; do
    l="$(get "${IPS[$i]}" /v1/status/leader)"
    case "$l" in *:*) ;; *) echo "${NAMES[$i]} has no leader"; return ;; esac
    [ -z "$leader" ] || [ "$l" = "$leader" ] || { echo "${NAMES[$i]} sees leader $l, others $leader"; return; }
    leader="$l"
  done
  ip="${SERVER_IPS[0]}"
  body="$(get "$ip" /v1/status/peers)"
  for s in "${SERVER_IPS[@]}"; do
    case "$body" in *"\"$s:8300\""*) ;; *) echo "raft peers lack $s: $body"; return ;; esac
  done
  # A dead server is dropped from raft by autopilot (cleanup_dead_servers)
  # about 10-20 s after it died; if it was, it rejoins as a non-voter until
  # autopilot promotes it (server_stabilization_time 10 s, checked every 10 s),
  # so healing then takes ~20 s instead of ~1 s. Waiting for that matters: a
  # test that kills a leader again while one server is a non-voter would leave
  # the cluster without quorum.
  body="$(get "$ip" /v1/operator/raft/configuration)"
  [ "$(grep -o '"Voter":true' <<<"$body" | wc -l)" -eq "${#SERVER_IPS[@]}" ] ||
    { echo "not all ${#SERVER_IPS[@]} servers are raft voters yet"; return; }
  # A passing serfHealth means the node is in the catalog and alive (a killed
  # member stays in /v1/catalog/nodes, with serfHealth critical).
  body="$(get "$ip" /v1/health/state/passing)"
  for name in "${NAMES[@]}"; do
    case "$body" in *"\"Node\":\"$name\",\"CheckID\":\"serfHealth\""*) ;;
      *) echo "$name is not in the catalog with a passing serfHealth"; return ;; esac
  done
}

wait_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT)) i why
  while why="$(not_ready)" && [ -n "$why" ]; do
    for i in "${!NAMES[@]}"; do
      if ! alive "$(read_pid "${NAMES[$i]}")" "${NAMES[$i]}"; then
        tail_logs "$i"
        abandon
        die "${NAMES[$i]} exited during start-up"
      fi
    done
    if [ "$SECONDS" -ge "$deadline" ]; then
      if [ "${#STARTED[@]}" -gt 0 ]; then tail_logs "${STARTED[@]}"; else tail_logs "${!NAMES[@]}"; fi
      abandon
      die "cluster not ready within ${READY_TIMEOUT}s: $why"
    fi
    sleep 0.25
  done
}

print_exports() {
  local s c
  s="$(printf "%s:$HTTP_PORT," "${SERVER_IPS[@]}")"
  c="$(printf "%s:$HTTP_PORT," "${CLIENT_IPS[@]}")"
  cat <<EOF
export CONSUL_CLUSTER_SERVERS=${s%,}
export CONSUL_CLUSTER_CLIENTS=${c%,}
export CONSUL_CLUSTER_DIR=$CL_DIR
EOF
}

mkdir -p "$CL_DIR"

# Which members need starting: dead ones, and live ones with other flags.
todo=() changed=()
for i in "${!NAMES[@]}"; do
  name="${NAMES[$i]}"
  pid="$(read_pid "$name")"
  if alive "$pid" "$name"; then
    if [ "$(tr '\0' '\n' <"/proc/$pid/cmdline" | tail -n +2)" = "$(agent_args "$i")" ]; then
      continue
    fi
    say "$name (pid $pid) runs with other flags; restarting it"
    changed+=("$i")
  else
    rm -f "$(pidfile "$name")"
  fi
  todo+=("$i")
done
[ "${#changed[@]}" -eq 0 ] || stop_members "${changed[@]}"

if [ "${#todo[@]}" -eq 0 ]; then
  wait_ready
  print_exports
  exit 0
fi

# An agent stopped a moment ago may still be closing its sockets: allow 5 s.
for i in "${todo[@]}"; do
  ports=(8301 "$HTTP_PORT")
  [ "${ROLES[$i]}" = server ] && ports+=(8300)
  for p in "${ports[@]}"; do
    tries=0
    while port_open "${IPS[$i]}" "$p"; do
      tries=$((tries + 1))
      [ "$tries" -le 10 ] || die "port ${IPS[$i]}:$p (for ${NAMES[$i]}) is in use by something else"
      sleep 0.5
    done
  done
done

bin="$("$here/install-consul.sh")"
start=$SECONDS
for i in "${todo[@]}"; do
  name="${NAMES[$i]}"
  log="$(logfile "$name")"
  if [ -d "$CL_DIR/$name" ]; then
    say "restarting $name on ${IPS[$i]} (data kept)"
    echo "=== start-consul-cluster: restart $(date -u +%FT%TZ)" >>"$log"
  else
    : >"$log"
  fi
  mkdir -p "$CL_DIR/$name"
  mapfile -t args < <(agent_args "$i")
  # setsid: the agent outlives this script and ignores the caller's Ctrl-C.
  setsid "$bin" "${args[@]}" </dev/null >>"$log" 2>&1 &
  echo $! >"$(pidfile "$name")"
  disown $! # no "Killed" job notices if abandon() stops it
  STARTED+=("$i")
done

wait_ready
say "ready after $((SECONDS - start))s (started: $(for i in "${STARTED[@]}"; do printf '%s ' "${NAMES[$i]}"; done | sed 's/ $//'))"
print_exports
