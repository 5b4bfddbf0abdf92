"""Tests for rm_ds.data.sampler: hand-built plans plus hypothesis properties.

Run: PYTHONPATH=. python -m pytest tests/test_sampler.py -q
"""

from __future__ import annotations

import dataclasses
import doctest
import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rm_ds.data.sampler
from rm_ds.data.sampler import PairSampler, SamplerConfig, eval_shards

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- independent references ------------------------------------------------------------------


def fits(micro: list[int], lengths, cfg_budget: int | None, cfg_ppm: int | None) -> bool:
    """The budget rule, written out: n_pairs * longest <= budget and n_pairs <= pairs_per_micro."""
    if cfg_budget is not None and len(micro) * max(lengths[i] for i in micro) > cfg_budget:
        return False
    return cfg_ppm is None or len(micro) <= cfg_ppm


def min_micro_batches(lens: list[int], budget: int | None, ppm: int | None) -> int:
    """Fewest micro-batches that hold ``lens`` (exact DP over the longest-first order).

    Some optimal partition is contiguous in sorted order (swap a long pair into the group of
    longer pairs never raises any group's maximum), so a DP over prefixes is exact.
    """
    s = sorted(lens, reverse=True)
    best = [0] + [math.inf] * len(s)
    for end in range(1, len(s) + 1):
        for start in range(end):  # segment s[start:end], longest is s[start]
            k = end - start
            if (budget is None or k * s[start] <= budget) and (ppm is None or k <= ppm):
                best[end] = min(best[end], best[start] + 1)
    return int(best[-1])


def padded_tokens(plan, lengths) -> int:
    return sum(len(mb) * max(lengths[i] for i in mb) for step in plan for rank in step for mb in rank if mb)


def check_step_shape(step, lengths, world_size: int, budget: int | None, ppm: int | None) -> None:
    """Equal micro-steps on all ranks, budgets held, fillers minimal and last."""
    assert len(step) == world_size
    n_micro = {len(rank) for rank in step}
    assert len(n_micro) == 1, f"ranks disagree on micro-step count: {[len(r) for r in step]}"
    (m,) = n_micro
    pairs = [i for rank in step for mb in rank for i in mb]
    assert m == max(1, math.ceil(min_micro_batches([lengths[i] for i in pairs], budget, ppm) / world_size))
    fillers = 0
    for rank in step:
        for j, mb in enumerate(rank):
            if mb:
                assert fits(mb, lengths, budget, ppm), mb
            else:
                fillers += 1
                assert j == m - 1, "fillers only in the last micro-step"
    if fillers:  # a filler is only allowed when no micro-batch could be split further
        assert all(len(mb) == 1 for rank in step for mb in rank if mb)
        assert fillers == world_size * m - len(pairs)


# --- hand-built examples ---------------------------------------------------------------------


def test_docstring_examples() -> None:
    failed, attempted = doctest.testmod(rm_ds.data.sampler)
    assert attempted > 0 and failed == 0


def test_fixed_mode_plan_written_out() -> None:
    # lengths    10  20  30  40 | 50  60  70      G=4, 2 ranks, at most 2 pairs per micro-batch
    # step 0 longest first: 3 2 1 0 -> [3, 2] (rank 0, 2*40 tokens), [1, 0] (rank 1)
    # step 1 (partial): 6 5 4 -> greedy [6, 5] [4] would be 140 vs 50 padded tokens; the balanced
    #   cut is [5, 4] (2*60 = 120 tokens, rank 0) and [6] (70 tokens, rank 1)
    cfg = SamplerConfig(global_batch_pairs=4, mode="fixed", pairs_per_micro=2, shuffle=False, length_grouping=False)
    plan = PairSampler([10, 20, 30, 40, 50, 60, 70], cfg, world_size=2, rank=1, seed=0).plan_epoch(0)
    assert plan == [
        [[[3, 2]], [[1, 0]]],
        [[[5, 4]], [[6]]],
    ]


def test_micro_batches_go_to_least_loaded_rank() -> None:
    # budget 10: lengths 10 8 6 2 each need their own micro-batch (10//8 = 10//6 = 1; 2 is alone).
    # micro-step 0: [0] (10 tokens) -> rank 0, [1] (8) -> rank 1; loads 10, 8
    # micro-step 1: [2] (6) -> rank 1 (least loaded), [3] (2) -> rank 0; loads 12, 14
    cfg = SamplerConfig(global_batch_pairs=4, token_budget=10, shuffle=False, length_grouping=False)
    plan = PairSampler([10, 8, 6, 2], cfg, world_size=2, rank=0, seed=0).plan_epoch(0)
    assert plan == [[[[0], [3]], [[1], [2]]]]


