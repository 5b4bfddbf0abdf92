"""``ruff check`` (rules in ruff.toml) is clean on rm_ds, tests and bench: CI runs it with the suite.

    PYTHONPATH=. python -m pytest tests/test_lint.py -q        # or: ruff check rm_ds tests bench
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ruff_command() -> list[str]:
    """The ruff of this interpreter's environment (a test extra), else one on PATH."""
    exe = Path(sys.executable).parent / "ruff"
    if exe.exists():
        return [str(exe)]
    if shutil.which("ruff"):
        return [shutil.which("ruff")]
    return [sys.executable, "-m", "ruff"]


def test_ruff_check_is_clean():
    proc = subprocess.run([*ruff_command(), "check", "--no-cache", "--output-format", "concise", "rm_ds", "tests",
                           "bench"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (f"ruff check found problems (`ruff check --fix rm_ds tests bench` fixes some):\n"
                                  f"{proc.stdout[-4000:]}{proc.stderr[-2000:]}")


def test_ruff_reads_the_project_rules():
    """The configuration is the one in ruff.toml (line length 120), not ruff's defaults."""
    proc = subprocess.run([*ruff_command(), "check", "--show-settings", "rm_ds/config.py"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(REPO / "ruff.toml") in proc.stdout and "line_length = 120" in proc.stdout
