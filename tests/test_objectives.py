"""Several objectives (model.objectives): a K-output head, per-(pair, objective) labels with gaps.

The loss sums over labelled (pair, objective) entries and divides by their global count, exactly as
one objective divides by the pair count; a 2-rank run equals a single-process reference step for
step. Eval reports every metric per objective; export names the outputs (id2label).
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from tests.harness import run_distributed, run_rm_ds
from tests.reference import ReferenceTrainer, load_reference, parity_run

OBJECTIVES = ("helpful", "harmless")


@pytest.fixture(scope="module")
def setup_dir(tiny_setup):
    root = tiny_setup("objectives", prompt_words=(1, 20), response_words=(1, 25))
    rng = random.Random(5)
    rows = [json.loads(x) for x in (root / "pairs.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):  # labelled for both, helpful only or harmless only; soft and tied labels too
        r["objectives"] = {}
        if i % 3 != 1:
            r["objectives"]["helpful"] = rng.choice([1.0, 0.0, 0.5, 0.8])
        if i % 3 != 2:
            r["objectives"]["harmless"] = rng.choice([1.0, 0.3, 0.5])
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def overrides(root, *, steps: int = 3) -> list[str]:
    return parity_run(root, root / "run_objectives", f"model.objectives=[{','.join(OBJECTIVES)}]",
                      "deepspeed.config=zero2", steps=steps)


def train_worker(ovr: list[str]) -> dict:
    from rm_ds.cluster import dist
    from rm_ds.config import load_config
    from rm_ds.train.engine import gathered_state_dict
    from rm_ds.train.recipe import setup, train_loop

    info = dist.current()
    tr = setup(load_config(None, ovr), info)
    losses = []
    train_loop(tr, on_step=lambda step, st: losses.append(st.loss))
    return {"losses": losses, "state": gathered_state_dict(tr.engine) if info.is_main else None,
            "plan": tr.state.sampler.plan_epoch(0)}


def reference_run(ovr: list[str], plan):
    """Plain PyTorch, one process (tests/reference.py): per step, the sum of labelled entries' losses / their count."""
    from rm_ds.data.collate import collate_pairs
    from rm_ds.data.dataset import rows_at
    from rm_ds.data.tokenize import eos_id
    from rm_ds.train.loss import multi_objective_loss

    ref = load_reference(ovr)
    model, trainer = ref.model, ReferenceTrainer(ref.model, ref.cfg.train)

    def share(b, n_terms):
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        n = b["n_pairs"]
        return multi_objective_loss(out[:n], out[n:], prefs=b["prefs"], labelled=b["labelled"]).sum() / n_terms

    losses = []
    for step_plan in plan[: ref.cfg.train.max_steps]:
        batches = [collate_pairs(rows_at(ref.ds, mb), pad_id=ref.pad, eos_id=eos_id(ref.tok))
                   for rank in step_plan for mb in rank if mb]
        n_terms = sum(b["n_terms"] for b in batches)
        losses.append(trainer.step(batches, lambda b: share(b, n_terms)))
    return losses, trainer.weights()


@pytest.mark.slow
@pytest.mark.cluster
def test_two_ranks_equal_a_single_process_reference(setup_dir) -> None:
    from tests.test_dist_parity import assert_states_close

    ovr = overrides(setup_dir)
    results = run_distributed(train_worker, world_size=2, args=(ovr,))
    plan = results[0]["plan"]
    assert any(len({sum(len(mb) for mb in rank) for rank in step}) > 1 for step in plan[:3]), "ranks hold equal counts"
    want_losses, want_state = reference_run(ovr, plan)
    assert results[0]["losses"] == pytest.approx(want_losses, rel=1e-5)
    assert_states_close(results[0]["state"], want_state, rtol=1e-5)


def test_loss_counts_labelled_entries_hand_worked() -> None:
    from rm_ds.train.loss import multi_objective_loss

    c = torch.tensor([[1.0, 0.0], [2.0, -1.0]])
    r = torch.zeros(2, 2)
    prefs = torch.tensor([[1.0, 0.5], [0.0, 0.0]])
    labelled = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    got = multi_objective_loss(c, r, prefs=prefs, labelled=labelled)
    def sp(x: float) -> float:  # softplus
        return math.log1p(math.exp(x))

    # pair 0: -log s(1) + (0.5 sp(0) + 0.5 sp(0)); pair 1: only objective 0 with p = 0: sp(2)
    assert got.tolist() == pytest.approx([sp(-1.0) + math.log(2.0), sp(2.0)], rel=1e-6)
    assert multi_objective_loss(c, r, prefs=None, labelled=None).tolist() == [0.0, 0.0]


