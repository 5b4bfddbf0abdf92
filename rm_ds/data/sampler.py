"""Pair-atomic distributed sampler: which pairs every rank runs at every micro-step.

A preference pair (chosen + rejected) is the atomic unit: both rows of a pair always land on the
same rank in the same micro-batch.  The sampler only sees one int per pair, the padded length the
pair needs (``max(len(chosen), len(rejected))``, or the length of a prefix-shared row; it does not
care which), and turns an epoch into a plan::

    plan = sampler.plan_epoch(epoch)          # list[StepPlan], one per optimizer step
    plan[step][rank][micro_step] -> [pair index, ...]      ([] = filler micro-batch)

The plan is a pure function of ``(lengths, config, world_size, seed, epoch)``: every rank builds
the same full plan with no communication and runs ``plan[step][rank]``.  Within one step every rank
has the same number of micro-steps (ZeRO-3 needs every rank in every forward); that number may
change from step to step.  A rank with nothing to do at a micro-step gets ``[]``; the caller must
still run a forward/backward on a dummy row with zero loss weight.  Fillers only appear when the
step has fewer pairs than ``world_size * micro_steps`` (e.g. a global batch smaller than the world),
always in the last micro-step of the step, at most one per rank.

The shuffle uses ``numpy.random.default_rng([seed, epoch])``: resume with the same numpy version
(and the same lengths, config, seed and world size), since ``state_dict`` only stores
``{"epoch", "step"}``.

How one epoch is built:

1. order: a seeded permutation of all pairs (``shuffle``), else ``0..n-1``.  The last ``n % G``
   pairs of that order (``G = global_batch_pairs``) form the final partial global batch, placed
   last, or dropped with ``drop_last``.
2. ``length_grouping``: the full part is cut into mega-batches of ``group_size * G`` pairs, each
   sorted longest first, then cut into global batches whose order is shuffled (``shuffle``).
3. every global batch is sorted longest first (free: its pairs form one optimizer step anyway)
   and greedily packed under the budget; that fixes the fewest micro-steps per rank.  It is then
   re-cut into exactly ``min(world_size * micro_steps, pairs)`` micro-batches, as even as possible
   in padded tokens ``len(mb) * max length`` (so no filler unless the step has too few pairs),
   or in summed lengths with ``cost="sum"`` (pairs packed into rows with no padding),
   and dealt out one micro-step at a time, the largest micro-batch to the least loaded rank.

Worked example: 6 pairs, 4 pairs per step, 2 ranks, at most 8 padded tokens per micro-batch.

>>> cfg = SamplerConfig(global_batch_pairs=4, token_budget=8, shuffle=False, length_grouping=False)
>>> sampler = PairSampler([5, 3, 8, 2, 7, 4], cfg, world_size=2, rank=0, seed=0)
>>> plan = sampler.plan_epoch(0)

Step 0 is pairs 0-3, longest first 2(8) 0(5) 1(3) 3(2); packed [2] [0] [1, 3] (2 * 3 <= 8) is 3
micro-batches, so 2 micro-steps per rank, so [1, 3] is split to fill the 4 slots without a filler.
Micro-step 0 deals [2] (8 tokens) to rank 0 and [0] (5) to rank 1; micro-step 1 deals [1] (3) to
the less loaded rank 1 and [3] (2) to rank 0:

>>> plan[0]            # [rank][micro_step]
[[[2], [3]], [[0], [1]]]
>>> plan[1]            # final partial step: pairs 4(7) and 5(4), one micro-step
[[[4]], [[5]]]
>>> for step in sampler:                   # rank 0's part, step by step
...     print(step, sampler.state_dict())
[[2], [3]] {'epoch': 0, 'step': 1}
[[4]] {'epoch': 0, 'step': 2}

A step with 3 pairs on 2 ranks where no two pairs fit together needs one filler:

>>> cfg = SamplerConfig(global_batch_pairs=3, token_budget=4, shuffle=False, length_grouping=False)
>>> PairSampler([4, 4, 4], cfg, world_size=2, rank=0, seed=0).plan_epoch(0)
[[[[0], [2]], [[1], []]]]
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["PairSampler", "SamplerConfig", "StepPlan", "eval_shards"]

StepPlan = list[list[list[int]]]
"""One optimizer step: ``[rank][micro_step] -> pair indices``; ``[]`` is a filler micro-batch."""


@dataclass(frozen=True)
class SamplerConfig:
    """How pairs are grouped into optimizer steps and micro-batches."""

    global_batch_pairs: int
    """Pairs per optimizer step, summed over all ranks."""
    mode: Literal["token_budget", "fixed"] = "token_budget"
    """``token_budget``: cap padded tokens per micro-batch; ``fixed``: cap pairs per micro-batch."""
    token_budget: int | None = None
    """token_budget mode (required): ``len(mb) * max(length in mb) <= token_budget``."""
    pairs_per_micro: int | None = None
    """fixed mode (required): at most this many pairs per micro-batch; token_budget mode
    (optional): an extra cap on pairs per micro-batch."""
    shuffle: bool = True
    """Seeded shuffle, different every epoch."""
    length_grouping: bool = True
    """Put similar lengths into the same global batch (mega-batch sort) to cut padding."""
    group_size: int = 50
    """Mega-batch = ``group_size`` global batches (only with ``length_grouping``)."""
    drop_last: bool = False
    """Drop the final partial global batch of an epoch (default: keep it, no pair lost)."""
    cost: Literal["padded", "sum"] = "padded"
    """token_budget mode: ``padded`` charges a micro-batch ``len(mb) * max(length)`` (rows padded to the
    longest); ``sum`` charges ``sum(length)`` (pairs packed into one row with no padding)."""

    def __post_init__(self) -> None:
        _require_positive_int("global_batch_pairs", self.global_batch_pairs)
        _require_positive_int("group_size", self.group_size)
        if self.mode not in ("token_budget", "fixed"):
            raise ValueError(f"mode must be 'token_budget' or 'fixed', got {self.mode!r}")
        if self.cost not in ("padded", "sum"):
            raise ValueError(f"cost must be 'padded' or 'sum', got {self.cost!r}")
        if self.mode == "token_budget":
            if self.token_budget is None:
                raise ValueError("token_budget is required when mode='token_budget'")
            _require_positive_int("token_budget", self.token_budget)
            if self.pairs_per_micro is not None:
                _require_positive_int("pairs_per_micro", self.pairs_per_micro)
        else:
            if self.pairs_per_micro is None:
                raise ValueError("pairs_per_micro is required when mode='fixed'")
            _require_positive_int("pairs_per_micro", self.pairs_per_micro)
            if self.token_budget is not None:
                raise ValueError("token_budget must be None when mode='fixed' (use mode='token_budget')")
        for name in ("shuffle", "length_grouping", "drop_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")


class PairSampler:
    """Per-epoch plan of pair indices for every rank; iterating yields this rank's part.

    Iteration yields, for each remaining optimizer step of the current epoch, this rank's
    micro-batches ``[micro_step] -> pair indices``.  ``state_dict()["step"]`` is advanced when a
    step is handed out, so a checkpoint taken after that step's optimizer update resumes after it.
    The epoch never advances by itself: call ``set_epoch`` (which also resets ``step`` to 0).
    """

    def __init__(
        self, lengths: Sequence[int], config: SamplerConfig, *, world_size: int, rank: int, seed: int
    ) -> None:
        _require_positive_int("world_size", world_size)
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        budget = config.token_budget if config.mode == "token_budget" else None
        self.lengths = _as_lengths(lengths, token_budget=budget)
        self.config = config
        self.world_size = world_size
        self.rank = rank
        self.seed = int(seed)
        self._sum_budget = budget if config.cost == "sum" else None
        self._caps = _micro_caps(self.lengths, token_budget=None if self._sum_budget else budget,
                                 pairs_per_micro=config.pairs_per_micro)
        self._epoch = 0
        self._step = 0
        self._cache: tuple[int, list[StepPlan]] | None = None

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch (the final partial one counts unless ``drop_last``)."""
        n, g = len(self.lengths), self.config.global_batch_pairs
        return n // g if self.config.drop_last else -(-n // g)

    def plan_epoch(self, epoch: int) -> list[StepPlan]:
        """The full plan of ``epoch`` for all ranks: ``[step][rank][micro_step] -> pair indices``."""
        _require_epoch(epoch)
        order, bounds = _epoch_order(self.lengths, self.config, seed=self.seed, epoch=epoch)
        lens = self.lengths[order].tolist()
        caps = self._caps[order].tolist()
        idx = order.tolist()
        return [
            _plan_batch(idx[a:b], lens[a:b], caps[a:b], world_size=self.world_size, sum_budget=self._sum_budget)
            for a, b in itertools.pairwise(bounds)
        ]

    def set_epoch(self, epoch: int) -> None:
        """Move to the start of ``epoch``."""
        _require_epoch(epoch)
        self._epoch, self._step = epoch, 0

    def state_dict(self) -> dict:
        """``{"epoch": e, "step": k}``: k optimizer steps of epoch e were already handed out."""
        return {"epoch": self._epoch, "step": self._step}

    def load_state_dict(self, state: dict) -> None:
        """Resume exactly where ``state_dict()`` was taken (same lengths, config, seed, world size)."""
        epoch, step = state["epoch"], state["step"]
        _require_epoch(epoch)
        if not isinstance(step, int) or not 0 <= step <= self.steps_per_epoch():
            raise ValueError(f"step must be an int in [0, {self.steps_per_epoch()}], got {step!r}")
        self._epoch, self._step = epoch, step

    def __iter__(self) -> Iterator[list[list[int]]]:
        while True:
            plan = self._current_plan()
            if self._step >= len(plan):
                return
            step = self._step
            self._step += 1  # counted when handed out: a checkpoint after this step resumes after it
            yield [list(micro) for micro in plan[step][self.rank]]

    def __len__(self) -> int:
        """Steps left in the current epoch."""
        return self.steps_per_epoch() - self._step

    def _current_plan(self) -> list[StepPlan]:
        if self._cache is None or self._cache[0] != self._epoch:
            self._cache = (self._epoch, self.plan_epoch(self._epoch))
        return self._cache[1]


