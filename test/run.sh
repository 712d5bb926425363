#!/usr/bin/env bash
# The whole test suite: type check, lint, then unit and integration tests against real Synapse,
# swtpm, SoftHSM2 and a stock matrix-js-sdk peer. Installs what it needs first.
# Extra arguments go to vitest, e.g. `bash test/run.sh test/unit`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash deploy/setup.sh
# shellcheck source=/dev/null
source .tools/env
exec npm test --silent -- "$@"
