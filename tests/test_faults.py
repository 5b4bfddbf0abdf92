"""Faults under the real ``deepspeed`` launcher (2 CPU ranks, tiny model): a killed rank, a stopped rank.

- SIGKILL of rank 1 mid-run: the launcher exits non-zero within 60 s, the survivor names rank 1, and
  ``resume=auto`` then gives the same per-step losses as an uninterrupted run.
- SIGSTOP of rank 1: rank 0 exits non-zero within dist.timeout_s + 30 s, saying a rank stopped responding.

Run: ``PYTHONPATH=. python -m pytest tests/test_faults.py -q``
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.harness import make_tiny_setup, rm_ds_command, run_env, tiny_run


pytestmark = [pytest.mark.slow, pytest.mark.cluster]  # every test here runs 2 ranks

TIMEOUT_S = 8


def overrides(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["--config", "tiny", *tiny_run(root, run_dir, "train.global_batch_pairs=8", "train.max_steps=30",
                                          "train.epochs=50", "train.save_every_steps=5", "train.keep_checkpoints=20",
                                          "train.export=false", "deepspeed.config=zero2", "model.dropout=0.0",
                                          f"dist.timeout_s={TIMEOUT_S}", "logging.progress=false", *extra)]


def launch(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(rm_ds_command("train", *args, ranks=2), env=run_env(), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss, the last record of each step winning (a resumed run logs its steps again)."""
    f = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def rank_process(proc: subprocess.Popen, rank: int) -> psutil.Process:
    for p in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "rm_ds.cli" in " ".join(p.cmdline()) and p.environ().get("RANK") == str(rank):
                return p
        except psutil.Error:
            continue
    raise LookupError(f"no rank {rank} process")


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, *, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while max(train_losses(run_dir), default=0) < step:
        assert proc.poll() is None, "the run ended before the fault"
        assert time.monotonic() < end, "the run did not reach the step"
        time.sleep(0.05)


def finish(proc: subprocess.Popen, *, timeout: float) -> tuple[int, float]:
    t0 = time.monotonic()
    try:
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return code, time.monotonic() - t0


@pytest.fixture(scope="module")
def setup_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    make_tiny_setup(root, n_pairs=48)
    return root


def test_sigkill_of_a_rank_fails_fast_and_resume_matches(setup_root: Path) -> None:
    root = setup_root
    ref_dir, run_dir = root / "ref", root / "killed"
    ref = launch(overrides(root, ref_dir), root / "ref.log")
    assert finish(ref, timeout=240)[0] == 0, (root / "ref.log").read_text()[-3000:]
    reference = train_losses(ref_dir)
    assert sorted(reference) == list(range(1, 31))

    proc = launch(overrides(root, run_dir), root / "killed.log")
    wait_for_step(proc, run_dir, 12)
    rank_process(proc, 1).send_signal(signal.SIGKILL)
    code, waited = finish(proc, timeout=60)
    log = (root / "killed.log").read_text()
    assert code != 0 and waited < 60, log[-3000:]
    assert "rank 1 (pid" in log and "has exited or was killed" in log, log[-3000:]

    resumed = launch(overrides(root, run_dir, "resume=auto"), root / "resumed.log")
    assert finish(resumed, timeout=240)[0] == 0, (root / "resumed.log").read_text()[-3000:]
    assert "resumed from" in (root / "resumed.log").read_text()
    after = train_losses(run_dir)
    assert sorted(after) == list(range(1, 31))
    for step in range(1, 31):
        assert after[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-7), step


def test_sigstop_of_a_rank_times_out_with_a_diagnosis(setup_root: Path) -> None:
    root = setup_root
    run_dir = root / "stopped"
    proc = launch(overrides(root, run_dir, "train.max_steps=100000", "train.save_every_steps=0"), root / "stop.log")
    wait_for_step(proc, run_dir, 3)
    stopped = rank_process(proc, 1)
    survivor = rank_process(proc, 0)
    stopped.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        survivor.wait(timeout=TIMEOUT_S + 30)
        waited = time.monotonic() - t0
    finally:
        stopped.send_signal(signal.SIGKILL)  # the launcher would wait 30 s for a stopped process to terminate
    code, _ = finish(proc, timeout=60)
    log = (root / "stop.log").read_text()
    assert waited < TIMEOUT_S + 30 and code != 0, log[-3000:]
    assert "rm-ds: rank 0: a collective timed out (dist.timeout_s): a rank stopped responding" in log, log[-3000:]
    assert "rank 1 (pid" in log and "is stopped" in log, log[-3000:]


def _slow_rank0_then_wait(seconds: float) -> float:
    from rm_ds.cluster import dist

    info = dist.current()
    if info.rank == 0:
        time.sleep(seconds)  # rank 0 alone: an export, filling the tokenised cache
    t0 = time.monotonic()
    dist.wait_for_all()
    dist.barrier()  # the short-timeout group still works afterwards
    return time.monotonic() - t0


def test_waiting_for_rank_0_alone_does_not_trip_the_collective_timeout() -> None:
    from tests.harness import run_distributed

    waited = run_distributed(_slow_rank0_then_wait, world_size=2, args=(4.0,),
                             init={"timeout_s": 1.5, "wait_timeout_s": 60})
    assert waited[1] > 3.0  # rank 1 waited past dist.timeout_s without failing