def eval_shards(
    lengths: Sequence[int], *, world_size: int, token_budget: int | None, pairs_per_micro: int | None,
    cost: Literal["padded", "sum"] = "padded",
) -> list[list[list[int]]]:
    """Evaluation plan ``[rank][micro_step] -> pair indices``: every pair exactly once, no shuffle.

    Every rank gets the same number of micro-batches (``[]`` fillers where a rank has nothing,
    only in the last micro-step); shards may hold different numbers of pairs.  Pairs are sorted
    longest first, so the first micro-step is the heaviest.  Both caps apply when both are given;
    at least one is required. ``cost`` is as in ``SamplerConfig`` (``sum`` for packed rows).

    >>> eval_shards([3, 9, 2, 9, 1], world_size=2, token_budget=9, pairs_per_micro=None)
    [[[1], [0, 2]], [[3], [4]]]
    """
    _require_positive_int("world_size", world_size)
    if token_budget is None and pairs_per_micro is None:
        raise ValueError("eval_shards needs token_budget or pairs_per_micro")
    if token_budget is not None:
        _require_positive_int("token_budget", token_budget)
    if pairs_per_micro is not None:
        _require_positive_int("pairs_per_micro", pairs_per_micro)
    if cost not in ("padded", "sum"):
        raise ValueError(f"cost must be 'padded' or 'sum', got {cost!r}")
    sum_budget = token_budget if cost == "sum" else None
    lens_arr = _as_lengths(lengths, token_budget=token_budget)
    caps_arr = _micro_caps(lens_arr, token_budget=None if sum_budget else token_budget, pairs_per_micro=pairs_per_micro)
    order = np.lexsort((np.arange(lens_arr.size), -lens_arr))
    return _plan_batch(order.tolist(), lens_arr[order].tolist(), caps_arr[order].tolist(), world_size=world_size,
                       sum_budget=sum_budget)


