"""rm_ds's own gradient reduction on ZeRO-0 fp32 (``dist.all_reduce_sum_``) against the sum computed in
one process: large tensors reduced in place one by one, the small ones through one flat copy, embedding
tables (row-sparse) by the rows that are non-zero on some rank only.

    PYTHONPATH=. python -m pytest tests/test_dist_grads.py -q
"""

from __future__ import annotations

import pytest
import torch

from tests.harness import run_distributed


def shapes() -> list[tuple[int, ...]]:
    from rm_ds.cluster.dist import GRAD_BUCKET_MIN

    return [(GRAD_BUCKET_MIN + 5,), (3,), (4, 7), (2, GRAD_BUCKET_MIN), (1,)]  # big and small, interleaved


def local(rank: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(s, generator=g) for s in shapes()]


def reduce_worker() -> list[torch.Tensor]:
    from rm_ds.cluster import dist

    info = dist.current()
    ts = local(info.rank)
    ptrs = [t.data_ptr() for t in ts]
    dist.all_reduce_sum_(ts)
    assert [t.data_ptr() for t in ts] == ptrs, "the gradients must be reduced in place"
    return ts


@pytest.mark.slow
@pytest.mark.cluster
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
    from rm_ds.cluster import dist

    dist.all_reduce_sum_(ts)  # no process group: nothing to reduce with
    assert all(torch.equal(a, b) for a, b in zip(ts, before, strict=True))


VOCAB, DIM = 4096, 64  # an embedding-table gradient: 262,144 elements (GRAD_BUCKET_MIN)


def sparse_local(rank: int, dense_share: float) -> list[torch.Tensor]:
    """[bias, table A (few rows per rank, partly the same rows), table B (``dense_share`` of rows touched)]."""
    g = torch.Generator().manual_seed(7 + rank)
    a = torch.zeros(VOCAB, DIM)
    rows = torch.cat([torch.tensor([0, 5, 4095]), torch.randint(0, VOCAB, (40,), generator=g)])  # 0/5/4095 shared
    a[rows] = torch.randn(len(rows), DIM, generator=g)
    a[100 + rank] = 0.0  # a row that is zero here but maybe not on another rank
    b = torch.zeros(VOCAB, DIM)
    b[torch.randperm(VOCAB, generator=g)[: int(dense_share * VOCAB)]] = torch.randn(int(dense_share * VOCAB), DIM,
                                                                                 generator=g)
    return [torch.randn(3, generator=g), a, b]


def sparse_worker(dense_share: float) -> tuple[list[torch.Tensor], int]:
    import torch.distributed as tdist

    from rm_ds.cluster import dist

    info = dist.current()
    ts = sparse_local(info.rank, dense_share)
    ptrs = [t.data_ptr() for t in ts]
    sent = []
    real = tdist.all_reduce
    tdist.all_reduce = lambda t, **kw: (sent.append(t.numel()), real(t, **kw))[1]
    try:
        dist.all_reduce_sum_(ts, row_sparse=(1, 2))
    finally:
        tdist.all_reduce = real
    assert [t.data_ptr() for t in ts] == ptrs, "the gradients must be reduced in place"
    return ts, sum(sent)


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize("world,dense_share", [(2, 0.01), (3, 0.01), (2, 0.8)])
def test_row_sparse_tables_reduced_exactly_by_their_rows(world, dense_share):
    results = run_distributed(sparse_worker, world_size=world, args=(dense_share,))
    want = [sum(parts) for parts in zip(*(sparse_local(r, dense_share) for r in range(world)))]
    for got, sent in results:
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
        masks = 2 * VOCAB  # the row masks of both tables, one collective
        touched_a = int(want[0 + 1].ne(0).any(1).sum())
        table_b = (int(want[2].ne(0).any(1).sum()) * DIM) if dense_share <= 0.5 else VOCAB * DIM
        # table A went as its union of touched rows; table B row-wise only while under SPARSE_ROWS_MAX
        assert sent == masks + touched_a * DIM + table_b + 3, (sent, touched_a)
