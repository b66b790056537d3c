# shellcheck shell=bash
# Helpers shared by start-nacos.sh, start-nacos-cluster.sh, stop-nacos.sh and
# stop-nacos-cluster.sh; sourced, not run: . "$SCRIPT_DIR/nacos-lib.sh"
#
# The sourcing script runs under `set -euo pipefail` and defines say (a message
# on stderr, with the script's name in front) and, where a helper below says so,
# die (say, then exit 1) and fail (clean up what it started, then die).

HOST=127.0.0.1
CONTEXT_PATH=/nacos
LAUNCH_CLASS=lameduck.nacos.Launch
# C1 only: less JIT CPU on a small machine and a faster start; tests don't need C2.
# shellcheck disable=SC2034 # used by the start scripts
DEFAULT_JAVA_OPTS="-Xms128m -Xmx384m -XX:MaxMetaspaceSize=256m -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=64m -XX:MaxDirectMemorySize=128m"

# Dies unless curl and java are on PATH.
need_tools() {
  command -v curl >/dev/null 2>&1 || die "curl not found on PATH"
  command -v java >/dev/null 2>&1 || die "java not found on PATH (need Java 17+)"
}

# Every port a Nacos with main HTTP port $1 binds: main, gRPC client, gRPC
# cluster, raft.
node_ports() { echo "$1 $(($1 + 1000)) $(($1 + 1001)) $(($1 - 1000))"; }

# The HTTP base URL of the Nacos with main port $1.
base_url() { echo "http://$HOST:$1$CONTEXT_PATH"; }

