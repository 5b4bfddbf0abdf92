"""Multi-rank DeepSpeed training equals a single-process PyTorch reference, step for step.

    PYTHONPATH=. python -m pytest tests/test_dist_parity.py -q

Each case trains a tiny random Llama reward model for a few optimizer steps on pairs of very uneven
lengths with token-budget micro-batching, so ranks hold different pair counts and accumulate over
several micro-steps. The real training loop (``rm_ds.train.recipe.setup`` + ``train_loop``) runs in 2 or 3
gloo processes under ZeRO-0/2/3; the reference is plain PyTorch over the same global batches with
the mean loss over each step's pairs. Loss trajectories and final weights must agree to 1e-5.
On ZeRO-0 the gradients go through rm_ds's own reduction (``dist.all_reduce_sum_``), the 30k-row
embedding table row-wise: a step touches a few hundred of its rows.
``test_naive_scaling_is_detectably_wrong`` shows the comparison is sharp enough to catch
DeepSpeed's default per-micro-batch-mean weighting.
"""

from __future__ import annotations

import pytest
import torch

from tests.harness import run_distributed
from tests.reference import ReferenceTrainer, load_reference, parity_run


pytestmark = [pytest.mark.slow, pytest.mark.cluster]  # every test here runs 2 or 3 ranks


@pytest.fixture(scope="module")
def setup_dir(tiny_setup):
    return tiny_setup("parity", prompt_words=(1, 25), response_words=(1, 30))


def overrides(root, *, stage: str, steps: int = 4, extra: tuple = ()) -> list[str]:
    return parity_run(root, root / ("run_" + stage), f"deepspeed.config={stage}", *extra, steps=steps)


def train_worker(ovr: list[str]) -> dict:
    """Runs on every rank: the product's training loop, then the full weights and the plan."""
    from rm_ds.cluster import dist
    from rm_ds.config import load_config
    from rm_ds.train.engine import gathered_state_dict
    from rm_ds.train.recipe import setup, train_loop

    info = dist.current()
    tr = setup(load_config(None, ovr), info)
    losses = []
    train_loop(tr, on_step=lambda step, st: losses.append(st.loss))
    state = gathered_state_dict(tr.engine)
    return {"losses": losses, "state": state if info.is_main else None,
            "plan": tr.state.sampler.plan_epoch(0), "rank": info.rank}


def reference_run(ovr: list[str], plan, *, naive: bool = False):
    """Plain PyTorch, one process (tests/reference.py): AdamW on the mean loss over each global batch's pairs.

    ``naive=True`` instead weights like DeepSpeed's default: each micro-batch's mean loss, divided by
    the accumulation count, averaged over ranks (pairs in small micro-batches count more).
    """
    from rm_ds.data.collate import collate_pairs
    from rm_ds.data.dataset import rows_at
    from rm_ds.data.tokenize import eos_id
    from rm_ds.train.loss import bt_loss

    ref = load_reference(ovr)
    model, cfg, trainer = ref.model, ref.cfg, ReferenceTrainer(ref.model, ref.cfg.train)

    def per_pair(idx):
        b = collate_pairs(rows_at(ref.ds, idx), pad_id=ref.pad, eos_id=eos_id(ref.tok))
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.squeeze(-1)
        n = len(idx)
        return bt_loss(out[:n], out[n:], beta=cfg.loss.beta)

    losses = []
    for step_plan in plan[: cfg.train.max_steps]:
        micro = [mb for rank in step_plan for mb in rank if mb]
        n_pairs = sum(len(mb) for mb in micro)
        world, n_micro = len(step_plan), len(step_plan[0])
        # forward in the run's micro-batches: same arithmetic grouping, plain mean
        losses.append(trainer.step(micro, lambda mb: per_pair(mb).mean() / n_micro / world if naive
                                   else per_pair(mb).sum() / n_pairs))
    return losses, trainer.weights()


def assert_states_close(got: dict, want: dict, *, rtol: float) -> None:
    """Every tensor within ``rtol`` relative to its own scale (max |w|): AdamW normalises each
    element's step, so an element whose gradient is ~0 turns 1e-9 summation-order noise into a
    visible step; measured against the tensor's scale that noise is ~1e-7."""
    assert got.keys() == want.keys()
    for name in want:
        scale = float(want[name].abs().max())
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=rtol * scale, msg=lambda m: f"{name}: {m}")


def check_plan_is_uneven(plan) -> None:
    """The case must exercise what it claims: accumulation and unequal pair counts per rank."""
    assert any(len(step[0]) > 1 for step in plan), "no step accumulates over micro-steps"
    assert any(len({sum(len(mb) for mb in rank) for rank in step}) > 1 for step in plan), "ranks hold equal counts"
    assert any(len({len(mb) for rank in step for mb in rank}) > 1 for step in plan), "micro-batches all equal"


CASES = [(2, "zero0", ()), (3, "zero0", ()), (2, "zero2", ()), (2, "zero3", ()), (2, "zero3_offload", ()),
         (3, "zero2", ()), (3, "zero3", ("model.activation_checkpointing=true",))]


@pytest.mark.parametrize("world,stage,extra", CASES, ids=[f"{w}ranks-{s}{'-ckpt' if e else ''}" for w, s, e in CASES])
def test_matches_single_process_reference(setup_dir, world, stage, extra):
    ovr = overrides(setup_dir, stage=stage, extra=extra)
    results = run_distributed(train_worker, world_size=world, args=(ovr,))
    plan = results[0]["plan"]
    assert all(r["plan"] == plan for r in results), "ranks computed different plans"
    check_plan_is_uneven(plan)
    assert all(r["losses"] == results[0]["losses"] for r in results), "ranks logged different global losses"
    ref_losses, ref_state = reference_run(ovr, plan)
    torch.testing.assert_close(torch.tensor(results[0]["losses"]), torch.tensor(ref_losses), rtol=1e-5, atol=0)
    assert_states_close(results[0]["state"], ref_state, rtol=1e-5)
    # the weights really moved (a no-op step would trivially "match" nothing, but guard anyway)
    _, init = reference_run(overrides(setup_dir, stage=stage, steps=1, extra=("train.lr=1e-12",)), plan)
    assert max((results[0]["state"][k] - init[k]).abs().max() for k in init) > 1e-3


def test_naive_scaling_is_detectably_wrong(setup_dir):
    """DeepSpeed's default weighting (mean per micro-batch / GAS, mean over ranks) diverges from the
    exact mean over pairs by far more than the 1e-5 tolerance on this data, so the parity test
    above would fail an implementation that used it."""
    ovr = overrides(setup_dir, stage="zero2")
    results = run_distributed(train_worker, world_size=2, args=(ovr,))
    plan = results[0]["plan"]
    _, exact = reference_run(ovr, plan)
    _, naive = reference_run(ovr, plan, naive=True)
    rel = max(((naive[k] - exact[k]).norm() / exact[k].norm()).item() for k in exact)
    assert rel > 1e-3, f"naive and exact weighting differ by only {rel:.2e}"
    with pytest.raises(AssertionError):
        assert_states_close(results[0]["state"], naive, rtol=1e-5)
    assert_states_close(results[0]["state"], exact, rtol=1e-5)
