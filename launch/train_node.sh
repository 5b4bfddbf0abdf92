#!/usr/bin/env bash
# One node of a multi-node run, started on every node with no ssh (what each Slurm step runs):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29500 NPROC_PER_NODE=2 bash launch/train_node.sh [--config NAME|FILE.yaml] [key.sub=value ...]
# Run it on node 0 .. NNODES-1 with the same NNODES, MASTER_ADDR (node 0's address, reachable from
# every node) and MASTER_PORT; each starts NPROC_PER_NODE ranks with `deepspeed --no_ssh --node_rank`.
# Under Slurm NNODES and NODE_RANK default to SLURM_NNODES and SLURM_NODEID. Elsewhere: NNODES=1,
# NODE_RANK=0, MASTER_ADDR=127.0.0.1, MASTER_PORT a free port (required when NNODES > 1),
# NPROC_PER_NODE=1. Set the machine up once first (bash launch/setup.sh); this script installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/env.sh
. launch/env.sh
NNODES=${NNODES:-${SLURM_NNODES:-1}}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
NPROC_PER_NODE=${NPROC_PER_NODE:-1}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
if [ -z "${MASTER_PORT:-}" ]; then
  if [ "$NNODES" -gt 1 ]; then
    echo "train_node.sh: set MASTER_PORT (the same on every node) for NNODES=$NNODES" >&2
    exit 2
  fi
  MASTER_PORT=$(free_port)
fi
if [ "$NODE_RANK" -lt 0 ] || [ "$NODE_RANK" -ge "$NNODES" ]; then
  echo "train_node.sh: NODE_RANK=$NODE_RANK is not in [0, NNODES=$NNODES)" >&2
  exit 2
fi

# With --no_ssh the launcher reads only the node count and slots from the hostfile: node names are
# labels. It needs a file (without one it forces a single node on 127.0.0.1).
hostfile=$(mktemp "${TMPDIR:-/tmp}/rm_ds_hostfile.XXXXXX")
for ((i = 0; i < NNODES; i++)); do echo "node$i slots=$NPROC_PER_NODE"; done > "$hostfile"

echo "train_node.sh: node $NODE_RANK of $NNODES, $NPROC_PER_NODE ranks, master $MASTER_ADDR:$MASTER_PORT ($(hostname))" >&2
# In the background so a TERM (Slurm preemption, scancel, Ctrl-C) reaches the launcher, which stops
# its ranks, and the hostfile is removed on every way out.
deepspeed --hostfile "$hostfile" --no_ssh --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" \
  --master_port "$MASTER_PORT" --module rm_ds.cli train "$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
trap 'rm -f "$hostfile"' EXIT
rc=0
wait "$pid" || rc=$?
if kill -0 "$pid" 2>/dev/null; then  # wait was interrupted by a signal: let the launcher finish
  wait "$pid" || rc=$?
fi
exit "$rc"
