#!/usr/bin/env bash
# Set up (idempotent), then train a reward model on one machine with the deepspeed launcher.
#   bash launch/train_local.sh [--config default|smollm2|tiny|FILE.yaml] [key.sub=value ...]
# NPROC ranks (default: one per GPU; on a CPU-only machine 1 rank using every core, measured fastest on one
# node: docs/performance.md "Launch layout"), MASTER_PORT (default: a free port).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
# shellcheck source=launch/env.sh
. launch/env.sh
if [ -z "${NPROC:-}" ]; then
  NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "$NPROC" -gt 0 ] || NPROC=1
fi
PORT=${MASTER_PORT:-$(free_port)}
exec deepspeed --num_gpus "$NPROC" --master_addr 127.0.0.1 --master_port "$PORT" \
  --module rm_ds.cli train "$@"
