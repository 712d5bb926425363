#!/usr/bin/env bash
# Installs what the demo and the tests need, idempotently; quick when everything is in place.
#
#   Debian packages  swtpm, tpm2-tools, softhsm2, opensc, bubblewrap, python3-venv, build tools
#   Node.js 24       from the npm registry's node-linux-<arch> package into .tools/node, only
#                    when the machine's node is not 24 (the system's node is never replaced)
#   npm 11           into .tools/npm, only when the machine's npm is missing or older
#   Synapse          a Python venv in .tools/venv, pinned by deploy/synapse-requirements.txt
#   Dendrite         the second homeserver the suites run on, v0.13.8 built with `go install`
#                    into .tools/dendrite (Go 1.21 or newer; about 3 minutes, once)
#   schemathesis     the local API's fuzzer, a venv of its own in .tools/fuzz-venv, pinned by
#                    deploy/fuzz-requirements.txt (Python 3.11 or newer)
#   npm ci           the locked dependencies, rebuilt only when package-lock.json changes
#   web UI           endpoint/untrusted/web built into its dist/ (esbuild, from the lockfile)
#   Chromium         Debian's, for the web UI's browser tests (driven by playwright-core,
#                    which downloads no browser of its own)
#   users            mte-vault, mte-endpoint, mte-gateway (as root): one per compartment
#
# Everything fetched is pinned (Node and npm by their registry integrity hash). It writes
# .tools/env, which the demo and test scripts source to use what it chose.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$ROOT/.tools"
NODE_VERSION=24.21.0
NODE_INTEGRITY_x64='sha512-3nULszZ5X0fciYpG0t6TrdApJzAn8+FlINP6OiMX7V8HrvpATPN936U1LlReOJriLRa4e8yEqQBYCnLyPNAs7Q=='
NODE_INTEGRITY_arm64='sha512-FpJRPEz2OvvTLfjIOlNGFY9JLPMKgl5m+d4oGYBLg24kJ1mmvN1Zl/HPJgF4HDaJ51ISev1l1cRZ/DM+keXW5g=='
NPM_VERSION=11.19.1
NPM_INTEGRITY='sha512-ztsxKxt/kkIaAs+2i0GU6I+DRmUdrNasxTZKJe9TCdSjKxlhah/4r/hl5ygMD6XAg1qZ9c2TNomR4qgOydp10g=='
REGISTRY="${npm_config_registry:-https://registry.npmjs.org}"
REGISTRY="${REGISTRY%/}"
# wrk: the gateway benchmark's load, from a process of its own (a Node client in the bench's
# process costs more CPU per request than the gateway, and on 2 cores it set the rate).
APT_PACKAGES=(swtpm swtpm-tools tpm2-tools softhsm2 opensc bubblewrap python3 python3-venv
  build-essential ca-certificates curl openssl util-linux chromium fonts-noto-color-emoji wrk)

say() { printf 'setup: %s\n' "$*" >&2; }
die() {
  printf 'setup: error: %s\n' "$*" >&2
  exit 1
}

mkdir -p "$TOOLS"

# --- Debian packages ------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get: this needs Debian 12 or similar"
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    die "missing Debian packages (${missing[*]}): run this as root, or install them first"
  fi
  say "installing Debian packages: ${missing[*]}"
  if ! { "${as_root[@]}" apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends \
      "${missing[@]}"; } >"$TOOLS/apt.log" 2>&1; then
    die "apt-get could not install ${missing[*]} (details in .tools/apt.log)"
  fi
fi

# --- compartment users ----------------------------------------------------------------------
# One system user per compartment (deploy/compartments.json), no home, no login: the launcher
# runs each compartment as its own user. Only as root; the launcher says what is missing else.
COMPARTMENT_USERS=$(sed -n 's/^ *"user": *"\([a-z_][a-z0-9_-]*\)".*/\1/p' "$ROOT/deploy/compartments.json")
if [ "$(id -u)" -eq 0 ]; then
  for user in $COMPARTMENT_USERS; do
    id -u "$user" >/dev/null 2>&1 && continue
    say "creating the compartment user $user"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user" ||
      die "could not create the user $user (useradd)"
  done
fi

# --- Node.js 24 -----------------------------------------------------------------------------
# Fetches a registry tarball and checks it against its pinned integrity before unpacking.
fetch_verified() { # name version integrity dest
  local name=$1 version=$2 integrity=$3 dest=$4 tmp
  tmp=$(mktemp -d)
  local url="$REGISTRY/$name/-/${name##*/}-$version.tgz"
  curl -fsSL --retry 3 -o "$tmp/pkg.tgz" "$url" || {
    rm -rf "$tmp"
    die "could not download $name@$version from $REGISTRY"
  }
  local actual
  actual="sha512-$(openssl dgst -sha512 -binary "$tmp/pkg.tgz" | openssl base64 -A)"
  if [ "$actual" != "$integrity" ]; then
    rm -rf "$tmp"
    die "$name@$version from $REGISTRY does not match its pinned integrity hash"
  fi
  mkdir -p "$tmp/x"
  tar -xzf "$tmp/pkg.tgz" -C "$tmp/x"
  rm -rf "$dest"
  mv "$tmp/x/package" "$dest"
  rm -rf "$tmp"
}