def test_load_and_collate_objectives(tmp_path) -> None:
    from rm_ds.data.collate import collate_pairs
    from rm_ds.data.pairs import load_pairs
    from rm_ds.errors import DataError
    from rm_ds.data.formats import FormatOptions

    path = tmp_path / "mo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "q", "chosen": "a", "rejected": "b", "objectives": {"helpful": 1.0}},
        {"prompt": "q", "chosen": "c", "rejected": "d", "objectives": {"helpful": 0.5, "harmless": 0.0}}]))
    ds, _ = load_pairs(str(path), options=FormatOptions(objectives=OBJECTIVES))
    assert np.isnan(ds["prefs"][0][1]) and ds["prefs"][0][0] == 1.0 and ds["prefs"][1] == [0.5, 0.0]
    rows = [{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3, 2], "prefs": p} for p in ds["prefs"]]
    b = collate_pairs(rows, pad_id=0, eos_id=2)
    assert b["labelled"].tolist() == [[1.0, 0.0], [1.0, 1.0]] and b["n_terms"] == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "objectives": {"honest": 1.0}}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl line 1: field 'objectives': unknown objective 'honest'"):
        load_pairs(str(bad), options=FormatOptions(objectives=OBJECTIVES))


def test_objective_metrics_per_objective() -> None:
    from rm_ds.eval.metrics import objective_metrics, pairwise_metrics

    c = np.array([[1.0, 0.0], [0.5, 2.0], [-1.0, 1.0]])
    r = np.zeros((3, 2))
    prefs = np.array([[1.0, np.nan], [1.0, 1.0], [0.0, np.nan]])
    m = objective_metrics(c, r, prefs, OBJECTIVES)
    assert m["helpful/accuracy"] == 1.0 and m["helpful/n_pairs"] == 3.0
    assert m["harmless/n_pairs"] == 1.0
    flat = pairwise_metrics(np.array([1.0, 0.5, 2.0, -1.0]), np.zeros(4), pref=np.array([1.0, 1.0, 1.0, 0.0]))
    assert m["accuracy"] == flat["accuracy"] and m["n_pairs"] == 4.0


def test_rm_ds_train_eval_and_export_per_objective(setup_dir, tmp_path) -> None:
    """``rm-ds train`` with model.objectives: per-objective eval metrics, export names the outputs."""
    run = tmp_path / "run"
    data = setup_dir / "pairs.jsonl"
    proc = run_rm_ds(["train", "--config", "tiny", f"model.objectives=[{','.join(OBJECTIVES)}]",
                      f"data.train_path={data}", f"data.eval_path={data}", "train.max_steps=2",
                      "train.global_batch_pairs=8", "eval.every_steps=0", f"logging.run_dir={run}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    n_help = sum("helpful" in r["objectives"] for r in rows)
    n_harm = sum("harmless" in r["objectives"] for r in rows)
    m = json.loads(next((run / "eval").glob("step_*/metrics.json")).read_text())
    assert (m["helpful/n_pairs"], m["harmless/n_pairs"], m["n_pairs"]) == (n_help, n_harm, n_help + n_harm)
    for key in ("accuracy", "auc", "ece", "nll", "temperature", "tie_rate"):
        assert f"helpful/{key}" in m and f"harmless/{key}" in m, key
    exported = json.loads((run / "export" / "final" / "config.json").read_text())
    assert exported["id2label"] == {"0": "helpful", "1": "harmless"}
    cal = exported["rm_ds_calibration"]["objectives"]
    assert set(cal) == set(OBJECTIVES) and cal["helpful"]["temperature"] == m["helpful/temperature"]


@pytest.mark.parametrize(("shared", "packed"), [(True, False), (False, True), (True, True)])
def test_k_output_rewards_match_the_padded_layout(shared: bool, packed: bool) -> None:
    """A 2-output head read at the score tokens of shared/packed rows gives the padded layout's (B, 2)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rm_ds.data.collate import collate_pairs
    from rm_ds.model import rewards
    from rm_ds.data.packing import collate_layout

    cfg = LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, num_labels=2, pad_token_id=0, eos_token_id=2, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg).eval()
    rng = random.Random(1)
    rows = [{"prompt_ids": [rng.randint(3, 49) for _ in range(rng.randint(1, 9))],
             "chosen_ids": [rng.randint(3, 49) for _ in range(rng.randint(0, 6))] + [2],
             "rejected_ids": [rng.randint(3, 49) for _ in range(rng.randint(0, 6))] + [2],
             "prefs": [1.0, float("nan")]} for _ in range(4)]
    with torch.no_grad():
        want = rewards(model, collate_pairs(rows, pad_id=0, eos_id=2))
        batch = collate_layout(rows, prefix_sharing=shared, packing=packed, pad_id=0, eos_id=2)
        got = rewards(model, batch)
    assert got[0].shape == (4, 2) and batch["n_terms"] == 4
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