def test_split_before_filler() -> None:
    # 4 short pairs fit in one micro-batch of budget 100, but 4 ranks each need a micro-batch:
    # the micro-batch is split down to single pairs instead of leaving 3 ranks with fillers.
    cfg = SamplerConfig(global_batch_pairs=4, token_budget=100, shuffle=False, length_grouping=False)
    plan = PairSampler([5, 6, 7, 8], cfg, world_size=4, rank=0, seed=0).plan_epoch(0)
    assert plan == [[[[3]], [[2]], [[1]], [[0]]]]


def test_global_batch_smaller_than_world_uses_fillers() -> None:
    cfg = SamplerConfig(global_batch_pairs=2, token_budget=100, shuffle=False, length_grouping=False)
    plan = PairSampler([5, 6, 7], cfg, world_size=3, rank=0, seed=0).plan_epoch(0)
    assert plan == [
        [[[1]], [[0]], [[]]],
        [[[2]], [[]], [[]]],
    ]


def test_length_grouping_plan_written_out() -> None:
    # lengths 1 9 2 8 | 3 7 4 6   G=2, group_size=2 -> mega-batches of 4 pairs, sorted longest first
    # mega 0: 1(9) 3(8) 2(2) 0(1) -> steps [1, 3], [2, 0];  mega 1: 5(7) 7(6) 6(4) 4(3) -> [5, 7], [6, 4]
    lengths = [1, 9, 2, 8, 3, 7, 4, 6]
    kw = dict(global_batch_pairs=2, mode="fixed", pairs_per_micro=2, shuffle=False, group_size=2)
    grouped = PairSampler(lengths, SamplerConfig(**kw), world_size=1, rank=0, seed=0).plan_epoch(0)
    assert grouped == [[[[1, 3]]], [[[2, 0]]], [[[5, 7]]], [[[6, 4]]]]
    plain_cfg = SamplerConfig(**kw, length_grouping=False)
    plain = PairSampler(lengths, plain_cfg, world_size=1, rank=0, seed=0).plan_epoch(0)
    assert plain == [[[[1, 0]]], [[[3, 2]]], [[[5, 4]]], [[[7, 6]]]]
    assert padded_tokens(grouped, lengths) == 18 + 4 + 14 + 8 < padded_tokens(plain, lengths) == 60


@pytest.mark.parametrize("mode", ["token_budget", "fixed"])
def test_length_grouping_reduces_padding(mode: str) -> None:
    lengths = np.random.default_rng(1234).integers(1, 513, size=5000)
    kw = dict(token_budget=2048) if mode == "token_budget" else dict(pairs_per_micro=4)
    pad = {}
    for grouping in (True, False):
        cfg = SamplerConfig(global_batch_pairs=64, mode=mode, length_grouping=grouping, **kw)
        plan = PairSampler(lengths, cfg, world_size=2, rank=0, seed=7).plan_epoch(0)
        pad[grouping] = padded_tokens(plan, lengths) - int(lengths.sum())
    assert pad[True] < 0.5 * pad[False], pad


def test_ranks_get_even_token_loads() -> None:
    # max rank load / mean rank load per step, averaged: ~1.03 here; a plain greedy packing
    # with halving splits gave ~1.34 on the same data
    lengths = np.random.default_rng(0).integers(1, 513, size=5000)
    cfg = SamplerConfig(global_batch_pairs=64, token_budget=4096)
    plan = PairSampler(lengths, cfg, world_size=8, rank=0, seed=0).plan_epoch(0)
    ratios = []
    for step in plan:
        loads = [padded_tokens([[rank]], lengths) for rank in step]
        ratios.append(max(loads) / np.mean(loads))
    assert np.mean(ratios) < 1.1


def test_drop_last_drops_only_final_partial_batch() -> None:
    lengths = list(range(1, 11))
    cfg = SamplerConfig(global_batch_pairs=4, token_budget=64, drop_last=True)
    s = PairSampler(lengths, cfg, world_size=2, rank=0, seed=3)
    assert s.steps_per_epoch() == 2 == len(s.plan_epoch(0))
    keep = PairSampler(lengths, dataclasses.replace(cfg, drop_last=False), world_size=2, rank=0, seed=3)
    assert len(keep) == 3 and keep.plan_epoch(0)[:2] == s.plan_epoch(0)