# --- helpers ---------------------------------------------------------------------------------


def _epoch_order(
    lengths: np.ndarray, config: SamplerConfig, *, seed: int, epoch: int
) -> tuple[np.ndarray, list[int]]:
    """All kept pairs in step order, each global batch longest first, and the step boundaries.

    ``order[bounds[k]:bounds[k + 1]]`` is global batch k.
    """
    n, g = lengths.size, config.global_batch_pairs
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n) if config.shuffle else np.arange(n)
    n_full = n // g
    full, tail = perm[: n_full * g], perm[n_full * g :]
    pos = np.arange(full.size)
    if config.length_grouping and n_full:
        # mega-batch sort (like HF LengthGroupedSampler), then shuffle whole global batches so
        # consecutive steps do not run from long to short inside a mega-batch
        full = full[np.lexsort((pos, -lengths[full], pos // (g * config.group_size)))]
        if config.shuffle:
            full = full.reshape(n_full, g)[rng.permutation(n_full)].reshape(-1)
    full = full[np.lexsort((pos, -lengths[full], pos // g))]  # longest first inside each batch
    bounds = list(range(0, full.size + 1, g))
    if tail.size and not config.drop_last:
        tail = tail[np.lexsort((np.arange(tail.size), -lengths[tail]))]
        full = np.concatenate([full, tail])
        bounds.append(n)
    return full, bounds


def _plan_batch(idx: list[int], lens: list[int], caps: list[int], *, world_size: int,
                sum_budget: int | None = None) -> StepPlan:
    """Pack one global batch (sorted longest first) and deal it out: ``[rank][micro_step]``.

    ``caps[i]`` is how many pairs fit in a micro-batch whose longest pair is ``idx[i]``.
    Micro-batches are slices ``(start, end)`` of the sorted batch, so the first pair is the longest.
    The greedy packing fixes the fewest micro-steps; the batch is then re-cut into exactly
    ``min(steps * world_size, n)`` micro-batches with the smallest possible largest one, so ranks
    and micro-steps carry similar padded tokens.
    With ``sum_budget`` a micro-batch costs the sum of its lengths (packed rows) instead of
    ``n_pairs * longest``, and must stay within ``sum_budget``.
    """
    n = len(idx)
    prefix = list(itertools.accumulate(lens, initial=0)) if sum_budget is not None else None

    def cost(m: tuple[int, int]) -> int:
        return prefix[m[1]] - prefix[m[0]] if prefix is not None else (m[1] - m[0]) * lens[m[0]]

    def pack(limit: int | None, stop: int | None = None) -> list[tuple[int, int]]:
        return _pack(lens, caps, limit=limit, stop=stop, prefix=prefix, sum_budget=sum_budget)

    micros = pack(None)
    steps = -(-len(micros) // world_size)  # fewest micro-steps that hold the budget packing
    target = min(steps * world_size, n)
    if target == n:  # one pair per micro-batch; lengths descending = costs descending
        micros = [(i, i + 1) for i in range(n)]
    else:
        # smallest per-micro token cap that still needs at most `target` micro-batches; every
        # pair pads to at least its own length, so the cap is at least the mean over `target`
        lo = max(lens[0], -(-sum(lens) // target))
        hi = max(cost(m) for m in micros)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(pack(mid, stop=target + 1)) <= target:
                hi = mid
            else:
                lo = mid + 1
        micros = _split_to(pack(lo), cost, target=target)
        micros.sort(key=lambda m: (-cost(m), m[0]))
    if world_size == 1:
        return [[idx[a:b] for a, b in micros]]

    plan: StepPlan = [[] for _ in range(world_size)]
    load = [0] * world_size
    by_load = list(range(world_size))
    for s in range(steps):
        if s:
            by_load.sort(key=lambda r: (load[r], r))
        chunk = micros[s * world_size : (s + 1) * world_size]
        for (a, b), r in zip(chunk, by_load, strict=False):  # the last micro-step may be short
            plan[r].append(idx[a:b])
            load[r] += cost((a, b))
        for r in by_load[len(chunk) :]:
            plan[r].append([])  # filler: only when every micro-batch is already a single pair
    return plan


def _pack(lens: list[int], caps: list[int], *, limit: int | None, stop: int | None = None,
          prefix: list[int] | None = None, sum_budget: int | None = None) -> list[tuple[int, int]]:
    """Greedy longest-first packing into slices ``(start, end)``; fewest micro-batches for sorted lens.

    With ``limit`` (>= ``lens[0]``) a micro-batch also keeps ``n_pairs * longest <= limit``.
    With ``prefix`` (prefix sums of ``lens``) the cost is the sum of lengths instead, kept within
    ``limit`` or else ``sum_budget`` (greedy is then the fewest contiguous slices).
    With ``stop`` it gives up after ``stop`` micro-batches (enough to tell "too many").
    """
    micros: list[tuple[int, int]] = []
    i, n = 0, len(lens)
    while i < n and len(micros) != stop:
        if prefix is not None:
            cap = sum_budget if limit is None else limit
            j = max(i + 1, min(n, i + caps[i], bisect.bisect_right(prefix, prefix[i] + cap) - 1))
            micros.append((i, j))
            i = j
            continue
        k = caps[i] if limit is None else min(caps[i], limit // lens[i])
        j = min(n, i + k)
        micros.append((i, j))
        i = j
    return micros


def _split_to(micros: list[tuple[int, int]], cost, *, target: int) -> list[tuple[int, int]]:
    """Halve the costliest multi-pair micro-batches until there are ``target`` of them.

    Halves keep the budget: fewer pairs, and the longest pair is no longer (and the sum is smaller).
    """
    if len(micros) >= target:
        return micros
    heap = [(-cost((a, b)), a - b, a, b) for a, b in micros if b - a > 1]
    done = [(a, b) for a, b in micros if b - a == 1]
    heapq.heapify(heap)
    while len(heap) + len(done) < target:
        _, _, a, b = heapq.heappop(heap)
        mid = a + (b - a + 1) // 2
        for lo, hi in ((a, mid), (mid, b)):
            if hi - lo > 1:
                heapq.heappush(heap, (-cost((lo, hi)), lo - hi, lo, hi))
            else:
                done.append((lo, hi))
    return [(a, b) for _, _, a, b in heap] + done


def _micro_caps(lengths: np.ndarray, *, token_budget: int | None, pairs_per_micro: int | None) -> np.ndarray:
    """Per pair: most pairs in a micro-batch whose longest pair is this one (at least 1)."""
    caps = np.full(lengths.size, np.iinfo(np.int64).max, dtype=np.int64)
    if token_budget is not None:
        caps = np.minimum(caps, token_budget // np.maximum(lengths, 1))
    if pairs_per_micro is not None:
        caps = np.minimum(caps, pairs_per_micro)
    return caps


def _as_lengths(lengths: Sequence[int], *, token_budget: int | None) -> np.ndarray:
    """Validate per-pair lengths: 1-D ints >= 1, none above ``token_budget``."""
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"lengths must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero(arr < 1)
    if bad.size:
        raise ValueError(f"pair {int(bad[0])} has length {int(arr[bad[0]])}; lengths must be >= 1")
    if token_budget is not None:
        bad = np.flatnonzero(arr > token_budget)
        if bad.size:
            raise ValueError(
                f"pair {int(bad[0])} has length {int(arr[bad[0]])} > token_budget {token_budget}"
                f" ({bad.size} pairs too long); raise token_budget or truncate/filter those pairs"
            )
    return arr


def _require_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _require_epoch(epoch: object) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
