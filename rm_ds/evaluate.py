"""ZeRO-aware evaluation: every rank scores its shard, per-pair scores are gathered, metrics once.

Each rank scores the pairs ``eval_shards`` gives it (every pair exactly once over all ranks, uneven
shards allowed, the same number of forwards on every rank so ZeRO-3's parameter gathers line up).
The per-pair records ``(pair index, r_chosen, r_rejected)`` are gathered
to every rank with a size exchange (gloo needs equal sizes), de-duplicated and ordered by pair
index, checked to cover the eval set exactly once, and only then turned into metrics — the same
numbers whatever the world size, never a mean of per-rank means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rm_ds import dist
from rm_ds.config import Config, eval_token_budget
from rm_ds.engine import score_batches
from rm_ds.metrics import pairwise_metrics
from rm_ds.packing import pair_lengths, sampler_cost
from rm_ds.sampler import eval_shards


@dataclass
class EvalScores:
    """Per-pair eval scores over the whole eval set, ordered by pair index."""

    index: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray


def shard_batches(ds, cfg: Config, *, rank: int, world_size: int, collate) -> list[tuple[list[int], dict]]:
    """This rank's eval micro-batches: (pair indices, collated batch); ``[]`` marks a filler forward."""
    budget = eval_token_budget(cfg)
    layout = dict(prefix_sharing=cfg.data.prefix_sharing, packing=cfg.data.packing)
    shards = eval_shards(pair_lengths(ds, **layout), world_size=world_size, token_budget=budget, pairs_per_micro=None,
                         cost=sampler_cost(packing=cfg.data.packing))
    return [(list(idx), collate([ds[int(i)] for i in idx])) for idx in shards[rank]]


def gather_scores(engine, ds, cfg: Config, *, rank: int, world_size: int, collate) -> EvalScores:
    batches = shard_batches(ds, cfg, rank=rank, world_size=world_size, collate=collate)
    scored = score_batches(engine, [b for _, b in batches])
    local = []
    for (idx, batch), (c, r) in zip(batches, scored):
        if not idx:  # filler forward: nothing to record
            continue
        local.append(torch.stack([torch.tensor(idx, dtype=torch.float64), c.double().cpu(), r.double().cpu()], dim=1))
    mine = torch.cat(local) if local else torch.zeros((0, 3), dtype=torch.float64)
    allrows = dist.gather_rows(mine).numpy()
    return merge_records(allrows, n_expected=len(ds))


def merge_records(rows: np.ndarray, *, n_expected: int) -> EvalScores:
    """De-duplicate by pair index, order, and check every pair is there exactly once."""
    index = rows[:, 0].astype(np.int64)
    uniq, first = np.unique(index, return_index=True)
    if len(uniq) != n_expected or len(index) != n_expected:
        raise RuntimeError(f"eval gather covered {len(uniq)} distinct pairs from {len(index)} records; "
                           f"expected each of {n_expected} exactly once")
    r = rows[first]
    return EvalScores(index=uniq, chosen=r[:, 1], rejected=r[:, 2])


def compute_metrics(scores: EvalScores, ds, cfg: Config, *, temperature: float | None = None) -> dict[str, float]:
    """All eval figures over every pair, once (pure numpy, rank-independent)."""
    cols = set(ds.column_names)
    sources = np.asarray(list(ds["source"]), dtype=object)[scores.index] if "source" in cols else None
    if sources is not None and not any(sources):  # no pair names a source
        sources = None
    margin = np.asarray(ds["margin"], dtype=np.float64)[scores.index] if "margin" in cols else 0.0
    weight = np.asarray(ds["weight"], dtype=np.float64)[scores.index] if "weight" in cols else None
    resp_len = lambda col: np.array([len(x) for x in ds[col]], dtype=np.float64)[scores.index]  # noqa: E731
    return pairwise_metrics(scores.chosen, scores.rejected, beta=cfg.loss.beta, margin=margin,
                            label_smoothing=cfg.loss.label_smoothing, weight=weight, reward_l2=cfg.loss.reward_l2,
                            n_bins=cfg.eval.ece_bins, thresholds=cfg.eval.thresholds, sources=sources,
                            chosen_len=resp_len("chosen_ids"), rejected_len=resp_len("rejected_ids"),
                            temperature=temperature)
