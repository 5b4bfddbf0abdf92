"""Data, loss and metric code imports without DeepSpeed: scoring and serving use it with no engine.

    PYTHONPATH=. python -m pytest tests/test_pure_imports.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PURE = ["rm_ds.eval.metrics", "rm_ds.data.dataset", "rm_ds.train.loss", "rm_ds.eval.scores", "rm_ds.train.run_state",
        "rm_ds.train.checkpoint_files"]

PROBE = """
import sys
sys.modules["deepspeed"] = None  # any `import deepspeed` (or deepspeed.x) now raises ImportError
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
assert "rm_ds.train.engine" not in sys.modules, "a pure module pulled in rm_ds.train.engine"
print("ok")
"""


@pytest.mark.slow
def test_pure_modules_import_with_deepspeed_blocked():
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-c", PROBE, *PURE], capture_output=True, text=True, timeout=120,
                          env=env, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


def test_blocking_is_effective():
    """The probe really fails when a module needs DeepSpeed (rm_ds.train.engine does)."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-c", PROBE, "rm_ds.train.engine"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=repo)
    assert proc.returncode != 0 and "import of deepspeed halted" in proc.stderr