node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

NODE_BIN=""
NODE_DIR=""
if command -v node >/dev/null && [ "$(node_major node)" = 24 ]; then
  NODE_BIN=$(command -v node)
  NODE_DIR=$(cd "$(dirname "$NODE_BIN")/.." && pwd)
  # pkcs11js compiles against Node's headers; without them node-gyp would try nodejs.org.
  [ -f "$NODE_DIR/include/node/node.h" ] || NODE_BIN=""
fi
if [ -z "$NODE_BIN" ]; then
  case "$(uname -m)" in
    x86_64) arch=x64 integrity=$NODE_INTEGRITY_x64 ;;
    aarch64) arch=arm64 integrity=$NODE_INTEGRITY_arm64 ;;
    *) die "no pinned Node.js for $(uname -m); install Node.js 24 with its headers yourself" ;;
  esac
  if [ "$("$TOOLS/node/bin/node" --version 2>/dev/null)" != "v$NODE_VERSION" ]; then
    say "installing Node.js $NODE_VERSION into .tools/node (the system's node stays as it is)"
    fetch_verified "node-linux-$arch" "$NODE_VERSION" "$integrity" "$TOOLS/node"
  fi
  NODE_BIN="$TOOLS/node/bin/node"
  NODE_DIR="$TOOLS/node"
fi
export PATH="$NODE_DIR/bin:$PATH"

# --- npm 11 ---------------------------------------------------------------------------------
npm_major() { npm --version 2>/dev/null | cut -d. -f1; }
if [ "$(npm_major || true)" != 11 ] || ! command -v npm >/dev/null; then
  if [ "$("$NODE_BIN" "$TOOLS/npm/bin/npm-cli.js" --version 2>/dev/null)" != "$NPM_VERSION" ]; then
    say "installing npm $NPM_VERSION into .tools/npm"
    fetch_verified npm "$NPM_VERSION" "$NPM_INTEGRITY" "$TOOLS/npm"
  fi
  mkdir -p "$TOOLS/bin"
  printf '#!/bin/sh\nexec node "%s/npm/bin/npm-cli.js" "$@"\n' "$TOOLS" >"$TOOLS/bin/npm"
  printf '#!/bin/sh\nexec node "%s/npm/bin/npx-cli.js" "$@"\n' "$TOOLS" >"$TOOLS/bin/npx"
  chmod +x "$TOOLS/bin/npm" "$TOOLS/bin/npx"
  export PATH="$TOOLS/bin:$PATH"
fi

# --- Synapse in a venv ----------------------------------------------------------------------
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=$(command -v python3 || true)
[ -n "$PYTHON" ] || die "python3 is missing"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "Synapse needs Python 3.10 or newer ($PYTHON is older)"
req_hash=$(sha256sum "$ROOT/deploy/synapse-requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$TOOLS/venv/.requirements.sha256" 2>/dev/null)" != "$req_hash" ] ||
  ! "$TOOLS/venv/bin/python" -c 'import synapse' 2>/dev/null; then
  say "installing Synapse into .tools/venv (about a minute)"
  rm -rf "$TOOLS/venv"
  "$PYTHON" -m venv "$TOOLS/venv" >"$TOOLS/venv.log" 2>&1 || die "could not create a Python venv (details in .tools/venv.log)"
  "$TOOLS/venv/bin/pip" install --disable-pip-version-check --no-input -q \
    -r "$ROOT/deploy/synapse-requirements.txt" >>"$TOOLS/venv.log" 2>&1 ||
    die "pip could not install Synapse (details in .tools/venv.log)"
  echo "$req_hash" >"$TOOLS/venv/.requirements.sha256"
fi

# --- Dendrite, built from the Go module proxy ----------------------------------------------
# The end-to-end suites run on a second homeserver too, and the federation test pairs it with
# Synapse. Pinned by version; the module proxy's checksum database checks what it fetches.
# Only the binaries are kept: the module and build caches (about 1 GB) go once it is built.
DENDRITE_VERSION=v0.13.8
DENDRITE_TOOLS=(dendrite generate-keys)
dendrite_ready() {
  [ "$(cat "$TOOLS/dendrite/VERSION" 2>/dev/null)" = "$DENDRITE_VERSION" ] || return 1
  for tool in "${DENDRITE_TOOLS[@]}"; do [ -x "$TOOLS/dendrite/bin/$tool" ] || return 1; done
}
if ! dendrite_ready; then
  GO=$(command -v go || true)
  [ -n "$GO" ] || [ ! -x /usr/local/go/bin/go ] || GO=/usr/local/go/bin/go
  [ -n "$GO" ] || die "Dendrite needs Go 1.21 or newer to build, and no go command was found (install Go, or put it on PATH)"
  say "building Dendrite $DENDRITE_VERSION into .tools/dendrite with $("$GO" version | cut -d' ' -f3) (about 3 minutes)"
  rm -rf "$TOOLS/dendrite" "$TOOLS/go-build"
  mkdir -p "$TOOLS/dendrite/bin"
  packages=()
  for tool in "${DENDRITE_TOOLS[@]}"; do packages+=("github.com/matrix-org/dendrite/cmd/$tool@$DENDRITE_VERSION"); done
  if ! GOBIN="$TOOLS/dendrite/bin" GOPATH="$TOOLS/go-build/path" GOCACHE="$TOOLS/go-build/cache" \
    GOFLAGS=-modcacherw GOTOOLCHAIN=local CGO_ENABLED=1 "$GO" install "${packages[@]}" >"$TOOLS/dendrite.log" 2>&1; then
    rm -rf "$TOOLS/go-build"
    die "go install could not build Dendrite $DENDRITE_VERSION (details in .tools/dendrite.log)"
  fi
  rm -rf "$TOOLS/go-build"
  echo "$DENDRITE_VERSION" >"$TOOLS/dendrite/VERSION"
