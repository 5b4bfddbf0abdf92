"""Evaluation over ranks equals the single-process computation, every pair exactly once.

    PYTHONPATH=. python -m pytest tests/test_dist_eval.py -q

Eval sets of 10 and 11 pairs (not divisible by 2 or 3 ranks) with a small eval token budget, so
shards are uneven and ranks run several micro-batches (fillers included). Each rank scores its
shard through the DeepSpeed engine (ZeRO-2 and ZeRO-3); the gathered scores and every metric must
equal a plain single-process PyTorch scoring of each pair alone, to 1e-6.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from rm_ds.train.checkpoint_files import eval_subdir
from tests.harness import run_distributed, run_rm_ds

WORDS = "alpha beta gamma delta river stone light dark small large runs sleeps over under bird".split()


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    from rm_ds.builtin import build_tiny_llama

    root = tmp_path_factory.mktemp("evaltest")
    build_tiny_llama(root / "model", seed=5)
    rng = random.Random(1)
    for n in (10, 11):
        with open(root / f"eval{n}.jsonl", "w") as f:
            for i in range(n):
                w = lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))  # noqa: E731
                f.write(json.dumps({"id": f"e{n}-{i}", "prompt": w(1, 12), "chosen": w(1, 15), "rejected": w(1, 15),
                                    "source": "a" if i % 3 else "b"}) + "\n")
    return root


def overrides(root, stage: str) -> list[str]:
    return [f"model.name_or_path={root / 'model'}", "data.max_length=32", f"data.eval_path={root / 'eval11.jsonl'}",
            "eval.token_budget=64", "eval.thresholds=[-0.1, 0.0, 0.1]", f"deepspeed.config={stage}",
            f"logging.run_dir={root / ('run_' + stage)}", "logging.tensorboard=false", "eval.save_scores=false"]


def eval_worker(ovr: list[str], paths: list[str]) -> dict:
    from rm_ds.cluster import dist
    from rm_ds.config import load_config
    from rm_ds.eval.scores import compute_metrics
    from rm_ds.train.evaluate import gather_scores
    from rm_ds.model import load_tokenizer
    from rm_ds.train.recipe import setup
    from tests.harness import load_split

    cfg = load_config(None, ovr)
    info = dist.current()
    tr = setup(cfg, info, training=False)
    tok = load_tokenizer(cfg.model.name_or_path)
    out = {}
    for path in paths:
        ds, _ = load_split(cfg, tok, path, split="test", max_pairs=None)
        scores = gather_scores(tr.engine, ds, rank=info.rank, world_size=info.world_size, collate=tr.collate,
                               token_budget=cfg.eval.token_budget or cfg.train.token_budget,
                               prefix_sharing=cfg.data.prefix_sharing, packing=cfg.data.packing)
        out[path] = {"index": scores.index.tolist(), "chosen": scores.chosen.tolist(),
                     "rejected": scores.rejected.tolist(),
                     "metrics": compute_metrics(scores, ds, loss=cfg.loss, n_bins=cfg.eval.ece_bins,
                                                thresholds=cfg.eval.thresholds)}
    return out


def reference(ovr: list[str], path: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Plain PyTorch, one process, each pair scored alone (no padding, no sharding)."""
    from rm_ds.data.collate import collate_pairs
    from rm_ds.config import ModelConfig, load_config
    from rm_ds.eval.metrics import pairwise_metrics
    from rm_ds.model import build_reward_model, load_tokenizer, resolve_pad_token, rewards
    from tests.harness import load_split

    cfg = load_config(None, ovr)
    tok = load_tokenizer(cfg.model.name_or_path)
    pad = resolve_pad_token(tok, ModelConfig(name_or_path=cfg.model.name_or_path), last_token_pooling=True)
    model = build_reward_model(cfg.model, pad_token_id=pad).eval()
    ds, _ = load_split(cfg, tok, path, split="test", max_pairs=None)
    c, r = [], []
    with torch.no_grad():
        for row in ds:
            ci, ri = rewards(model, collate_pairs([row], pad_id=pad, eos_id=tok.sep_token_id))
            c.append(float(ci[0]))
            r.append(float(ri[0]))
    c, r = np.array(c), np.array(r)
    m = pairwise_metrics(c, r, beta=cfg.loss.beta, n_bins=cfg.eval.ece_bins, thresholds=cfg.eval.thresholds,
                         sources=list(ds["source"]), chosen_len=np.array([len(x) for x in ds["chosen_ids"]], float),
                         rejected_len=np.array([len(x) for x in ds["rejected_ids"]], float))
    return c, r, m


CASES = [(1, "zero2"), (2, "zero2"), (3, "zero2"), (2, "zero3"), (3, "zero3")]


@pytest.mark.slow
@pytest.mark.parametrize("world,stage", [pytest.param(w, s, marks=[pytest.mark.cluster] * (w > 1)) for w, s in CASES],
                         ids=[f"{w}ranks-{s}" for w, s in CASES])
def test_gathered_metrics_equal_single_process(eval_dir, world, stage):
    ovr = overrides(eval_dir, stage)
    paths = [str(eval_dir / "eval10.jsonl"), str(eval_dir / "eval11.jsonl")]
    results = run_distributed(eval_worker, world_size=world, args=(ovr, paths))
    for path, n in zip(paths, (10, 11)):
        got = results[0][path]
        assert all(r[path] == got for r in results), "ranks disagree on the gathered result"
        assert got["index"] == list(range(n)), "a pair was missed or counted twice"
        c, r, want = reference(ovr, path)
        np.testing.assert_allclose(got["chosen"], c, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got["rejected"], r, rtol=1e-6, atol=1e-6)
        assert got["metrics"].keys() == want.keys()
        assert got["metrics"]["n_pairs"] == n
        for k in want:
            assert got["metrics"][k] == pytest.approx(want[k], rel=1e-6, abs=1e-6), k


@pytest.mark.slow
@pytest.mark.cluster
def test_rm_ds_eval_command_on_two_ranks(eval_dir, tmp_path):
    """``rm-ds eval`` under the deepspeed launcher: table, results file, per-eval artefacts."""
    run_dir = tmp_path / "evalrun"
    ovr = [o for o in overrides(eval_dir, "zero3") if not o.startswith(("logging.", "eval.save_scores"))]
    proc = run_rm_ds(["eval", *ovr, f"logging.run_dir={run_dir}"], ranks=2)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "== rm_ds eval ==" in proc.stdout and "ece_calibrated" in proc.stdout
    res = json.loads((run_dir / "eval_results.json").read_text())
    assert res["world_size"] == 2 and res["metrics"]["n_pairs"] == 11
    _, _, want = reference(overrides(eval_dir, "zero3"), str(eval_dir / "eval11.jsonl"))
    assert res["metrics"]["auc"] == pytest.approx(want["auc"], abs=1e-6)
    step_dir = run_dir / eval_subdir(0)
    dist = json.loads((step_dir / "reward_distributions.json").read_text())
    assert sorted(dist["pair_id"]) == sorted(f"e11-{i}" for i in range(11))
    cal = json.loads((step_dir / "calibration.json").read_text())
    assert cal["eval_pairs"] == 11 and len(cal["eval_set_sha256"]) == 64 and cal["temperature"] > 0
    for png in ("reward_histogram.png", "reliability.png"):
        assert (step_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert {"eval/reward_histogram", "eval/reliability"} <= set(acc.Tags()["images"])
    assert "eval/ece_calibrated" in acc.Tags()["scalars"]
