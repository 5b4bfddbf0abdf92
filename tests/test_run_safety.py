"""A relaunch never trusts a torn checkpoint and never trains on past an early stop (single process).

Run: ``PYTHONPATH=. python -m pytest tests/test_run_safety.py -q``
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.harness import run_rm_ds, tiny_run


@pytest.fixture(scope="module")
def root(tiny_setup) -> Path:
    return tiny_setup("safety", n_pairs=32)


def train(root: Path, run_dir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    args = ["--config", "tiny", *tiny_run(root, run_dir, "train.global_batch_pairs=8", "train.max_steps=4",
                                          "train.export=false", "deepspeed.config=zero2", "eval.save_scores=false",
                                          *extra)]
    return run_rm_ds(["train", *args], env=env, timeout=180)


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


def test_resume_into_a_different_run_is_refused_naming_the_keys(root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    base = ("train.save_every_steps=2", "train.max_steps=2")
    first = train(root, run_dir, *base)
    assert first.returncode == 0, first.stderr[-3000:]

    other = train(root, run_dir, *base, "resume=auto", "train.lr=0.05",
                  "train.global_batch_pairs=4")
    assert other.returncode == 2, other.stderr[-3000:]
    line = [x for x in other.stderr.splitlines() if "config error" in x]
    assert len(line) == 1 and "Traceback" not in other.stderr
    assert "train.global_batch_pairs: 8 -> 4" in line[0] and "train.lr: 0.001 -> 0.05" in line[0]
    assert "resume_override=[train.global_batch_pairs,train.lr]" in line[0]

    # logging, the eval schedule and the save schedule cannot change the trajectory: accepted
    free = train(root, run_dir, *base, "resume=auto", "logging.log_every=2", "eval.every_steps=3",
                 "train.keep_checkpoints=5")
    assert free.returncode == 0 and "resumed from" in free.stderr, free.stderr[-3000:]
    assert not (run_dir / "resume_overrides.jsonl").exists()

    # an explicit override goes through and is recorded
    ok = train(root, run_dir, "train.save_every_steps=2", "resume=auto", "train.max_steps=4", "train.lr=0.002",
               "resume_override=[train.lr,train.max_steps]")
    assert ok.returncode == 0, ok.stderr[-3000:]
    rec = [json.loads(x) for x in (run_dir / "resume_overrides.jsonl").read_text().splitlines()]
    assert rec[-1]["step"] == 2 and rec[-1]["overrides"] == {"train.lr": [0.001, 0.002], "train.max_steps": [2, 4]}
    assert train_steps(run_dir)[-1] == 4
