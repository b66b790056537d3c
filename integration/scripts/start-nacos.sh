#!/usr/bin/env bash
# Starts a standalone Nacos (embedded Derby, auth on) bound to 127.0.0.1, waits
# until a client can log in and reach the gRPC port, and prints the variables a
# test needs as `export NAME=value` lines on stdout. Safe to call when it is
# already running.
#
# Environment (all optional):
#   NACOS_PORT             main HTTP port (default 8848). Derived from it, as Nacos
#                          does: gRPC client port +1000, gRPC cluster port +1001,
#                          raft port -1000. All four must be free.
#   NACOS_CONSOLE_PORT     if set, also start the web console on this port
#                          (deployment type "merged"); default: no console.
#   NACOS_USERNAME         test user (default nacos, the built-in admin)
#   NACOS_PASSWORD         its password (default lameduck-nacos-pw)
#   NACOS_ADMIN_PASSWORD   password given to the admin user "nacos" on first start
#                          (default: NACOS_PASSWORD)
#   NACOS_START_TIMEOUT    readiness deadline in seconds (default 180)
#   NACOS_AUTH_CACHING     nacos.core.auth.caching.enabled (default false, so user
#                          and permission changes apply at once)
#   NACOS_JAVA_OPTS        JVM options (default -Xms128m -Xmx384m, C1 only, ...)
#   NACOS_AUTH_TOKEN_SECRET, NACOS_IDENTITY_KEY, NACOS_IDENTITY_VALUE
#                          auth secrets; generated once per run dir if unset
#   LAMEDUCK_RUN_DIR       run dir parent (default /tmp/lameduck-run); Nacos uses
#                          $LAMEDUCK_RUN_DIR/nacos/{conf,data,logs,nacos.pid}
#   NACOS_VERSION, LAMEDUCK_CACHE_DIR   passed to install-nacos.sh
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=nacos-lib.sh
. "$SCRIPT_DIR/nacos-lib.sh"
PORT="${NACOS_PORT:-8848}"
case "$PORT" in '' | *[!0-9]*) echo "start-nacos: NACOS_PORT must be a number, got '$PORT'" >&2; exit 1 ;; esac
GRPC_PORT=$((PORT + 1000))
CLUSTER_GRPC_PORT=$((PORT + 1001))
RAFT_PORT=$((PORT - 1000))
CONSOLE_PORT="${NACOS_CONSOLE_PORT:-}"
BASE_URL="$(base_url "$PORT")"
USERNAME="${NACOS_USERNAME:-nacos}"
PASSWORD="${NACOS_PASSWORD:-lameduck-nacos-pw}"
ADMIN_PASSWORD="${NACOS_ADMIN_PASSWORD:-$PASSWORD}"
TIMEOUT="${NACOS_START_TIMEOUT:-180}"
AUTH_CACHING="${NACOS_AUTH_CACHING:-false}"
JAVA_OPTS="${NACOS_JAVA_OPTS:-$DEFAULT_JAVA_OPTS}"
RUN_DIR="${LAMEDUCK_RUN_DIR:-/tmp/lameduck-run}/nacos"
PID_FILE="$RUN_DIR/nacos.pid"
LOG_DIR="$RUN_DIR/logs"
OUT_LOG="$LOG_DIR/nacos.out"

die() { echo "start-nacos: $*" >&2; exit 1; }
say() { echo "start-nacos: $*" >&2; }

need_tools
case "$PORT" in '' | *[!0-9]*) die "NACOS_PORT must be a number, got '$PORT'" ;; esac
[ "$RAFT_PORT" -gt 0 ] && [ "$CLUSTER_GRPC_PORT" -lt 65536 ] || die "NACOS_PORT $PORT leaves raft/gRPC ports out of range"

print_exports() {
  cat <<EOF
export NACOS_ADDR=$HOST:$PORT
export NACOS_HOST=$HOST
export NACOS_PORT=$PORT
export NACOS_GRPC_PORT=$GRPC_PORT
export NACOS_CONTEXT_PATH=$CONTEXT_PATH
export NACOS_USERNAME=$USERNAME
export NACOS_PASSWORD=$PASSWORD
EOF
}

# Stops a Nacos this script started and failed to bring up.
abandon() {
  if [ "${STARTED_HERE:-0}" = 1 ]; then
    "$SCRIPT_DIR/stop-nacos.sh" >/dev/null 2>&1 || true
    rm -f "$PID_FILE"
  fi
}