fi

# --- schemathesis in a venv of its own -----------------------------------------------------
# Apart from Synapse's venv so that neither pins the other's dependencies.
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "schemathesis needs Python 3.11 or newer ($PYTHON is older)"
fuzz_hash=$(sha256sum "$ROOT/deploy/fuzz-requirements.txt" | cut -d' ' -f1)
fuzz_version() { "$TOOLS/fuzz-venv/bin/python" -c 'from importlib.metadata import version; print(version("schemathesis"))' 2>/dev/null; }
if [ "$(cat "$TOOLS/fuzz-venv/.requirements.sha256" 2>/dev/null)" != "$fuzz_hash" ] ||
  [ ! -x "$TOOLS/fuzz-venv/bin/schemathesis" ] || [ -z "$(fuzz_version)" ]; then
  say "installing schemathesis into .tools/fuzz-venv (about half a minute)"
  rm -rf "$TOOLS/fuzz-venv"
  "$PYTHON" -m venv "$TOOLS/fuzz-venv" >"$TOOLS/fuzz-venv.log" 2>&1 ||
    die "could not create a Python venv for schemathesis (details in .tools/fuzz-venv.log)"
  "$TOOLS/fuzz-venv/bin/pip" install --disable-pip-version-check --no-input -q \
    -r "$ROOT/deploy/fuzz-requirements.txt" >>"$TOOLS/fuzz-venv.log" 2>&1 ||
    die "pip could not install schemathesis (details in .tools/fuzz-venv.log)"
  echo "$fuzz_hash" >"$TOOLS/fuzz-venv/.requirements.sha256"
fi

# --- npm ci ---------------------------------------------------------------------------------
# node-gyp builds pkcs11js against the headers of the node that will run it, offline.
export npm_config_nodedir="$NODE_DIR"
lock_hash=$( (sha256sum "$ROOT/package-lock.json" | cut -d' ' -f1; "$NODE_BIN" --version) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$ROOT/node_modules/.mte-installed" 2>/dev/null)" != "$lock_hash" ]; then
  say "installing npm dependencies (npm ci)"
  (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error >"$TOOLS/npm-ci.log" 2>&1) ||
    die "npm ci failed (details in .tools/npm-ci.log)"
  echo "$lock_hash" >"$ROOT/node_modules/.mte-installed"
fi

# --- the web UI -----------------------------------------------------------------------------
# Built every time (well under a second): the gateway serves whatever dist/ holds.
(cd "$ROOT" && "$NODE_BIN" endpoint/untrusted/web/build.ts >"$TOOLS/web-build.log" 2>&1) ||
  die "the web UI did not build: $(tail -1 "$TOOLS/web-build.log")"

# --- the compartments' bundles --------------------------------------------------------------
# Plain JavaScript, about 30 MiB less per process than running the TypeScript (a second each
# time). A bundle runs only while no source it was made from is newer (keyvault/common/entries.ts).
(cd "$ROOT" && "$NODE_BIN" deploy/build-compartments.ts >"$TOOLS/compartments-build.log" 2>&1) ||
  die "the compartments did not bundle: $(tail -1 "$TOOLS/compartments-build.log")"

cat >"$TOOLS/env" <<EOF
# Written by deploy/setup.sh: the tools it chose. Sourced by deploy/demo.sh and test/run.sh.
export PATH="$(dirname "$NODE_BIN"):${TOOLS}/bin:\$PATH"
export MTE_SYNAPSE_PYTHON="$TOOLS/venv/bin/python"
export MTE_SCHEMATHESIS="$TOOLS/fuzz-venv/bin/schemathesis"
export MTE_DENDRITE_BIN="$TOOLS/dendrite/bin"
export MTE_CHROMIUM="$(command -v chromium || echo /usr/bin/chromium)"
EOF
say "ready: node $("$NODE_BIN" --version), npm $(npm --version), $("$TOOLS/venv/bin/python" -c 'import synapse; print("synapse", synapse.__version__)'), dendrite $DENDRITE_VERSION, schemathesis $(fuzz_version), $(swtpm --version | head -1 | sed 's/,.*//')"
