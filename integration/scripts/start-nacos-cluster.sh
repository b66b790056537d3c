#!/usr/bin/env bash
# Starts a 3-node Nacos cluster (embedded storage replicated by raft, auth on)
# bound to 127.0.0.1, waits until every node is ready, every node lets the test
# user log in and every node sees all members UP, and prints the variables a
# test needs as `export NAME=value` lines on stdout. Safe to call when it is
# already running; calling it again after a node died (say, a test killed it)
# restarts only the dead nodes, keeping their data, and waits for the cluster to
# be whole again.
#
# Environment (all optional):
#   NACOS_CLUSTER_PORTS    main HTTP ports, one per node, space- or comma-separated
#                          (default "8858 8868 8878"). Derived from each, as Nacos
#                          does: gRPC client port +1000, gRPC cluster port +1001,
#                          raft port -1000. All must be free and distinct, and
#                          must not collide with the standalone Nacos's ports
#                          (derived from NACOS_PORT, default 8848).
#   NACOS_USERNAME         test user (default nacos, the built-in admin)
#   NACOS_PASSWORD         its password (default lameduck-nacos-pw)
#   NACOS_ADMIN_PASSWORD   password given to the admin user "nacos" on first start
#                          (default: NACOS_PASSWORD)
#   NACOS_CLUSTER_START_TIMEOUT  readiness deadline in seconds (default 300)
#   NACOS_AUTH_CACHING     nacos.core.auth.caching.enabled (default false)
#   NACOS_CLUSTER_JAVA_OPTS JVM options per node (default -Xms128m -Xmx384m, C1
#                          only, ...)
#   NACOS_AUTH_TOKEN_SECRET, NACOS_IDENTITY_KEY, NACOS_IDENTITY_VALUE
#                          auth secrets shared by all nodes; generated once per
#                          run dir if unset
#   LAMEDUCK_RUN_DIR       run dir parent (default /tmp/lameduck-run); node N uses
#                          $LAMEDUCK_RUN_DIR/nacos-cluster/nodeN/{conf,data,logs,nacos.pid}
#   NACOS_VERSION, LAMEDUCK_CACHE_DIR   passed to install-nacos.sh
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=nacos-lib.sh
. "$SCRIPT_DIR/nacos-lib.sh"
PORTS_SPEC="${NACOS_CLUSTER_PORTS:-8858 8868 8878}"
read -r -a PORTS <<<"${PORTS_SPEC//,/ }"
STANDALONE_PORT="${NACOS_PORT:-8848}"
USERNAME="${NACOS_USERNAME:-nacos}"
PASSWORD="${NACOS_PASSWORD:-lameduck-nacos-pw}"
ADMIN_PASSWORD="${NACOS_ADMIN_PASSWORD:-$PASSWORD}"
TIMEOUT="${NACOS_CLUSTER_START_TIMEOUT:-300}"
AUTH_CACHING="${NACOS_AUTH_CACHING:-false}"
JAVA_OPTS="${NACOS_CLUSTER_JAVA_OPTS:-$DEFAULT_JAVA_OPTS}"
CLUSTER_DIR="${LAMEDUCK_RUN_DIR:-/tmp/lameduck-run}/nacos-cluster"

die() { echo "start-nacos-cluster: $*" >&2; exit 1; }
say() { echo "start-nacos-cluster: $*" >&2; }

need_tools
[ "${#PORTS[@]}" -ge 1 ] || die "NACOS_CLUSTER_PORTS is empty"

taken=" $(node_ports "$STANDALONE_PORT") "
for p in "${PORTS[@]}"; do
  case "$p" in '' | *[!0-9]*) die "NACOS_CLUSTER_PORTS must hold numbers, got '$p'" ;; esac
  [ "$p" -gt 1000 ] && [ "$((p + 1001))" -lt 65536 ] || die "port $p leaves raft/gRPC ports out of range"
  for q in $(node_ports "$p"); do
    case "$taken" in
      *" $q "*) die "port $q (derived from cluster port $p) collides with another cluster node or the standalone Nacos (ports $(node_ports "$STANDALONE_PORT"))" ;;
    esac
    taken="$taken$q "
  done
done

MEMBERS=""
for p in "${PORTS[@]}"; do MEMBERS="${MEMBERS:+$MEMBERS,}$HOST:$p"; done