# Stops what this run started (see abandon), then dies.
fail() {
  abandon
  die "$*"
}

# Waits until the server answers and the test user can log in.
wait_ready() {
  local pid="$1" deadline=$((SECONDS + TIMEOUT))
  until server_ready "$PORT"; do
    if ! alive "$pid"; then
      tail_log "$OUT_LOG"
      fail "nacos (pid $pid) exited during start-up"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail_log "$OUT_LOG"
      fail "nacos not ready on $BASE_URL (gRPC $GRPC_PORT) within ${TIMEOUT}s"
    fi
    sleep 0.5
  done
  say "server answering after ${SECONDS}s; setting up auth"
  setup_auth "$deadline"
}

# Sets the admin password (see init_admin) and waits until the admin and the test
# user can log in. With auth caching on, users reload every ~15s, so a fresh
# password may be rejected for a while.
setup_auth() {
  local deadline="$1" body
  body="$(init_admin "$BASE_URL" "$ADMIN_PASSWORD" 5)"
  case "$body" in
    *'"code":0'*) say "initialized admin user nacos" ;;
    *'"code":409'*) ;;
    *) tail_log "$OUT_LOG"; fail "could not initialize the Nacos admin password: $body" ;;
  esac
  wait_login fail true "$BASE_URL" nacos "$ADMIN_PASSWORD" "$deadline" \
    "admin login failed within ${TIMEOUT}s; the data in $RUN_DIR may hold another admin password (stop, then delete $RUN_DIR/data)"
  if [ "$USERNAME" != nacos ]; then
    ensure_user die "$BASE_URL" "$TOKEN" "$USERNAME" "$PASSWORD"
  fi
  wait_login fail true "$BASE_URL" "$USERNAME" "$PASSWORD" "$deadline" \
    "login as $USERNAME failed within ${TIMEOUT}s; the data in $RUN_DIR may hold another password (stop, then delete $RUN_DIR/data)"
}

mkdir -p "$RUN_DIR/conf" "$RUN_DIR/data" "$RUN_DIR/tmp" "$LOG_DIR"

if [ -f "$PID_FILE" ]; then
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  if alive "$pid"; then
    say "already running (pid $pid); checking readiness"
    wait_ready "$pid"
    print_exports
    exit 0
  fi
  rm -f "$PID_FILE"
fi

# A Nacos stopped a moment ago may still be closing its sockets: allow 5s.
# shellcheck disable=SC2046 # node_ports prints the ports as words
wait_ports_free "set NACOS_PORT to move Nacos's ports" $(node_ports "$PORT") ${CONSOLE_PORT:+"$CONSOLE_PORT"}

nacos_classpath

# Secrets are generated once per run dir so tokens survive restarts.
load_secrets "$RUN_DIR/conf/secrets.env"

DEPLOYMENT=server
[ -n "$CONSOLE_PORT" ] && DEPLOYMENT=merged

{
  cat <<EOF
# Generated by start-nacos.sh; rewritten on every start.
nacos.standalone=true
nacos.server.main.port=$PORT
nacos.server.contextPath=$CONTEXT_PATH
nacos.console.port=${CONSOLE_PORT:-8080}
nacos.console.contextPath=
server.address=$HOST
nacos.inetutils.ip-address=$HOST
nacos.logs.path=$LOG_DIR
# Empty platform = embedded Derby under nacos.home/data.
spring.sql.init.platform=
EOF
  auth_properties "$AUTH_CACHING" "$TOKEN_SECRET" "$IDENTITY_KEY" "$IDENTITY_VALUE"
  cat <<EOF
# Embedded Derby's login timeout is the pool's connection timeout (3s by
# default); a JVM starting beside others on 2 cores can take longer.
db.pool.config.connectionTimeout=60000
EOF
} >"$RUN_DIR/conf/application.properties"

say "starting Nacos ($DEPLOYMENT) on $HOST:$PORT, gRPC $GRPC_PORT, logs in $LOG_DIR"
launch_nacos "$RUN_DIR" "$LOG_DIR" "$CLASSPATH_ARG" "$JAVA_OPTS" "$DEPLOYMENT" -Dnacos.standalone=true
pid=$!
echo "$pid" >"$PID_FILE"
STARTED_HERE=1

start=$SECONDS
wait_ready "$pid"
say "ready after $((SECONDS - start))s (pid $pid)"
print_exports
