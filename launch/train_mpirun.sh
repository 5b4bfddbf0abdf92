#!/usr/bin/env bash
# Train under mpirun (OpenMPI): ranks find each other through MPI (mpi4py), no deepspeed launcher.
#   bash launch/train_mpirun.sh [--hostfile HOSTFILE] [--config NAME|FILE.yaml] [key.sub=value ...]
# NP ranks in all (default: the sum of the hostfile's slots=N, else 2 on this machine). Rank 0 picks
# the rendezvous: MASTER_ADDR is the hostfile's first host (127.0.0.1 without a hostfile) and
# MASTER_PORT a free port on rank 0's host, unless you set them. Remote hosts need the checkout and
# its venv at the same path, and ssh (or OMPI_MCA_plm_rsh_agent) that mpirun can use. Set the
# machines up first (bash launch/setup.sh); this script installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/env.sh
. launch/env.sh
hostfile=""
if [ "${1:-}" = "--hostfile" ]; then
  hostfile=$2
  shift 2
fi
mpi_args=(--bind-to none)
[ "$(id -u)" = 0 ] && mpi_args+=(--allow-run-as-root)  # mpirun refuses root without it
if [ -n "$hostfile" ]; then
  # first non-comment word of the hostfile: the host rank 0 runs on (mpirun maps by slot, in order)
  MASTER_ADDR=${MASTER_ADDR:-$(awk '!/^[[:space:]]*(#|$)/ { print $1; exit }' "$hostfile")}
  export MASTER_ADDR
  NP=${NP:-$(awk '!/^[[:space:]]*(#|$)/ { n += (match($0, /slots=[0-9]+/) ? substr($0, RSTART + 6, RLENGTH - 6) : 1) } END { print n }' "$hostfile")}
  mpi_args+=(--hostfile "$hostfile")
fi
NP=${NP:-2}
# mpirun forwards only what -x names to remote ranks
for v in $RM_DS_FORWARD; do  # the list of launch/env.sh (rm_ds/cluster/runtime_env.py FORWARD)
  if [ -n "${!v:-}" ]; then mpi_args+=(-x "$v"); fi
done
exec mpirun "${mpi_args[@]}" -np "$NP" "$(command -v python)" -m rm_ds.cli train --mpi "$@"
