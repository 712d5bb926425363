#!/usr/bin/env bash
# Installs Pantalaimon 0.10.5, the peer the benchmark test/bench/peers.ts compares us with, into
# .tools/pantalaimon-venv. Only the benchmark needs it, so deploy/setup.sh does not run this.
#
#   python3-olm   Debian's libolm binding (3.2.13 on Debian 12), by apt-get when missing: the
#                 venv sees it through --system-site-packages, so pip takes no olm wheel
#   pantalaimon   pinned to 0.10.5 from PyPI; pip resolves the rest (matrix-nio 0.20.2, …),
#                 without the UI extra (D-Bus, notifications) and without tantivy (search)
#
# A second run checks a marker and returns. On failure: one "pantalaimon: ..." line on stderr,
# exit 1, the details in .tools/pantalaimon.log.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$ROOT/.tools"
VENV="$TOOLS/pantalaimon-venv"
LOG="$TOOLS/pantalaimon.log"
VERSION=0.10.5
# Debian's olm module is built for Debian's Python: the venv must be made from that one.
PYTHON=/usr/bin/python3

say() { printf 'pantalaimon: %s\n' "$*" >&2; }
die() {
  printf 'pantalaimon: %s\n' "$*" >&2
  exit 1
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

if [ "$(cat "$VENV/.installed" 2>/dev/null)" = "$VERSION" ] && [ -x "$VENV/bin/pantalaimon" ] &&
  installed python3-olm; then
  exit 0
fi

mkdir -p "$TOOLS"
: >"$LOG"
[ -x "$PYTHON" ] || die "$PYTHON is missing (Debian's python3 is needed for its python3-olm)"

if ! installed python3-olm; then
  command -v apt-get >/dev/null || die "python3-olm is missing and there is no apt-get: this needs Debian 12 or similar"
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    die "python3-olm is not installed: run this as root, or apt-get install python3-olm first"
  fi
  say "installing Debian's python3-olm"
  if ! { "${as_root[@]}" apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends \
      python3-olm python3-venv; } >>"$LOG" 2>&1; then
    die "apt-get could not install python3-olm (details in .tools/pantalaimon.log)"
  fi
fi
"$PYTHON" -c 'import olm' >>"$LOG" 2>&1 ||
  die "python3-olm is installed but $PYTHON cannot import olm (details in .tools/pantalaimon.log)"

say "installing Pantalaimon $VERSION into .tools/pantalaimon-venv (about 10 seconds)"
rm -rf "$VENV"
"$PYTHON" -m venv --system-site-packages "$VENV" >>"$LOG" 2>&1 ||
  die "could not create a Python venv (details in .tools/pantalaimon.log)"
"$VENV/bin/pip" install --disable-pip-version-check --no-input -q "pantalaimon==$VERSION" >>"$LOG" 2>&1 ||
  die "pip could not install pantalaimon==$VERSION (details in .tools/pantalaimon.log)"
# The olm it runs with must be Debian's, not a wheel pip pulled in beside it.
olm_at=$("$VENV/bin/python" -c 'import olm; print(olm.__file__)' 2>>"$LOG") ||
  die "the venv cannot import olm (details in .tools/pantalaimon.log)"
case "$olm_at" in
/usr/lib/python3/dist-packages/*) ;;
*) die "the venv imports olm from $olm_at, not from Debian's python3-olm" ;;
esac
got=$("$VENV/bin/pantalaimon" --version 2>>"$LOG") ||
  die "the installed pantalaimon does not start (details in .tools/pantalaimon.log)"
case "$got" in
*"$VERSION"*) ;;
*) die "expected pantalaimon $VERSION, the venv has: $got" ;;
esac
"$VENV/bin/pip" freeze --disable-pip-version-check >"$VENV/freeze.txt" 2>>"$LOG" || true
echo "$VERSION" >"$VENV/.installed"
say "installed: $got, olm from Debian's python3-olm"
