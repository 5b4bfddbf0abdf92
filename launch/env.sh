#!/usr/bin/env bash
# Sourced by the launch scripts: the run-time environment for rm_ds on this machine.
#   . launch/env.sh
# shellcheck disable=SC1091
. "${RM_DS_VENV:-.venv}/bin/activate"
# The variables and their values are listed once, in rm_ds/cluster/runtime_env.py (Python reads the same list):
# HF_HUB_OFFLINE, TORCHDYNAMO_DISABLE (unless set), TOKENIZERS_PARALLELISM, HF_DATASETS_DISABLE_PROGRESS_BARS
# and, without nvidia-smi, DS_ACCELERATOR=cpu (unless set; threads: rm_ds.cluster.dist.set_threads); plus RM_DS_SETTINGS and
# RM_DS_FORWARD, the names the multi-host scripts hand the other hosts. Fed on stdin: rm_ds/ stays off sys.path.
rm_ds_env=$(python - --shell < "$(dirname "${BASH_SOURCE[0]}")/../rm_ds/cluster/runtime_env.py") || return 1
eval "$rm_ds_env"
unset rm_ds_env
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