node_dir() { echo "$CLUSTER_DIR/node$1"; }

# Number of members in state UP that the node on port $1 reports, given token $2.
# The list is {"code":0,...,"data":[{"ip":..,"port":..,"state":"UP",...},...]}.
members_up() {
  curl -s --max-time 5 -H "accessToken: $2" \
    "$(base_url "$1")/v3/admin/core/cluster/node/list" 2>/dev/null |
    grep -o '"state":"UP"' | wc -l || true
}

print_exports() {
  cat <<EOF
export NACOS_CLUSTER_ADDRS=$MEMBERS
export NACOS_USERNAME=$USERNAME
export NACOS_PASSWORD=$PASSWORD
EOF
}

# Copies the end of node $1's log to stderr.
node_tail_log() { tail_log "$(node_dir "$1")/logs/nacos.out"; }

# Stops the nodes this run started (TERM, then KILL after 15s); data stays.
STARTED=()
abandon() {
  local i pid dir deadline
  for i in "${STARTED[@]}"; do
    dir="$(node_dir "$i")"
    pid="$(cat "$dir/nacos.pid" 2>/dev/null || true)"
    alive "$pid" "$dir" && kill -TERM "$pid" 2>/dev/null || true
  done
  deadline=$((SECONDS + 15))
  for i in "${STARTED[@]}"; do
    dir="$(node_dir "$i")"
    pid="$(cat "$dir/nacos.pid" 2>/dev/null || true)"
    while alive "$pid" "$dir" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    alive "$pid" "$dir" && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/nacos.pid"
  done
}

fail() {
  abandon
  die "$*"
}

# Fails if a node this run started has exited.
check_started() {
  local i pid dir
  for i in "${STARTED[@]}"; do
    dir="$(node_dir "$i")"
    pid="$(cat "$dir/nacos.pid" 2>/dev/null || true)"
    if ! alive "$pid" "$dir"; then
      node_tail_log "$i"
      fail "node$i (port ${PORTS[$((i - 1))]}, pid $pid) exited during start-up"
    fi
  done
}

# Waits until every node answers, the admin password is set, the test user can
# log in on every node (users live in the raft-replicated store) and every node
# sees all members UP.
wait_ready() {
  local deadline=$((SECONDS + TIMEOUT)) i p
  for i in "${!PORTS[@]}"; do
    p="${PORTS[$i]}"
    until server_ready "$p"; do
      check_started
      if [ "$SECONDS" -ge "$deadline" ]; then
        node_tail_log "$((i + 1))"
        fail "node$((i + 1)) not ready on $(base_url "$p") (gRPC $((p + 1000))) within ${TIMEOUT}s"
      fi
      sleep 0.5
    done
  done
  say "all nodes answering after ${SECONDS}s; setting up auth"
  setup_auth "$deadline"
  local token n want="${#PORTS[@]}"
  for i in "${!PORTS[@]}"; do
    p="${PORTS[$i]}"
    token="$(login "$(base_url "$p")" nacos "$ADMIN_PASSWORD")"
    until n="$(members_up "$p" "$token")" && [ "$n" -eq "$want" ]; do
      check_started
      if [ "$SECONDS" -ge "$deadline" ]; then
        fail "node$((i + 1)) sees ${n:-0} of $want members UP after ${TIMEOUT}s"
      fi
      sleep 1
      token="$(login "$(base_url "$p")" nacos "$ADMIN_PASSWORD")"
    done
  done
}

