"""rm_ds's own gradient reduction on ZeRO-0 fp32 (``dist.all_reduce_sum_``) against the sum computed in
one process: large tensors reduced in place one by one, the small ones through one flat copy.

    PYTHONPATH=. python -m pytest tests/test_dist_grads.py -q
"""

from __future__ import annotations

import pytest
import torch

from tests.harness import run_distributed


def shapes() -> list[tuple[int, ...]]:
    from rm_ds.dist import GRAD_BUCKET_MIN

    return [(GRAD_BUCKET_MIN + 5,), (3,), (4, 7), (2, GRAD_BUCKET_MIN), (1,)]  # big and small, interleaved


def local(rank: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(s, generator=g) for s in shapes()]


def reduce_worker() -> list[torch.Tensor]:
    from rm_ds import dist

    info = dist.current()
    ts = local(info.rank)
    ptrs = [t.data_ptr() for t in ts]
    dist.all_reduce_sum_(ts)
    assert [t.data_ptr() for t in ts] == ptrs, "the gradients must be reduced in place"
    return ts


@pytest.mark.parametrize("world", [2, 3])
def test_sum_over_ranks_in_place(world):
    results = run_distributed(reduce_worker, world_size=world)
    want = [sum(parts) for parts in zip(*(local(r) for r in range(world)))]
    for got in results:  # every rank holds the same sums
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_one_process_leaves_tensors_alone():
    ts = local(0)
    before = [t.clone() for t in ts]
    from rm_ds import dist

    dist.all_reduce_sum_(ts)  # no process group: nothing to reduce with
    assert all(torch.equal(a, b) for a, b in zip(ts, before, strict=True))