def test_iteration_state_and_epochs() -> None:
    lengths = np.random.default_rng(0).integers(1, 100, size=50)
    cfg = SamplerConfig(global_batch_pairs=8, token_budget=256)
    s = PairSampler(lengths, cfg, world_size=2, rank=1, seed=11)
    assert len(s) == s.steps_per_epoch() == 7
    it = iter(s)
    first = next(it)
    assert first == s.plan_epoch(0)[0][1]
    assert s.state_dict() == {"epoch": 0, "step": 1} and len(s) == 6
    rest = list(it)
    assert len(rest) == 6 and s.state_dict() == {"epoch": 0, "step": 7}
    assert list(s) == [] and s.state_dict()["epoch"] == 0  # no automatic epoch advance
    s.set_epoch(1)
    assert s.state_dict() == {"epoch": 1, "step": 0}
    assert list(s) == [step[1] for step in s.plan_epoch(1)]
    assert s.plan_epoch(1) != s.plan_epoch(0)


def test_yielded_batches_are_copies() -> None:
    cfg = SamplerConfig(global_batch_pairs=4, token_budget=64)
    s = PairSampler([3, 4, 5, 6], cfg, world_size=1, rank=0, seed=0)
    for micro in next(iter(s)):
        micro.clear()
    s.set_epoch(0)
    assert sorted(i for mb in next(iter(s)) for i in mb) == [0, 1, 2, 3]


def test_eval_shards_written_out() -> None:
    # lengths 3 9 2 9 1, budget 9, longest first 1 3 0 2 4: packed [1] [3] [0, 2, 4] -> 2 micro-steps
    # on 2 ranks, so [0, 2, 4] is split into [0, 2] and [4]; no filler
    assert eval_shards([3, 9, 2, 9, 1], world_size=2, token_budget=9, pairs_per_micro=None) == [
        [[1], [0, 2]],
        [[3], [4]],
    ]
    # fewer pairs than ranks: fillers keep every rank in the forward
    assert eval_shards([4, 5], world_size=3, token_budget=None, pairs_per_micro=8) == [[[1]], [[0]], [[]]]
    assert eval_shards([], world_size=2, token_budget=8, pairs_per_micro=None) == [[], []]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(global_batch_pairs=0, token_budget=8), "global_batch_pairs"),
        (dict(global_batch_pairs=4), "token_budget"),
        (dict(global_batch_pairs=4, token_budget=0), "token_budget"),
        (dict(global_batch_pairs=4, mode="fixed"), "pairs_per_micro"),
        (dict(global_batch_pairs=4, mode="fixed", pairs_per_micro=2, token_budget=8), "token_budget"),
        (dict(global_batch_pairs=4, token_budget=8, pairs_per_micro=0), "pairs_per_micro"),
        (dict(global_batch_pairs=4, token_budget=8, group_size=0), "group_size"),
        (dict(global_batch_pairs=4, token_budget=8, mode="packed"), "mode"),
        (dict(global_batch_pairs=4, token_budget=8, shuffle=1), "shuffle"),
    ],
)
def test_config_validation_names_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SamplerConfig(**kwargs)


def test_too_long_pair_is_named() -> None:
    cfg = SamplerConfig(global_batch_pairs=2, token_budget=100)
    with pytest.raises(ValueError, match=r"pair 2 has length 101 > token_budget 100"):
        PairSampler([5, 100, 101, 7], cfg, world_size=1, rank=0, seed=0)
    with pytest.raises(ValueError, match=r"pair 0 has length 0"):
        PairSampler([0, 1], cfg, world_size=1, rank=0, seed=0)
    with pytest.raises(ValueError, match=r"pair 1 has length 50"):
        eval_shards([1, 50], world_size=1, token_budget=49, pairs_per_micro=None)
    with pytest.raises(ValueError, match="rank"):
        PairSampler([1, 2], cfg, world_size=2, rank=2, seed=0)
    with pytest.raises(ValueError, match="step"):
        PairSampler([1, 2], cfg, world_size=1, rank=0, seed=0).load_state_dict({"epoch": 0, "step": 2})


def test_plan_epoch_200k_pairs_is_fast() -> None:
    lengths = np.random.default_rng(0).integers(1, 513, size=200_000)
    cfg = SamplerConfig(global_batch_pairs=64, token_budget=4096)
    s = PairSampler(lengths, cfg, world_size=8, rank=0, seed=0)
    best = math.inf
    for epoch in range(2):
        start = time.perf_counter()
        s.plan_epoch(epoch)
        best = min(best, time.perf_counter() - start)
    assert best < 2.0, f"plan_epoch took {best:.2f}s"


# --- properties ------------------------------------------------------------------------------


