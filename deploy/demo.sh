#!/usr/bin/env bash
# The demo: starts the local world (Synapse, swtpm, SoftHSM2, stock peers), shows it working,
# and stops it. Installs what it needs first. `bash deploy/demo.sh --help` for options.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash deploy/setup.sh
# shellcheck source=/dev/null
source .tools/env
exec node deploy/demo/main.ts "$@"
