"""launch/env.sh and Python agree on the run-time environment (one list, in rm_ds.cluster.runtime_env).

    PYTHONPATH=. python -m pytest tests/test_runtime_env.py -q
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rm_ds.cluster.runtime_env import CPU_DEFAULTS, DEFAULTS, FIXED, FORWARD, RUNTIME, SETTINGS, exports
from tests.harness import ENV

REPO = Path(__file__).resolve().parents[1]
VENV = os.environ.get("RM_DS_VENV") or sys.prefix  # the venv running the tests (not its resolved base python)


def source_env_sh(tmp_path: Path, preset: dict[str, str], *, gpu: bool) -> dict[str, str]:
    """The environment after ``. launch/env.sh`` in a clean shell (a fake nvidia-smi on PATH when ``gpu``)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    if gpu:
        (bindir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (bindir / "nvidia-smi").chmod(0o755)
    script = ('. launch/env.sh && python -c "import json, os; print(json.dumps(dict(os.environ)))" '
              '&& echo "$RM_DS_SETTINGS" && echo "$RM_DS_FORWARD"')
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path), "RM_DS_VENV": VENV, **preset}
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    import json

    lines = proc.stdout.strip().splitlines()
    out = json.loads(lines[-3])
    out["<settings>"], out["<forward>"] = lines[-2], lines[-1]
    return out


@pytest.mark.parametrize("gpu", [False, True])
def test_env_sh_sets_what_python_lists(tmp_path, gpu):
    got = source_env_sh(tmp_path, {}, gpu=gpu)
    want = exports({}, gpu=gpu)
    assert {k: got.get(k) for k in RUNTIME if k in want} == want
    assert set(want) == set(RUNTIME) - (set(CPU_DEFAULTS) if gpu else set())
    if gpu:  # a GPU machine keeps its accelerator and thread defaults
        assert not any(k in got for k in CPU_DEFAULTS)
    assert got["<settings>"].split() == list(SETTINGS) and got["<forward>"].split() == list(FORWARD)


def test_env_sh_keeps_user_values_but_not_for_fixed_ones(tmp_path):
    preset = {"OMP_NUM_THREADS": "3", "HF_HUB_OFFLINE": "0", "TOKENIZERS_PARALLELISM": "true"}
    got = source_env_sh(tmp_path, preset, gpu=False)
    assert got["OMP_NUM_THREADS"] == "3" and got["HF_HUB_OFFLINE"] == "0"
    assert got["TOKENIZERS_PARALLELISM"] == FIXED["TOKENIZERS_PARALLELISM"]
    assert {k: got[k] for k in RUNTIME} == exports(preset, gpu=False)


def test_no_copies_of_the_list():
    """The harness runs ranks with exactly that environment, and no launch script, benchmark or test
    helper spells the variables out again."""
    assert ENV == RUNTIME == {**DEFAULTS, **FIXED, **CPU_DEFAULTS}
    copies = []
    for path in [*REPO.glob("launch/*.sh"), *REPO.glob("slurm/*"), *REPO.glob("bench/*.py"), REPO / "tests/harness.py"]:
        if path.name == "env.sh":
            continue
        text = path.read_text()
        copies += [f"{path.relative_to(REPO)}: {name}" for name in RUNTIME if re.search(rf"\b{name}\b", text)
                   and name not in ("OMP_NUM_THREADS",)]
    assert not copies, copies
