"""Prefix-shared and packed layouts give the padded layout's rewards, gradients and training run.

    PYTHONPATH=. python -m pytest tests/test_prefix_sharing.py -q

In-memory tiny Llama reward models (fp32, sdpa and eager) score random pairs (prompt 0-60 tokens,
responses 1-40) in four layouts: padded (``collate_pairs``), one ``[P|C|R]`` row per pair, packed
``[P|C][P|R]`` rows, and packed shared rows. Rewards must agree within 1e-5; gradients per parameter
tensor within 1e-5 relative to the tensor's gradient norm. The BT gradient is a difference of the
chosen and rejected gradients, which are nearly equal at random init, so fp32 summation-order noise
reaches ~4e-6 of its norm even for a mere re-ordering of rows (packed without sharing); the sum of
both rewards has no such cancellation and is checked element-wise. A 2-rank ZeRO-2 run (gloo) with
prefix sharing, one with sharing + packing (and that one under ZeRO-3 with activation checkpointing)
follow the unshared run's loss trajectory within 1e-5.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from rm_ds.data.collate import collate_pairs, make_collate
from rm_ds.train.loss import bt_loss
from rm_ds.model import reward_head, rewards
from rm_ds.data.packing import attention_mask_for, block_mask, collate_layout, pair_lengths, sampler_cost
from rm_ds.data.sampler import PairSampler, SamplerConfig
from rm_ds.data.tokenize import token_columns
from tests.harness import run_distributed
from tests.reference import parity_run

PAD, EOS, VOCAB = 0, 2, 97
ONE_ROW = 10**6  # row_tokens above any micro-batch's total: every pair in one row
LAYOUTS = [(True, False, None), (False, True, None), (True, True, None), (True, True, ONE_ROW), (False, True, ONE_ROW),
           (True, True, 150)]
LAYOUT_IDS = ["shared", "packed", "shared_packed", "shared_one_row", "packed_one_row", "shared_packed_rows150"]


def random_rows(seed: int, n: int | None = None) -> list[dict]:
    rng = random.Random(seed)
    tok = lambda k: [rng.randint(3, VOCAB - 1) for _ in range(k)]  # noqa: E731  never pad (0) or eos (2)
    return [dict(prompt_ids=tok(rng.randint(0, 60)), chosen_ids=tok(rng.randint(0, 39)) + [EOS],
                 rejected_ids=tok(rng.randint(0, 39)) + [EOS], margin=rng.choice([0.0, 0.3]),
                 weight=rng.choice([1.0, 2.0])) for _ in range(n or rng.randint(2, 8))]


def tiny_llama(attn: str, seed: int = 0) -> LlamaForSequenceClassification:
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, num_labels=1, pad_token_id=PAD,
                      eos_token_id=EOS, attn_implementation=attn)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForSequenceClassification(cfg)


def forward_backward(model, batch: dict, objective: str):
    model.zero_grad()
    chosen, rejected = rewards(model, batch)
    if objective == "bt":
        loss = (bt_loss(chosen, rejected, margin=batch["margin"], weight=batch["weight"]) * batch["pair_mask"]).sum()
    else:
        loss = chosen.sum() + rejected.sum()
    loss.backward()
    return chosen.detach(), rejected.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                if p.grad is not None}


# --------------------------------------------------------------------------- equality with the padded layout


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rewards_and_gradients_match_padded(attn, seed):
    rows = random_rows(seed)
    model = tiny_llama(attn, seed)
    for objective in ("bt", "sum"):
        c0, r0, g0 = forward_backward(model, make_collate(prefix_sharing=False, packing=False, pad_id=PAD,
                                                          eos_id=EOS)(rows), objective)
        for ps, pk, row_tokens in LAYOUTS:
            batch = collate_layout(rows, prefix_sharing=ps, packing=pk, pad_id=PAD, eos_id=EOS, row_tokens=row_tokens)
            c, r, g = forward_backward(model, batch, objective)
            torch.testing.assert_close(c, c0, rtol=0, atol=1e-5)
            torch.testing.assert_close(r, r0, rtol=0, atol=1e-5)
            for name, want in g0.items():
                if objective == "bt":
                    rel = float((g[name] - want).norm() / want.norm())
                    assert rel < 1e-5, f"{attn} {ps=} {pk=} {name}: gradient differs by {rel:.2e} of its norm"
                else:
                    torch.testing.assert_close(g[name], want, rtol=0, atol=1e-5 * float(want.abs().max()),
                                               msg=lambda m: f"{attn} {ps=} {pk=} {name}: {m}")


def test_lora_wrapped_model():
    """Under PEFT LoRA the hook finds the (unfrozen) head inside the wrapper; rewards and the trainable
    gradients still match the padded layout."""
    from rm_ds.config import LoraConfig
    from rm_ds.model import apply_lora

    rows = random_rows(6)
    model = apply_lora(tiny_llama("sdpa", 6), LoraConfig(enabled=True, r=4))
    c0, r0, g0 = forward_backward(model, collate_pairs(rows, pad_id=PAD, eos_id=EOS), "sum")
    c, r, g = forward_backward(model, collate_layout(rows, prefix_sharing=True, packing=True, pad_id=PAD,
                                                     eos_id=EOS), "sum")
    torch.testing.assert_close(c, c0, rtol=0, atol=1e-5)
    torch.testing.assert_close(r, r0, rtol=0, atol=1e-5)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trained) and any(n.endswith("score.weight") for n in trained)
    for name in trained:
        torch.testing.assert_close(g[name], g0[name], rtol=0, atol=1e-5 * float(g0[name].abs().max()))


def test_wrong_positions_are_detected():
    """The comparison is sharp: numbering R after C (the natural mistake) moves rewards well past 1e-5."""
    rows = random_rows(5)
    model = tiny_llama("sdpa")
    c0, r0, _ = forward_backward(model, collate_pairs(rows, pad_id=PAD, eos_id=EOS), "sum")
    batch = collate_layout(rows, prefix_sharing=True, packing=False, pad_id=PAD, eos_id=EOS)
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]).clone()
    _, r, _ = forward_backward(model, batch, "sum")
    assert (r - r0).abs().max() > 1e-4


def test_activation_checkpointing_gives_the_same_gradients():
    rows = random_rows(3)
    batch = collate_layout(rows, prefix_sharing=True, packing=True, pad_id=PAD, eos_id=EOS)
    plain = tiny_llama("sdpa", 3).train()
    ckpt = tiny_llama("sdpa", 3).train()
    ckpt.activation_checkpointing_enable({"use_reentrant": False})
    _, _, g0 = forward_backward(plain, batch, "bt")
    _, _, g1 = forward_backward(ckpt, batch, "bt")
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=0, atol=1e-6 * float(g0[name].abs().max()))


# --------------------------------------------------------------------------- masks, positions, counts


def reference_mask(row_parts: list[list[tuple[int, int, int]]], width: int) -> torch.Tensor:
    """Loop-built mask from (segment, part, index) per token, -1 segment for pad (the rules in words)."""
    return torch.tensor([[[[k <= q and sq == sk and not (pq == 2 and pk == 1) for k, (sk, pk, _) in enumerate(toks)]
                           for q, (sq, pq, _) in enumerate(toks)]] for toks in row_parts])


@pytest.mark.parametrize("ps,pk,row_tokens", LAYOUTS, ids=LAYOUT_IDS)
def test_mask_positions_and_score_tokens(ps, pk, row_tokens):
    rows = random_rows(11, n=6)
    b = collate_layout(rows, prefix_sharing=ps, packing=pk, pad_id=PAD, eos_id=EOS, row_tokens=row_tokens)
    n_rows, width = b["input_ids"].shape
    flat_ids, flat_pos = b["input_ids"].reshape(-1), b["position_ids"].reshape(-1)
    mask = b["attention_mask"][:, 0]
    # rebuild every token's (segment, part) from the score indices and the rows, then compare masks
    tags = [[(-1, 0, 0)] * width for _ in range(n_rows)]
    for i, row in enumerate(rows):
        p, c, r = len(row["prompt_ids"]), len(row["chosen_ids"]), len(row["rejected_ids"])
        ce, re_ = int(b["chosen_index"][i]), int(b["rejected_index"][i])
        assert flat_ids[ce] == EOS and flat_ids[re_] == EOS
        assert int(flat_pos[ce]) == p + c - 1 and int(flat_pos[re_]) == p + r - 1  # R continues from P
        row_c, row_r = divmod(ce, width)[0], divmod(re_, width)[0]
        assert row_c == row_r, "a pair never spans two rows"
        spans = [(re_ - (p + c + r) + 1, p, c, r)] if ps else [(ce - p - c + 1, p, c, 0), (re_ - p - r + 1, p, 0, r)]
        for s, (start, np_, nc, nr) in enumerate(spans):
            start -= row_c * width
            assert flat_ids[row_c * width + start: row_c * width + start + np_].tolist() == row["prompt_ids"]
            for j in range(np_ + nc + nr):
                tags[row_c][start + j] = ((i, s), 0 if j < np_ else (1 if j < np_ + nc else 2), j)
    seg_of = {t[0] for rt in tags for t in rt}
    seg_num = {s: k for k, s in enumerate(sorted(seg_of, key=str))}
    want = reference_mask([[(seg_num[s], part, j) for s, part, j in rt] for rt in tags], width)
    assert torch.equal(mask, want[:, 0])
    # R never attends to C, and nothing attends across pairs
    for q_row, rt in enumerate(tags):
        for q, (sq, pq, _) in enumerate(rt):
            for k, (sk, pk_, _) in enumerate(rt):
                if pq == 2 and pk_ == 1 and sq != -1 and sk != -1 and sq[0] == sk[0]:
                    assert not mask[q_row, q, k]
                if sq != sk and (sq == -1 or sk == -1 or sq[0] != sk[0]):
                    assert not mask[q_row, q, k]
    real = sum(len(r["prompt_ids"]) * (1 if ps else 2) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)
    assert b["real_tokens"] == real == int((b["input_ids"] != PAD).sum())
    assert b["computed_tokens"] == n_rows * width
    assert b["unshared_tokens"] == sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"])
                                       for r in rows)
    if pk and row_tokens == ONE_ROW:
        assert n_rows == 1 and b["computed_tokens"] == b["real_tokens"]  # no padding at all
    elif pk:
        cap = row_tokens or 2 * max(len(r["prompt_ids"]) * (1 if ps else 2) + len(r["chosen_ids"]) +
                                    len(r["rejected_ids"]) for r in rows)
        assert n_rows > 1 and width <= cap


def test_eager_pad_rows_stay_finite():
    """Shared rows of different lengths are padded; under eager every position, pad included, is finite."""
    rows = random_rows(4, n=5)
    rows[0]["prompt_ids"] = rows[0]["prompt_ids"][:2]  # make sure rows differ in length
    b = collate_layout(rows, prefix_sharing=True, packing=False, pad_id=PAD, eos_id=EOS)
    assert (b["input_ids"] == PAD).any()
    model = tiny_llama("eager")
    mask = attention_mask_for(b["attention_mask"], "eager", torch.float32)
    assert mask.dtype == torch.float32 and torch.isfinite(mask).all() and mask.min() == torch.finfo(torch.float32).min
    assert b["attention_mask"][:, 0].any(-1).all(), "every query, pad included, sees at least itself"
    seen = []
    hook = reward_head(model).register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        c, r = rewards(model, b)
    finally:
        hook.remove()
    assert torch.isfinite(seen[0]).all() and torch.isfinite(c).all() and torch.isfinite(r).all()


def test_block_mask_rules_on_a_hand_built_row():
    """[p p c r | pad]: r sees p, p and itself, not c; pad sees only pad."""
    seg = torch.tensor([[0, 0, 0, 0, -1]])
    part = torch.tensor([[0, 0, 1, 2, 0]])
    assert block_mask(seg, part)[0, 0].int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                                                          [1, 1, 0, 1, 0], [0, 0, 0, 0, 1]]


def test_encoders_are_refused():
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, num_labels=1)
    model = BertForSequenceClassification(cfg)
    batch = collate_layout(random_rows(0, n=2), prefix_sharing=True, packing=False, pad_id=PAD, eos_id=EOS)
    with pytest.raises(ValueError, match=r"pools its first \(\[CLS\]\) token"):
        rewards(model, batch)


def test_other_attention_implementations_are_refused():
    with pytest.raises(ValueError, match="sdpa"):
        attention_mask_for(torch.ones(1, 1, 2, 2, dtype=torch.bool), "flash_attention_2", torch.float32)


def test_filler_batch_contributes_nothing():
    model = tiny_llama("sdpa")
    for ps, pk in ((True, False), (True, True), (False, True)):
        b = make_collate(prefix_sharing=ps, packing=pk, pad_id=PAD, eos_id=EOS)([])
        assert b["n_pairs"] == 0 and b["real_tokens"] == 0 and b["unshared_tokens"] == 0
        _, _, g = forward_backward(model, b, "bt")
        assert all(float(v.abs().max()) == 0 for v in g.values())


def test_sampler_lengths_are_the_rows_real_tokens():
    """pair_lengths gives, per pair, the tokens its row(s) hold; with one packed row per micro-batch
    the packed sampler's budget is a hard cap on that row, which has no padding."""
    from datasets import Dataset

    rows = random_rows(7, n=40)
    ds = Dataset.from_dict(token_columns(rows)).select(list(range(39, -1, -1)))  # index-mapped, as after filtering
    rows = rows[::-1]
    for ps, pk in ((True, False), (False, True), (True, True)):
        lens = pair_lengths(ds, prefix_sharing=ps, packing=pk)
        for i, row in enumerate(rows):
            b = collate_layout([row], prefix_sharing=ps, packing=pk, pad_id=PAD, eos_id=EOS)
            assert lens[i] == b["real_tokens"]
    budget = 300
    lens = pair_lengths(ds, prefix_sharing=True, packing=True)
    sampler = PairSampler(lens, SamplerConfig(global_batch_pairs=16, token_budget=budget,
                                              cost=sampler_cost(packing=True)),
                          world_size=2, rank=0, seed=0)
    for step in sampler.plan_epoch(0):
        for rank in step:
            for mb in rank:
                b = collate_layout([rows[i] for i in mb], prefix_sharing=True, packing=True, pad_id=PAD, eos_id=EOS,
                                   row_tokens=budget)
                assert b["computed_tokens"] == b["real_tokens"] == int(np.sum(lens[mb])) <= budget