# Our Nacos, alive: PID $1 runs our launcher (guards against a reused PID) and,
# if a home directory $2 is given, with that nacos.home.
alive() {
  local pid="$1" home="${2:-}"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$LAUNCH_CLASS" &&
    { [ -z "$home" ] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-Dnacos.home=$home "; }
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

# Waits for PID $1, already sent TERM, to be gone; at the deadline $2 (in
# SECONDS) sends KILL, saying it ran for more than $3 seconds. Returns 1 if it
# survives KILL. Needs say.
await_exit() {
  local pid="$1" deadline="$2" timeout="$3"
  while exists "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.2
  done
  if exists "$pid"; then
    say "pid $pid still running after ${timeout}s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do exists "$pid" || break; sleep 0.1; done
  fi
  if exists "$pid"; then
    say "pid $pid survived KILL"
    return 1
  fi
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" 2>/dev/null || true; }

# Prints an access token for $2/$3 from the Nacos at base URL $1, or nothing.
login() {
  curl -s --max-time 5 -X POST "$1/v1/auth/login" \
    --data-urlencode "username=$2" --data-urlencode "password=$3" 2>/dev/null |
    sed -n 's/.*"accessToken":"\([^"]*\)".*/\1/p' || true
}

# The Nacos with main port $1 reports ready and its gRPC client port is open.
server_ready() {
  [ "$(http_code "$(base_url "$1")/v3/admin/core/state/readiness")" = 200 ] && port_open "$(($1 + 1000))"
}

# Copies the last 50 lines of log file $1, if any, to stderr. Needs say.
tail_log() {
  if [ -f "$1" ]; then
    say "last 50 lines of $1:"
    tail -n 50 "$1" >&2
  fi
}

# Waits until none of the ports $2... is open, allowing each 5s (a Nacos stopped
# a moment ago may still be closing its sockets); dies if one stays open, with
# the hint $1 in the message. Needs die.
wait_ports_free() {
  local hint="$1" p tries
  shift
  for p in "$@"; do
    tries=0
    while port_open "$p"; do
      tries=$((tries + 1))
      [ "$tries" -le 10 ] || die "port $p on $HOST is already in use ($hint)"
      sleep 0.5
    done
  done
}

# Builds the classpath of the Nacos that install-nacos.sh provides (installing it
# if needed) into CLASSPATH_ARG.
nacos_classpath() {
  local install_dir
  install_dir="$("$SCRIPT_DIR/install-nacos.sh")"
  # Jar order matters (see install-nacos.sh), so no lib/* wildcard.
  # shellcheck disable=SC2034 # read by the start scripts
  CLASSPATH_ARG="$install_dir/classes:$(sed "s#^#$install_dir/lib/#" "$install_dir/classpath.txt" | paste -sd:)"
}

# Sets TOKEN_SECRET, IDENTITY_KEY and IDENTITY_VALUE from NACOS_AUTH_TOKEN_SECRET,
# NACOS_IDENTITY_KEY and NACOS_IDENTITY_VALUE, falling back to the secrets file
# $1, which is generated if missing (so tokens survive restarts). Needs die.
load_secrets() {
  local secrets="$1"
  if [ ! -f "$secrets" ]; then
    (
      umask 077
      {
        echo "TOKEN_SECRET=$(head -c 48 /dev/urandom | base64 -w0)"
        echo "IDENTITY_KEY=lameduck-$(head -c 9 /dev/urandom | base64 -w0 | tr '+/' '-_')"
        echo "IDENTITY_VALUE=$(head -c 24 /dev/urandom | base64 -w0 | tr '+/' '-_')"
      } >"$secrets.tmp"
      mv "$secrets.tmp" "$secrets"
    )
  fi
  # shellcheck disable=SC1090
  . "$secrets"
  TOKEN_SECRET="${NACOS_AUTH_TOKEN_SECRET:-$TOKEN_SECRET}"
  IDENTITY_KEY="${NACOS_IDENTITY_KEY:-$IDENTITY_KEY}"
  IDENTITY_VALUE="${NACOS_IDENTITY_VALUE:-$IDENTITY_VALUE}"
  [ "$(printf '%s' "$TOKEN_SECRET" | base64 -d 2>/dev/null | wc -c)" -ge 32 ] ||
    die "NACOS_AUTH_TOKEN_SECRET must be base64 of at least 32 bytes"
}

# Prints the auth part of application.properties: auth on, caching $1 (true or
# false), token secret $2, server identity key $3 and value $4; and the web
# settings that go with it.
auth_properties() {
  cat <<EOF
nacos.core.auth.enabled=true
nacos.core.auth.admin.enabled=true
nacos.core.auth.console.enabled=true
nacos.core.auth.system.type=nacos
nacos.core.auth.plugin.nacos.token.expire.seconds=18000
# With caching on, user and permission changes (including the admin password set
# below) take up to ~15s to be seen; tests want them at once.
nacos.core.auth.caching.enabled=$1
nacos.core.auth.plugin.nacos.token.secret.key=$2
nacos.core.auth.server.identity.key=$3
nacos.core.auth.server.identity.value=$4
management.endpoints.web.exposure.include=health
server.tomcat.accesslog.enabled=false
EOF
}

# Starts Nacos in the background (its PID is then in $!) with home directory $1
# (which holds conf/ and tmp/), logs in $2 (stdout and stderr to $2/nacos.out),
# classpath $3, JVM options $4 (split on spaces), deployment type $5, and the
# further JVM options $6... (such as -Dnacos.standalone=...) right after $4.
launch_nacos() {
  local home="$1" log_dir="$2" classpath="$3" java_opts="$4" deployment="$5"
  shift 5
  # shellcheck disable=SC2086
  (
    cd "$home" || exit
    # Fewer glibc malloc arenas: Nacos runs many threads; saves ~100 MB of RSS.
    export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
    exec setsid java $java_opts \
      "$@" \
      -Dnacos.home="$home" \
      -Dnacos.logs.path="$log_dir" \
      -Dnacos.server.ip="$HOST" \
      -Dnacos.remote.grpc.listen.ip="$HOST" \
      -Dlameduck.raft.bind="$HOST" \
      -Dnacos.deployment.type="$deployment" \
      -Dderby.stream.error.file="$log_dir/derby.log" \
      -Djava.io.tmpdir="$home/tmp" \
      -cp "$classpath" \
      "$LAUNCH_CLASS" \
      --spring.config.additional-location="file:$home/conf/"
  ) </dev/null >"$log_dir/nacos.out" 2>&1 &
}

# Sets the password of the admin user "nacos" to $2 through the Nacos at base URL
# $1, waiting at most $3 seconds, and prints the reply. The admin user has no
# password until one is set through the API (a one-time call, refused with 409
# once an admin exists).
init_admin() {
  curl -s --max-time "$3" -X POST "$1/v3/auth/user/admin" \
    --data-urlencode "password=$2" 2>/dev/null || true
}

# Logs in as $4/$5 on the Nacos at base URL $3 until that gives a token, and sets
# TOKEN to it. Before each retry runs the command $2 (a check that may fail the
# start, or true); at the deadline $6 (in SECONDS) calls $1 (die or fail) with
# the message $7.
wait_login() {
  local on_error="$1" check="$2" url="$3" user="$4" password="$5" deadline="$6" message="$7"
  until TOKEN="$(login "$url" "$user" "$password")" && [ -n "$TOKEN" ]; do
    "$check"
    if [ "$SECONDS" -ge "$deadline" ]; then
      "$on_error" "$message"
    fi
    sleep 1
  done
}

# Creates user $4 (password $5) with read/write on every namespace, if missing,
# through the Nacos at base URL $2 with admin token $3. On an error calls $1 (die
# or fail) with a message.
ensure_user() {
  local on_error="$1" url="$2" token="$3" user="$4" password="$5" role="lameduck_test" code
  code="$(http_code -X POST "$url/v3/auth/user" -H "accessToken: $token" \
    --data-urlencode "username=$user" --data-urlencode "password=$password")"
  case "$code" in 200 | 400 | 409) ;; *) "$on_error" "creating user $user failed with HTTP $code" ;; esac
  code="$(http_code -X POST "$url/v3/auth/role" -H "accessToken: $token" \
    --data-urlencode "role=$role" --data-urlencode "username=$user")"
  case "$code" in 200 | 400 | 409) ;; *) "$on_error" "binding role $role to $user failed with HTTP $code" ;; esac
  # Resource patterns are namespace:group:resource; *:*:* covers every namespace.
  code="$(http_code -X POST "$url/v3/auth/permission" -H "accessToken: $token" \
    --data-urlencode "role=$role" --data-urlencode 'resource=*:*:*' --data-urlencode "action=rw")"
  case "$code" in 200 | 400 | 409) ;; *) "$on_error" "granting *:*:* to role $role failed with HTTP $code" ;; esac
}
