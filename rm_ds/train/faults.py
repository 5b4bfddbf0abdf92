"""Faults: a training step that went non-finite, and the test hook that kills a rank at a named point.

A step that went non-finite is detected on every rank at once, and the error says where it happened.

The step's loss is already summed over ranks and the grad norm is global, so a NaN or inf anywhere
shows on every rank in the same step (the one all-reduced flag costs no extra collective). Only
then do the ranks exchange where their own losses went bad, to name the rank, the micro-batch's
pair ids and the last good checkpoint. The loop stops before any checkpoint of that step is written.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from pathlib import Path

from rm_ds.cluster import dist


log = logging.getLogger(__name__)


def fault(point: str, n: int, *, barrier: bool = True) -> None:
    """Test hook: ``RM_DS_FAULT=<point>:<n>`` makes this rank SIGKILL itself there.

    Points: ``after_step`` (after step n and its checkpoint, if any), ``in_save`` (during the save at
    step n, after the shards are written but before the checkpoint is marked complete), both on every
    rank after a barrier; ``sample_batch`` (``rm-ds sample``: right after this rank's n-th batch is
    written, no barrier).
    """
    if os.environ.get("RM_DS_FAULT", "") != f"{point}:{n}":
        return
    if barrier:
        dist.barrier()
    log.warning("RM_DS_FAULT: killing rank at %s %d", point, n)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


class NonFiniteStep(RuntimeError):
    """The step's loss or gradient norm was NaN or inf; the message is the diagnosis."""


def step_is_finite(loss: float, grad_norm: float | None) -> bool:
    return math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))


def diagnose(*, step: int, loss: float, grad_norm: float | None, rank: int, local_micro: int | None,
             micro_pair_ids: list[list[str]], last_good: Path | None) -> NonFiniteStep:
    """The error to raise on every rank (a collective: call it on all ranks together)."""
    mine = None if local_micro is None else (rank, local_micro, micro_pair_ids[local_micro][:8],
                                             len(micro_pair_ids[local_micro]))
    culprits = [c for c in dist.gather_objects(mine) if c is not None]
    if culprits:
        where = "; ".join(f"rank {r}, micro-batch {k}: pair ids {ids}{' ...' if n > len(ids) else ''}"
                          for r, k, ids, n in culprits)
    else:
        where = "every rank's loss was finite, so the gradients overflowed in backward"
    good = (f"the last good checkpoint is {last_good} (resume=auto continues from it)" if last_good
            else "no checkpoint was written yet")
    return NonFiniteStep(f"step {step}: non-finite training step (loss {loss}, grad norm {grad_norm}): {where}; "
                         f"stopped before saving anything of this step: {good}. Check those pairs' margin/weight, "
                         f"or lower train.lr / raise train.warmup_ratio")
