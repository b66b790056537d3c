#!/usr/bin/env bash
# Installs rsvg-convert (Debian's librsvg2-bin) when it is missing: the
# report tests (pkg/report) render each SVG timeline with it, and with
# LAMEDUCK_INTEGRATION=1 they fail without it. Prints its path on stdout.
set -euo pipefail

if bin="$(command -v rsvg-convert)"; then
  echo "$bin"
  exit 0
fi

die() { echo "install-rsvg: $*" >&2; exit 1; }
command -v apt-get >/dev/null || die "rsvg-convert is missing and there is no apt-get; install librsvg (librsvg2-bin, or librsvg on macOS) yourself"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "rsvg-convert is missing; run as root, or install sudo, to apt-get install librsvg2-bin"
  sudo=(sudo)
fi
echo "install-rsvg: installing librsvg2-bin for rsvg-convert" >&2
"${sudo[@]}" apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends librsvg2-bin >&2
bin="$(command -v rsvg-convert)" || die "apt-get installed librsvg2-bin, but rsvg-convert is still not on PATH"
echo "$bin"
