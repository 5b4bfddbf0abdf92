"""A relaunch never trusts a torn checkpoint and never trains on past an early stop (single process).

Run: ``PYTHONPATH=. python -m pytest tests/test_run_safety.py -q``
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ENV, make_tiny_setup


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_tiny_setup(tmp_path_factory.mktemp("safety"), n_pairs=32)


def train(root: Path, run_dir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    args = ["--config", "tiny", f"model.name_or_path={root / 'model'}", f"data.train_path={root / 'pairs.jsonl'}",
            "data.eval_path=null", "data.max_length=64", "train.global_batch_pairs=8", "train.max_steps=4",
            "train.export=false", "deepspeed.config=zero2", "logging.tensorboard=false", "eval.save_scores=false",
            f"logging.run_dir={run_dir}", *extra]
    return subprocess.run([sys.executable, "-m", "rm_ds.cli", "train", *args], capture_output=True, text=True,
                          timeout=180, env={**os.environ, **ENV, **(env or {})})


def fingerprint(d: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(d.rglob("*")) if p.is_file()}


def train_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["split"] == "train"]


def test_a_complete_checkpoint_is_never_written_into(root: Path, tmp_path: Path) -> None:
    """Resumed from its final checkpoint, a run saves that step again; killed inside that save, the
    complete tag must still hold exactly the files it had, and a relaunch must succeed from it."""
    run_dir = tmp_path / "run"
    first = train(root, run_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    tag = run_dir / "checkpoints" / "step_00000004"
    before = fingerprint(tag)
    assert "COMPLETE" in before

    killed = train(root, run_dir, "resume=auto", env={"RM_DS_FAULT": "in_save:4"})
    assert killed.returncode != 0 and "resumed from" in killed.stderr, killed.stderr[-3000:]
    assert fingerprint(tag) == before  # not one byte or timestamp of the complete tag changed
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000004"

    again = train(root, run_dir, "resume=auto")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tag / "COMPLETE").exists() and not list((run_dir / "checkpoints").glob(".*step_*"))


def test_an_early_stop_is_remembered(root: Path, tmp_path: Path) -> None:
    """patience 1 with an unreachable min_delta: the eval at step 2 is no improvement, so the run stops
    there; relaunched with resume=auto it must say so and exit 0 without training step 3."""
    run_dir = tmp_path / "run"
    opts = (f"data.eval_path={root / 'pairs.jsonl'}", "eval.every_steps=1", "eval.patience=1", "eval.min_delta=1e9",
            "train.max_steps=4")
    first = train(root, run_dir, *opts)
    assert first.returncode == 0, first.stderr[-3000:]
    assert train_steps(run_dir) == [1, 2]

    again = train(root, run_dir, *opts, "resume=auto")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stopped early at step 2" in again.stdout
    assert train_steps(run_dir) == [1, 2]
