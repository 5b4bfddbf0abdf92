"""A non-finite step stops the run with a diagnosis and saves nothing of it; ZeRO-0 reports a grad norm.

Run: ``PYTHONPATH=. python -m pytest tests/test_nonfinite.py -q``
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rm_ds.train.faults import diagnose, step_is_finite
from tests.harness import make_tiny_setup, run_rm_ds, tiny_run


@pytest.mark.slow
def test_a_diverging_run_stops_before_saving_the_bad_step(tmp_path: Path) -> None:
    """lr 1e30: step 1 is finite (its checkpoint is the last good one), step 2 overflows."""
    make_tiny_setup(tmp_path, n_pairs=32)
    run_dir = tmp_path / "run"
    proc = run_rm_ds(["train", "--config", "tiny", *tiny_run(tmp_path, run_dir, "train.global_batch_pairs=8",
                                                              "train.max_steps=4", "train.lr=1e30",
                                                              "train.warmup_ratio=0", "train.save_every_steps=1",
                                                              "deepspeed.config=zero0")], timeout=180)
    assert proc.returncode == 5, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if "non-finite" in x]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("rm-ds: step 2: non-finite training step")
    assert f"last good checkpoint is {run_dir / 'checkpoints' / 'step_00000001'}" in lines[0]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["latest", "step_00000001"] and not (run_dir / "export").exists()

    from rm_ds.train.checkpoint_files import consolidated_state_dict

    weights = consolidated_state_dict(str(run_dir / "checkpoints"), "step_00000001")
    assert all(bool(v.isfinite().all()) for v in weights.values())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1]  # the bad step is not logged as if it were a result
    assert train[0]["grad_norm"] is not None and math.isfinite(train[0]["grad_norm"])  # ZeRO-0 reports it


def test_the_diagnosis_names_rank_micro_batch_and_pairs(tmp_path: Path) -> None:
    err = diagnose(step=7, loss=math.nan, grad_norm=None, rank=0, local_micro=1,
                   micro_pair_ids=[["a", "b"], ["p3", "p9"]], last_good=tmp_path / "step_00000005")
    msg = str(err)
    assert msg.startswith("step 7: non-finite training step (loss nan")
    assert "rank 0, micro-batch 1: pair ids ['p3', 'p9']" in msg and str(tmp_path / "step_00000005") in msg
    assert "no checkpoint was written yet" in str(diagnose(step=1, loss=math.inf, grad_norm=1.0, rank=0,
                                                          local_micro=0, micro_pair_ids=[["x"]], last_good=None))
    assert step_is_finite(0.5, None) and not step_is_finite(0.5, math.inf) and not step_is_finite(math.nan, 1.0)
