#!/usr/bin/env bash
# Sourced by the launch scripts: the run-time environment for rm_ds on this machine.
#   . launch/env.sh
# shellcheck disable=SC1091
. "${RM_DS_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TORCHDYNAMO_DISABLE=${TORCHDYNAMO_DISABLE:-1}
export TOKENIZERS_PARALLELISM=false HF_DATASETS_DISABLE_PROGRESS_BARS=1
if ! command -v nvidia-smi >/dev/null 2>&1; then
  export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per rank: oversubscription is several times slower
fi
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
