"""The run-time environment of rm_ds processes: one list, for the shell and for Python.

    . launch/env.sh                        # the shell: evaluates ``python - --shell < rm_ds/cluster/runtime_env.py``
    env = {**os.environ, **RUNTIME}        # Python (tests/harness.py, bench/): the same values, on CPU

``launch/env.sh`` sets ``DEFAULTS`` (unless already set), ``FIXED`` (always) and, on a machine
without ``nvidia-smi``, ``CPU_DEFAULTS`` (unless already set). The multi-host launch scripts forward
``SETTINGS`` or ``FORWARD`` to the other hosts (what is set of them; the shell names them
``$RM_DS_SETTINGS`` and ``$RM_DS_FORWARD``). Standard library only: ``env.sh`` feeds this file to
python on stdin, before rm_ds is importable and with no ``rm_ds/`` module (``tokenize``!) on sys.path.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping

DEFAULTS = {"HF_HUB_OFFLINE": "1", "TORCHDYNAMO_DISABLE": "1"}
"""Offline hub, no torch.compile JIT: kept when the user sets them."""
FIXED = {"TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
"""Always set: no tokenizer thread pools under forked ranks, no per-map progress bars."""
CPU_DEFAULTS = {"DS_ACCELERATOR": "cpu"}
"""Without a GPU: DeepSpeed's CPU accelerator. Threads are not set here: every rank takes the node's cores divided
by its ranks on the node (``rm_ds.cluster.dist.set_threads``; oversubscription is several times slower) unless
OMP_NUM_THREADS is set."""
RUNTIME = {**DEFAULTS, **FIXED, **CPU_DEFAULTS}
"""Every value above: what a CPU rank runs with (tests and benchmarks set all of them)."""
SETTINGS = ("RM_DS_HOME", "HF_HOME", *RUNTIME, "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
"""What every host of a multi-host run gets from this one (when set here): the deepspeed launcher's
``DS_ENV_FILE`` (it passes ``PYTHON*`` itself, and each host keeps its own ``PATH``)."""
FORWARD = ("PATH", "VIRTUAL_ENV", "PYTHONPATH", *SETTINGS)
"""What ``mpirun -x`` hands the remote ranks (mpirun passes nothing by itself)."""


def has_gpu() -> bool:
    """The shell's test: an ``nvidia-smi`` on PATH."""
    return shutil.which("nvidia-smi") is not None


def exports(environ: Mapping[str, str], *, gpu: bool) -> dict[str, str]:
    """The variables ``launch/env.sh`` sets, given the current environment."""
    out = {k: environ.get(k, v) for k, v in DEFAULTS.items()}
    out.update(FIXED)
    if not gpu:
        out.update({k: environ.get(k, v) for k, v in CPU_DEFAULTS.items()})
    return out


def shell_lines(environ: Mapping[str, str], *, gpu: bool) -> list[str]:
    """What ``launch/env.sh`` evaluates: the exports, then the two forwarding lists as shell variables."""
    lines = [f"export {k}={shlex.quote(v)}" for k, v in exports(environ, gpu=gpu).items()]
    return lines + [f"RM_DS_SETTINGS={shlex.quote(' '.join(SETTINGS))}",
                    f"RM_DS_FORWARD={shlex.quote(' '.join(FORWARD))}"]


def main(argv: list[str]) -> None:
    if argv != ["--shell"]:
        raise SystemExit("usage: python - --shell < rm_ds/cluster/runtime_env.py")
    print("\n".join(shell_lines(os.environ, gpu=has_gpu())))


if __name__ == "__main__":
    main(sys.argv[1:])