# Sets the admin password (see init_admin) and waits until the admin and the
# test user can log in on every node. Any node will do for the password: the
# write goes through the raft leader. It fails until a leader is elected.
setup_auth() {
  local deadline="$1" body p="${PORTS[0]}"
  until
    body="$(init_admin "$(base_url "$p")" "$ADMIN_PASSWORD" 10)"
    case "$body" in *'"code":0'* | *'"code":409'*) true ;; *) false ;; esac
  do
    check_started
    if [ "$SECONDS" -ge "$deadline" ]; then
      fail "could not initialize the Nacos admin password within ${TIMEOUT}s: $body"
    fi
    sleep 1
  done
  case "$body" in *'"code":0'*) say "initialized admin user nacos" ;; esac
  local i
  for i in "${!PORTS[@]}"; do
    wait_login fail check_started "$(base_url "${PORTS[$i]}")" nacos "$ADMIN_PASSWORD" "$deadline" \
      "admin login on node$((i + 1)) failed within ${TIMEOUT}s; the data in $CLUSTER_DIR may hold another admin password (stop-nacos-cluster.sh deletes it)"
  done
  if [ "$USERNAME" != nacos ]; then
    # Through the last node the admin logged in to.
    ensure_user fail "$(base_url "${PORTS[$((${#PORTS[@]} - 1))]}")" "$TOKEN" "$USERNAME" "$PASSWORD"
  fi
  for i in "${!PORTS[@]}"; do
    wait_login fail check_started "$(base_url "${PORTS[$i]}")" "$USERNAME" "$PASSWORD" "$deadline" \
      "login as $USERNAME on node$((i + 1)) failed within ${TIMEOUT}s; the data in $CLUSTER_DIR may hold another password (stop-nacos-cluster.sh deletes it)"
  done
}

mkdir -p "$CLUSTER_DIR"

# Secrets are generated once per run dir so tokens survive restarts; all nodes
# share them (a token issued by one node is checked by the others).
load_secrets "$CLUSTER_DIR/secrets.env"

# Which nodes need starting.
TO_START=()
for i in "${!PORTS[@]}"; do
  n=$((i + 1))
  dir="$(node_dir "$n")"
  pid="$(cat "$dir/nacos.pid" 2>/dev/null || true)"
  if alive "$pid" "$dir"; then
    continue
  fi
  rm -f "$dir/nacos.pid"
  TO_START+=("$n")
done

if [ "${#TO_START[@]}" -eq 0 ]; then
  say "all ${#PORTS[@]} nodes running; checking readiness"
  wait_ready
  print_exports
  exit 0
fi

# A node stopped (or killed) a moment ago may still be closing its sockets: allow 5s.
for n in "${TO_START[@]}"; do
  # shellcheck disable=SC2046 # node_ports prints the ports as words
  wait_ports_free "set NACOS_CLUSTER_PORTS to move the cluster's ports" $(node_ports "${PORTS[$((n - 1))]}")
done

nacos_classpath

start=$SECONDS
# All nodes start at once: a node is ready only once raft has a leader, which
# needs a quorum of nodes up.
for n in "${TO_START[@]}"; do
  port="${PORTS[$((n - 1))]}"
  dir="$(node_dir "$n")"
  log_dir="$dir/logs"
  mkdir -p "$dir/conf" "$dir/data" "$dir/tmp" "$log_dir"
  # The file member lookup reads nacos.home/conf/cluster.conf.
  tr ',' '\n' <<<"$MEMBERS" >"$dir/conf/cluster.conf"
  {
    cat <<EOF
# Generated by start-nacos-cluster.sh; rewritten on every start of this node.
nacos.standalone=false
nacos.server.main.port=$port
nacos.server.contextPath=$CONTEXT_PATH
# No console (deployment type server); each node still gets its own port.
nacos.console.port=$((port + 2))
nacos.console.contextPath=
server.address=$HOST
nacos.inetutils.ip-address=$HOST
nacos.logs.path=$log_dir
nacos.core.member.lookup.type=file
# Embedded Derby under nacos.home/data, replicated by raft.
spring.sql.init.platform=
# Hikari's connection timeout is also Derby's login timeout (default 3s): with
# three JVMs starting on two cores, booting Derby takes longer.
db.pool.config.connectionTimeout=60000
# A start-up namespace migration check needs a raft leader: keep retrying until
# a quorum is up instead of exiting.
nacos.namespace.migrate.retry.times=600
EOF
    auth_properties "$AUTH_CACHING" "$TOKEN_SECRET" "$IDENTITY_KEY" "$IDENTITY_VALUE"
  } >"$dir/conf/application.properties"
  say "starting node$n on $HOST:$port, gRPC $((port + 1000)), raft $((port - 1000)), logs in $log_dir"
  launch_nacos "$dir" "$log_dir" "$CLASSPATH_ARG" "$JAVA_OPTS" server -Dnacos.standalone=false -DembeddedStorage=true
  echo "$!" >"$dir/nacos.pid"
  STARTED+=("$n")
done

wait_ready
say "cluster ready after $((SECONDS - start))s (started ${#TO_START[@]} of ${#PORTS[@]} nodes)"
print_exports
