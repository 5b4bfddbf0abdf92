#!/usr/bin/env bash
# Set up (idempotent), then run the whole test suite (CPU, real multi-process DeepSpeed over gloo).
#   bash launch/test.sh [pytest args ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
# shellcheck source=launch/env.sh
. launch/env.sh
exec python -m pytest -q -p no:cacheprovider "$@" tests
