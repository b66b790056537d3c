#!/usr/bin/env bash
# `make bench-wrk`: installs wrk from Debian when it is missing, then runs
# the wrkbench program (integration/wrkbench/main.go), passing on its flags,
# e.g. run.sh -rounds 5 -d 5s -c 32 -t 1. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
exec go run ./integration/wrkbench "$@"
