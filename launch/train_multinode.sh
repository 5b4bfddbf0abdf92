#!/usr/bin/env bash
# Multi-node training started from one machine: the deepspeed launcher reaches every host of HOSTFILE.
#   bash launch/train_multinode.sh HOSTFILE [--config NAME|FILE.yaml] [key.sub=value ...]
# HOSTFILE: one "host slots=N" line per node (N ranks there; '#' comments allowed). Needs
# passwordless ssh from here to every host and pdsh here (LAUNCHER=pdsh, the default), or OpenMPI
# (LAUNCHER=openmpi: mpirun starts the ranks, which meet through MPI), and this checkout with its
# .venv at the same path on every host (a shared filesystem, or bash launch/setup.sh on each).
# MASTER_ADDR: the first host of HOSTFILE unless set (it must be reachable from every host);
# MASTER_PORT: 29500 unless set. LAUNCHER_ARGS: extra pdsh/mpirun arguments. NO_SSH_CHECK=1 skips
# the launcher's ssh test of the first host (e.g. when mpirun reaches hosts via OMPI_MCA_plm_rsh_agent).
set -euo pipefail
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: bash launch/train_multinode.sh HOSTFILE [--config NAME|FILE.yaml] [key.sub=value ...]" >&2
  exit 2
fi
hostfile=$(realpath "$1")
shift
cd "$(dirname "$0")/.."
# shellcheck source=launch/env.sh
. launch/env.sh
LAUNCHER=${LAUNCHER:-pdsh}
MASTER_ADDR=${MASTER_ADDR:-$(awk '!/^[[:space:]]*(#|$)/ { print $1; exit }' "$hostfile")}
MASTER_PORT=${MASTER_PORT:-29500}
export MASTER_ADDR MASTER_PORT

# The launcher forwards only PYTHON*, MLFLOW*, UCX* and MV2* variables to the other hosts, plus the
# KEY=VALUE lines of the file DS_ENV_FILE names: hand it the run-time environment of launch/env.sh.
envfile=$(mktemp "${TMPDIR:-/tmp}/rm_ds_env.XXXXXX")
trap 'rm -f "$envfile"' EXIT
for v in $RM_DS_SETTINGS; do  # the list of launch/env.sh (rm_ds/cluster/runtime_env.py SETTINGS)
  if [ -n "${!v:-}" ]; then echo "$v=${!v}"; fi
done > "$envfile"

launcher_args=${LAUNCHER_ARGS:-}
if [ "$LAUNCHER" = openmpi ]; then
  # mpirun refuses root without the flag; one thread per rank, so no core binding
  if [ "$(id -u)" = 0 ]; then launcher_args="--allow-run-as-root $launcher_args"; fi
  launcher_args="--bind-to none $launcher_args"
fi
ds_args=(--hostfile "$hostfile" --launcher "$LAUNCHER")
if [ -n "$launcher_args" ]; then ds_args+=(--launcher_args "$launcher_args"); fi
if [ "${NO_SSH_CHECK:-0}" = 1 ]; then ds_args+=(--no_ssh_check); fi
DS_ENV_FILE=$envfile deepspeed "${ds_args[@]}" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --module rm_ds.cli train "$@"