@pytest.mark.parametrize("seed", range(5))
def test_sum_cost_sampler_plans(seed):
    """cost="sum": every pair once per epoch, each micro-batch's summed length within the budget, the
    same micro-step count on every rank, and no more micro-steps than a pair-at-a-time split needs."""
    rng = random.Random(seed)
    budget, world = rng.randint(40, 300), rng.randint(1, 3)
    lens = [rng.randint(1, budget) for _ in range(rng.randint(1, 80))]
    cfg = SamplerConfig(global_batch_pairs=rng.randint(1, 20), token_budget=budget, cost="sum",
                        length_grouping=rng.random() < 0.5, pairs_per_micro=rng.choice([None, 3]))
    plan = PairSampler(lens, cfg, world_size=world, rank=0, seed=seed).plan_epoch(0)
    assert sorted(i for step in plan for rank in step for mb in rank for i in mb) == list(range(len(lens)))
    for step in plan:
        assert len({len(rank) for rank in step}) == 1
        n_pairs = sum(len(mb) for rank in step for mb in rank)
        assert len(step[0]) <= -(-n_pairs // world)
        for rank in step:
            for mb in rank:
                assert sum(lens[i] for i in mb) <= budget and len(mb) <= (cfg.pairs_per_micro or len(lens))


# --------------------------------------------------------------------------- 2 ranks, ZeRO-2, through DeepSpeed

@pytest.fixture(scope="module")
def setup_dir(tiny_setup):
    return tiny_setup("prefix", prompt_words=(5, 40), response_words=(1, 20))


def overrides(root, *, stage: str, name: str, extra: tuple = ()) -> list[str]:
    # length_grouping off: the global batches are then the same whatever the layout's lengths
    return parity_run(root, root / ("run_" + name), "train.length_grouping=false", f"deepspeed.config={stage}", *extra,
                      steps=4, token_budget=160)


def layout_train_worker(runs: list[list[str]]) -> list[dict]:
    """One rank, one run per override list (in one process, to spare the start-up): the product's
    ``setup`` + ``train_loop`` (layout lengths, sampler cost and collate come from ``data.*``), then
    eval-mode scores of the first pairs through the engine with the run's collate."""
    from rm_ds.cluster import dist
    from rm_ds.config import load_config
    from rm_ds.data.dataset import rows_at
    from rm_ds.train.engine import score_batches
    from rm_ds.train.recipe import setup, train_loop

    info = dist.current()
    out = []
    for ovr in runs:
        tr = setup(load_config(None, ovr), info)
        stats = []
        train_loop(tr, on_step=lambda step, st: stats.append(st))
        mine = list(range(info.rank, 10, info.world_size))
        (c, r), = score_batches(tr.engine, [tr.collate(rows_at(tr.data.train, mine))])
        out.append({"losses": [st.loss for st in stats], "micro_steps": [st.micro_steps for st in stats],
                    "ratio": [st.real_tokens / st.computed_tokens for st in stats],
                    "reuse": [1 - st.real_tokens / st.unshared_tokens for st in stats], "scores": (mine, c, r)})
    return out


@pytest.mark.slow
@pytest.mark.cluster
def test_two_rank_zero2_prefix_sharing_matches_unshared(setup_dir):
    """Unshared, shared and shared+packed under ZeRO-2, and shared+packed under ZeRO-3 with activation
    checkpointing, all against the unshared ZeRO-2 run."""
    names = {"unshared": ("zero2", ()), "shared": ("zero2", ("data.prefix_sharing=true",)),
             "shared_packed": ("zero2", ("data.prefix_sharing=true", "data.packing=true")),
             "zero3_ckpt_shared_packed": ("zero3", ("data.prefix_sharing=true", "data.packing=true",
                                                    "model.activation_checkpointing=true"))}
    res = run_distributed(layout_train_worker, world_size=2,
                          args=([overrides(setup_dir, stage=st, name=n, extra=e) for n, (st, e) in names.items()],))
    runs = {name: [res[0][k], res[1][k]] for k, name in enumerate(names)}
    for name, (r0, r1) in runs.items():
        assert r0["losses"] == r1["losses"], f"{name}: ranks logged different global losses"
    want = torch.tensor(runs["unshared"][0]["losses"])
    assert len(want) == 4 and want[0] != want[-1]
    for name in ("shared", "shared_packed", "zero3_ckpt_shared_packed"):
        torch.testing.assert_close(torch.tensor(runs[name][0]["losses"]), want, rtol=1e-5, atol=0)
        for rank in (0, 1):  # eval-mode rewards after training, read through the engine
            idx, c, r = runs[name][rank]["scores"]
            _, c0, r0 = runs["unshared"][rank]["scores"]
            torch.testing.assert_close(c, c0, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(r, r0, rtol=1e-4, atol=1e-5)
    assert any(m > 1 for m in runs["shared"][0]["micro_steps"]), "the shared run should accumulate"
    assert min(runs["shared_packed"][0]["ratio"]) > max(runs["unshared"][0]["ratio"])  # packing cuts the padding
    assert all(x == 0 for x in runs["unshared"][0]["reuse"]) and all(x > 0.2 for x in runs["shared"][0]["reuse"])
