"""ZeRO-aware evaluation: every rank scores its shard, per-pair scores are gathered, metrics once.

Each rank scores the pairs ``eval_shards`` gives it (every pair exactly once over all ranks, uneven
shards allowed, the same number of forwards on every rank so ZeRO-3's parameter gathers line up).
The per-pair records ``(pair index, r_chosen, r_rejected)`` are gathered
to every rank with a size exchange (gloo needs equal sizes), de-duplicated and ordered by pair
index, checked to cover the eval set exactly once, and only then turned into metrics — the same
numbers whatever the world size, never a mean of per-rank means.
"""

from __future__ import annotations

import torch

from rm_ds.cluster import dist
from rm_ds.train.engine import score_batches
from rm_ds.eval.scores import EvalScores, merge_records
from rm_ds.data.packing import pair_lengths, sampler_cost
from rm_ds.data.sampler import eval_shards


def shard_batches(ds, *, rank: int, world_size: int, collate, token_budget: int, prefix_sharing: bool,
                  packing: bool) -> list[tuple[list[int], dict]]:
    """This rank's eval micro-batches: (pair indices, collated batch); ``[]`` marks a filler forward."""
    layout = dict(prefix_sharing=prefix_sharing, packing=packing)
    shards = eval_shards(pair_lengths(ds, **layout), world_size=world_size, token_budget=token_budget,
                         pairs_per_micro=None, cost=sampler_cost(packing=packing))
    return [(list(idx), collate([ds[int(i)] for i in idx])) for idx in shards[rank]]


def gather_scores(engine, ds, *, rank: int, world_size: int, collate, token_budget: int, prefix_sharing: bool,
                  packing: bool) -> EvalScores:
    """Every rank scores its shard; the per-pair records are gathered and merged on every rank."""
    batches = shard_batches(ds, rank=rank, world_size=world_size, collate=collate, token_budget=token_budget,
                            prefix_sharing=prefix_sharing, packing=packing)
    scored = score_batches(engine, [b for _, b in batches])
    local = []
    k = scored[0][0].shape[1] if scored and scored[0][0].dim() == 2 else 1  # rewards per response (objectives)
    for (idx, _batch), (c, r) in zip(batches, scored):
        if not idx:  # filler forward: nothing to record
            continue
        local.append(torch.cat([torch.tensor(idx, dtype=torch.float64)[:, None], c.double().cpu().reshape(len(idx), k),
                                r.double().cpu().reshape(len(idx), k)], dim=1))
    mine = torch.cat(local) if local else torch.zeros((0, 1 + 2 * k), dtype=torch.float64)
    allrows = dist.gather_rows(mine).numpy()
    return merge_records(allrows, n_expected=len(ds))
