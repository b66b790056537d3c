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
HOST=127.0.0.1
PORT="${NACOS_PORT:-8848}"
GRPC_PORT=$((PORT + 1000))
CLUSTER_GRPC_PORT=$((PORT + 1001))
RAFT_PORT=$((PORT - 1000))
CONSOLE_PORT="${NACOS_CONSOLE_PORT:-}"
CONTEXT_PATH=/nacos
BASE_URL="http://$HOST:$PORT$CONTEXT_PATH"
USERNAME="${NACOS_USERNAME:-nacos}"
PASSWORD="${NACOS_PASSWORD:-lameduck-nacos-pw}"
ADMIN_PASSWORD="${NACOS_ADMIN_PASSWORD:-$PASSWORD}"
TIMEOUT="${NACOS_START_TIMEOUT:-180}"
AUTH_CACHING="${NACOS_AUTH_CACHING:-false}"
# C1 only: less JIT CPU on a small machine and a faster start; tests don't need C2.
JAVA_OPTS="${NACOS_JAVA_OPTS:--Xms128m -Xmx384m -XX:MaxMetaspaceSize=256m -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=64m -XX:MaxDirectMemorySize=128m}"
RUN_DIR="${LAMEDUCK_RUN_DIR:-/tmp/lameduck-run}/nacos"
PID_FILE="$RUN_DIR/nacos.pid"
LOG_DIR="$RUN_DIR/logs"
OUT_LOG="$LOG_DIR/nacos.out"
LAUNCH_CLASS=lameduck.nacos.Launch

die() { echo "start-nacos: $*" >&2; exit 1; }
say() { echo "start-nacos: $*" >&2; }

command -v curl >/dev/null 2>&1 || die "curl not found on PATH"
command -v java >/dev/null 2>&1 || die "java not found on PATH (need Java 17+)"
case "$PORT" in '' | *[!0-9]*) die "NACOS_PORT must be a number, got '$PORT'" ;; esac
[ "$RAFT_PORT" -gt 0 ] && [ "$CLUSTER_GRPC_PORT" -lt 65536 ] || die "NACOS_PORT $PORT leaves raft/gRPC ports out of range"

# Our Nacos, alive: the PID runs our launcher.
alive() {
  local pid="$1"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$LAUNCH_CLASS"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" 2>/dev/null || true; }

# Prints an access token for $1/$2, or nothing.
login() {
  curl -s --max-time 5 -X POST "$BASE_URL/v1/auth/login" \
    --data-urlencode "username=$1" --data-urlencode "password=$2" 2>/dev/null |
    sed -n 's/.*"accessToken":"\([^"]*\)".*/\1/p' || true
}

server_ready() {
  [ "$(http_code "$BASE_URL/v3/admin/core/state/readiness")" = 200 ] && port_open "$GRPC_PORT"
}

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

tail_log() {
  if [ -f "$OUT_LOG" ]; then
    echo "start-nacos: last 50 lines of $OUT_LOG:" >&2
    tail -n 50 "$OUT_LOG" >&2
  fi
}

# Stops a Nacos this script started and failed to bring up.
abandon() {
  if [ "${STARTED_HERE:-0}" = 1 ]; then
    "$SCRIPT_DIR/stop-nacos.sh" >/dev/null 2>&1 || true
    rm -f "$PID_FILE"
  fi
}

# Waits until the server answers and the test user can log in.
wait_ready() {
  local pid="$1" deadline=$((SECONDS + TIMEOUT))
  until server_ready; do
    if ! alive "$pid"; then
      tail_log
      abandon
      die "nacos (pid $pid) exited during start-up"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail_log
      abandon
      die "nacos not ready on $BASE_URL (gRPC $GRPC_PORT) within ${TIMEOUT}s"
    fi
    sleep 0.5
  done
  say "server answering after ${SECONDS}s; setting up auth"
  setup_auth "$deadline"
}

# The admin user "nacos" has no password until one is set through the API (a
# one-time call, refused with 409 once an admin exists). With auth caching on,
# users reload every ~15s, so a fresh password may be rejected for a while.
setup_auth() {
  local deadline="$1" body
  body="$(curl -s --max-time 5 -X POST "$BASE_URL/v3/auth/user/admin" \
    --data-urlencode "password=$ADMIN_PASSWORD" 2>/dev/null || true)"
  case "$body" in
    *'"code":0'*) say "initialized admin user nacos" ;;
    *'"code":409'*) ;;
    *) tail_log; abandon; die "could not initialize the Nacos admin password: $body" ;;
  esac
  local admin_token=""
  until admin_token="$(login nacos "$ADMIN_PASSWORD")" && [ -n "$admin_token" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      abandon
      die "admin login failed within ${TIMEOUT}s; the data in $RUN_DIR may hold another admin password (stop, then delete $RUN_DIR/data)"
    fi
    sleep 1
  done
  if [ "$USERNAME" != nacos ]; then
    ensure_user "$admin_token"
  fi
  until [ -n "$(login "$USERNAME" "$PASSWORD")" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      abandon
      die "login as $USERNAME failed within ${TIMEOUT}s; the data in $RUN_DIR may hold another password (stop, then delete $RUN_DIR/data)"
    fi
    sleep 1
  done
}

# Creates NACOS_USERNAME with read/write on every namespace, if missing.
ensure_user() {
  local token="$1" role="lameduck_test" code
  code="$(http_code -X POST "$BASE_URL/v3/auth/user" -H "accessToken: $token" \
    --data-urlencode "username=$USERNAME" --data-urlencode "password=$PASSWORD")"
  case "$code" in 200 | 400 | 409) ;; *) die "creating user $USERNAME failed with HTTP $code" ;; esac
  code="$(http_code -X POST "$BASE_URL/v3/auth/role" -H "accessToken: $token" \
    --data-urlencode "role=$role" --data-urlencode "username=$USERNAME")"
  case "$code" in 200 | 400 | 409) ;; *) die "binding role $role to $USERNAME failed with HTTP $code" ;; esac
  # Resource patterns are namespace:group:resource; *:*:* covers every namespace.
  code="$(http_code -X POST "$BASE_URL/v3/auth/permission" -H "accessToken: $token" \
    --data-urlencode "role=$role" --data-urlencode 'resource=*:*:*' --data-urlencode "action=rw")"
  case "$code" in 200 | 400 | 409) ;; *) die "granting *:*:* to role $role failed with HTTP $code" ;; esac
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
for p in "$PORT" "$GRPC_PORT" "$CLUSTER_GRPC_PORT" "$RAFT_PORT" ${CONSOLE_PORT:+"$CONSOLE_PORT"}; do
  tries=0
  while port_open "$p"; do
    tries=$((tries + 1))
    [ "$tries" -le 10 ] || die "port $p on $HOST is already in use (set NACOS_PORT to move Nacos's ports)"
    sleep 0.5
  done