@st.composite
def setups(draw):
    """(lengths, config, world_size, seed, epoch) over the ranges the trainer meets."""
    lengths = draw(st.lists(st.integers(1, 512), min_size=0, max_size=120))
    mode = draw(st.sampled_from(["token_budget", "fixed"]))
    longest = max(lengths, default=1)
    if mode == "token_budget":
        budget_kw = dict(
            token_budget=draw(st.integers(longest, longest + 2048)),
            pairs_per_micro=draw(st.none() | st.integers(1, 16)),
        )
    else:
        budget_kw = dict(pairs_per_micro=draw(st.integers(1, 16)))
    cfg = SamplerConfig(
        global_batch_pairs=draw(st.integers(1, 40)),
        mode=mode,
        shuffle=draw(st.booleans()),
        length_grouping=draw(st.booleans()),
        group_size=draw(st.integers(1, 4)),
        drop_last=draw(st.booleans()),
        **budget_kw,
    )
    return lengths, cfg, draw(st.integers(1, 4)), draw(st.integers(0, 2**32)), draw(st.integers(0, 5))


@PROPERTY
@given(setups())
def test_plan_properties(setup) -> None:
    lengths, cfg, world_size, seed, epoch = setup
    s = PairSampler(lengths, cfg, world_size=world_size, rank=0, seed=seed)
    plan = s.plan_epoch(epoch)
    n, g = len(lengths), cfg.global_batch_pairs
    assert len(plan) == s.steps_per_epoch() == (n // g if cfg.drop_last else math.ceil(n / g))

    seen: list[int] = []
    for k, step in enumerate(plan):
        check_step_shape(step, lengths, world_size, cfg.token_budget, cfg.pairs_per_micro)
        pairs = [i for rank in step for mb in rank for i in mb]
        assert len(pairs) == (g if k < n // g else n % g)  # a full global batch, or the final partial one
        if not cfg.shuffle and not cfg.length_grouping:
            assert sorted(pairs) == list(range(k * g, min(n, (k + 1) * g)))
        seen += pairs
    assert len(seen) == len(set(seen))  # no pair split or repeated
    if cfg.drop_last:
        assert len(seen) == n // g * g
        full = PairSampler(
            lengths, dataclasses.replace(cfg, drop_last=False), world_size=world_size, rank=0, seed=seed
        ).plan_epoch(epoch)
        assert plan == full[: n // g]  # only the final partial global batch is missing
    else:
        assert sorted(seen) == list(range(n))

    # deterministic, independent of rank
    for rank in range(world_size):
        assert PairSampler(lengths, cfg, world_size=world_size, rank=rank, seed=seed).plan_epoch(epoch) == plan


@PROPERTY
@given(setups(), st.data())
def test_exact_resume(setup, data) -> None:
    lengths, cfg, world_size, seed, epoch = setup
    rank = data.draw(st.integers(0, world_size - 1))
    a = PairSampler(lengths, cfg, world_size=world_size, rank=rank, seed=seed)
    a.set_epoch(epoch)
    k = data.draw(st.integers(0, len(a)))
    it = iter(a)
    consumed = [next(it) for _ in range(k)]
    state = a.state_dict()
    assert state == {"epoch": epoch, "step": k}
    remaining = list(it)

    b = PairSampler(lengths, cfg, world_size=world_size, rank=rank, seed=seed)
    b.load_state_dict(state)
    assert len(b) == len(remaining)
    assert list(b) == remaining
    assert consumed + remaining == [step[rank] for step in a.plan_epoch(epoch)]


@PROPERTY
@given(st.lists(st.integers(1, 512), min_size=20, max_size=80), st.integers(0, 2**32), st.integers(0, 5))
def test_epochs_differ_when_shuffled(lengths, seed, epoch) -> None:
    cfg = SamplerConfig(global_batch_pairs=4, token_budget=1024)
    s = PairSampler(lengths, cfg, world_size=2, rank=0, seed=seed)
    assert s.plan_epoch(epoch) != s.plan_epoch(epoch + 1)
    assert s.plan_epoch(epoch) == s.plan_epoch(epoch)


@PROPERTY
@given(
    st.lists(st.integers(1, 512), min_size=0, max_size=150),
    st.integers(1, 4),
    st.one_of(st.none(), st.integers(0, 2048)),
    st.one_of(st.none(), st.integers(1, 16)),
)
def test_eval_shards_properties(lengths, world_size, extra_budget, ppm) -> None:
    budget = None if extra_budget is None else max(lengths, default=1) + extra_budget
    if budget is None and ppm is None:
        ppm = 4
    shards = eval_shards(lengths, world_size=world_size, token_budget=budget, pairs_per_micro=ppm)
    assert len(shards) == world_size
    seen = sorted(i for rank in shards for mb in rank for i in mb)
    assert seen == list(range(len(lengths)))  # every pair exactly once
    if lengths:
        check_step_shape(shards, lengths, world_size, budget, ppm)
    else:
        assert shards == [[] for _ in range(world_size)]
