"""End to end through the real ``deepspeed`` launcher: 2 CPU ranks train, evaluate, log, exit 0."""

from __future__ import annotations

import json

import pytest

from tests.harness import run_rm_ds


@pytest.mark.slow
@pytest.mark.cluster
def test_two_ranks_train_through_the_deepspeed_launcher(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_rm_ds(["train", "--config", "tiny", f"logging.run_dir={run_dir}", "deepspeed.config=zero3"], ranks=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== rm_ds training finished ==" in proc.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert [r["step"] for r in evals] == [4, 8]
    assert all(r["n_pairs"] == 101 for r in evals)  # every eval pair once, 101 over 2 ranks
    for key in ("loss", "accuracy", "margin", "lr", "grad_norm", "pairs_per_s", "tokens_per_s",
                "useful_token_ratio", "peak_mem_mib"):
        assert train[-1][key] is not None, key
    assert (run_dir / "config.yaml").exists() and (run_dir / "summary.json").exists()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/pairs_per_s", "eval/accuracy", "eval/auc", "eval/ece"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 9))


@pytest.mark.slow
def test_bad_config_fails_fast_with_the_key():
    proc = run_rm_ds(["train", "--config", "tiny", "train.lr=fast"], timeout=60)
    assert proc.returncode != 0
    assert "train.lr: expected a number" in proc.stderr