done

INSTALL_DIR="$("$SCRIPT_DIR/install-nacos.sh")"
# Jar order matters (see install-nacos.sh), so no lib/* wildcard.
CLASSPATH_ARG="$INSTALL_DIR/classes:$(sed "s#^#$INSTALL_DIR/lib/#" "$INSTALL_DIR/classpath.txt" | paste -sd:)"

# Secrets are generated once per run dir so tokens survive restarts.
SECRETS="$RUN_DIR/conf/secrets.env"
if [ ! -f "$SECRETS" ]; then
  (
    umask 077
    {
      echo "TOKEN_SECRET=$(head -c 48 /dev/urandom | base64 -w0)"
      echo "IDENTITY_KEY=lameduck-$(head -c 9 /dev/urandom | base64 -w0 | tr '+/' '-_')"
      echo "IDENTITY_VALUE=$(head -c 24 /dev/urandom | base64 -w0 | tr '+/' '-_')"
    } >"$SECRETS.tmp"
    mv "$SECRETS.tmp" "$SECRETS"
  )
fi
# shellcheck disable=SC1090
. "$SECRETS"
TOKEN_SECRET="${NACOS_AUTH_TOKEN_SECRET:-$TOKEN_SECRET}"
IDENTITY_KEY="${NACOS_IDENTITY_KEY:-$IDENTITY_KEY}"
IDENTITY_VALUE="${NACOS_IDENTITY_VALUE:-$IDENTITY_VALUE}"
[ "$(printf '%s' "$TOKEN_SECRET" | base64 -d 2>/dev/null | wc -c)" -ge 32 ] ||
  die "NACOS_AUTH_TOKEN_SECRET must be base64 of at least 32 bytes"

DEPLOYMENT=server
[ -n "$CONSOLE_PORT" ] && DEPLOYMENT=merged

cat >"$RUN_DIR/conf/application.properties" <<EOF
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
nacos.core.auth.enabled=true
nacos.core.auth.admin.enabled=true
nacos.core.auth.console.enabled=true
nacos.core.auth.system.type=nacos
nacos.core.auth.plugin.nacos.token.expire.seconds=18000
# With caching on, user and permission changes (including the admin password set
# below) take up to ~15s to be seen; tests want them at once.
nacos.core.auth.caching.enabled=$AUTH_CACHING
nacos.core.auth.plugin.nacos.token.secret.key=$TOKEN_SECRET
nacos.core.auth.server.identity.key=$IDENTITY_KEY
nacos.core.auth.server.identity.value=$IDENTITY_VALUE
management.endpoints.web.exposure.include=health
server.tomcat.accesslog.enabled=false
# Embedded Derby's login timeout is the pool's connection timeout (3s by
# default); a JVM starting beside others on 2 cores can take longer.
db.pool.config.connectionTimeout=60000
EOF

say "starting Nacos ($DEPLOYMENT) on $HOST:$PORT, gRPC $GRPC_PORT, logs in $LOG_DIR"
# shellcheck disable=SC2086
(
  cd "$RUN_DIR"
  # Fewer glibc malloc arenas: Nacos runs many threads; saves ~100 MB of RSS.
  export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
  exec setsid java $JAVA_OPTS \
    -Dnacos.standalone=true \
    -Dnacos.home="$RUN_DIR" \
    -Dnacos.logs.path="$LOG_DIR" \
    -Dnacos.server.ip="$HOST" \
    -Dnacos.remote.grpc.listen.ip="$HOST" \
    -Dlameduck.raft.bind="$HOST" \
    -Dnacos.deployment.type="$DEPLOYMENT" \
    -Dderby.stream.error.file="$LOG_DIR/derby.log" \
    -Djava.io.tmpdir="$RUN_DIR/tmp" \
    -cp "$CLASSPATH_ARG" \
    "$LAUNCH_CLASS" \
    --spring.config.additional-location="file:$RUN_DIR/conf/"
) </dev/null >"$OUT_LOG" 2>&1 &
pid=$!
echo "$pid" >"$PID_FILE"
STARTED_HERE=1

start=$SECONDS
wait_ready "$pid"
say "ready after $((SECONDS - start))s (pid $pid)"
print_exports
