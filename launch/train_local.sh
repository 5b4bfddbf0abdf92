#!/usr/bin/env bash
# Set up (idempotent), then train a reward model on one machine with the deepspeed launcher.
#   bash launch/train_local.sh [--config default|smollm2|tiny|FILE.yaml] [key.sub=value ...]
# NPROC ranks (default 2; on CPU one per core), MASTER_PORT (default: a free port).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
# shellcheck source=launch/env.sh
. launch/env.sh
NPROC=${NPROC:-2}
PORT=${MASTER_PORT:-$(free_port)}
exec deepspeed --num_gpus "$NPROC" --master_addr 127.0.0.1 --master_port "$PORT" \
  --module rm_ds.cli train "$@"
