"""Training steps run in train mode (dropout active); eval scoring runs in eval mode (deterministic).

    PYTHONPATH=. python -m pytest tests/test_train_mode.py -q

``from_pretrained`` returns a model in eval mode, so a trainer that never calls ``.train()`` trains
with dropout silently off whatever ``model.dropout`` says. Here the same micro-batch goes through one
optimizer step twice (two micro-steps: the weights do not change between the two forwards): with
dropout 0.5 the two forwards must differ, with dropout 0 they must agree. Scoring the batch twice
must agree, and the step after scoring must be back in train mode. Two ranks fed the same batch
must draw different dropout masks (each rank its own stream).
"""

from __future__ import annotations

import pytest
import torch

from tests.harness import make_tiny_setup, run_distributed, tiny_run


def overrides(root, dropout: float) -> list[str]:
    return tiny_run(root, root / "run", f"model.dropout={dropout}", "model.attn_implementation=eager",
                    "train.global_batch_pairs=4", "train.micro_batching=fixed", "train.pairs_per_micro=4",
                    "train.max_steps=2", "train.lr=1e-3", "deepspeed.config=zero2", "logging.progress=false",
                    "train.export=false")


def worker(root) -> dict:
    """The engine as ``setup`` leaves it: a train step, scoring, another train step (forwards recorded)."""
    from rm_ds.cluster import dist
    from rm_ds.config import load_config
    from rm_ds.train.engine import score_batches, train_step
    from rm_ds.data.dataset import rows_at
    from rm_ds.train.recipe import setup

    out = {}
    for dropout in (0.5, 0.0):
        cfg = load_config(None, overrides(root, dropout))
        tr = setup(cfg, dist.current())
        logits: list[torch.Tensor] = []
        tr.engine.module.register_forward_hook(lambda _m, _i, o, out=logits: out.append(o.logits.detach().clone()))
        batch = tr.collate(rows_at(tr.data.train, [0, 1, 2, 3]))
        train_step(tr.engine, [batch, batch], loss_fn=tr.loss_fn, world_size=2)
        score_batches(tr.engine, [batch, batch])
        train_step(tr.engine, [batch, batch], loss_fn=tr.loss_fn, world_size=2)
        out[dropout] = logits
    return out


@pytest.mark.slow
@pytest.mark.cluster
def test_dropout_active_in_training_steps_only(tmp_path):
    root = make_tiny_setup(tmp_path, n_pairs=8)
    ranks = run_distributed(worker, world_size=2, args=(root,))
    out = ranks[0]
    train1, train2, score1, score2, train3, train4 = out[0.5]
    assert not torch.allclose(train1, train2), "dropout 0.5: two forwards of one batch in a training step agree"
    assert not torch.allclose(train3, train4), "the training step after scoring is not in train mode"
    torch.testing.assert_close(score1, score2, rtol=0, atol=0)  # eval mode: no dropout when scoring
    plain = out[0.0]
    torch.testing.assert_close(plain[0], plain[1], rtol=0, atol=0)  # dropout 0: the forwards agree
    torch.testing.assert_close(plain[2], plain[3], rtol=0, atol=0)
    assert not torch.allclose(out[0.5][0], ranks[1][0.5][0]), "both ranks drew the same dropout masks"
    torch.testing.assert_close(plain[0], ranks[1][0.0][0], rtol=0, atol=0)  # same weights on both ranks



def bf16_mixed_worker(root) -> dict:
    """One bf16-mixed training step and one scoring pass, with the dtypes a Linear layer produced."""
    from rm_ds.cluster import dist
    from rm_ds.config import load_config
    from rm_ds.data.dataset import rows_at
    from rm_ds.train.engine import score_batches, train_step
    from rm_ds.model import rewards
    from rm_ds.train.recipe import setup

    cfg = load_config(None, [*overrides(root, 0.0), "model.dtype=bf16-mixed", "deepspeed.config=zero0"])
    tr = setup(cfg, dist.current())
    module = tr.engine.module
    linear = next(m for m in module.modules() if isinstance(m, torch.nn.Linear))
    seen: list[torch.dtype] = []
    linear.register_forward_hook(lambda _m, _i, o: seen.append(o.dtype))
    batch = tr.collate(rows_at(tr.data.train, [0, 1, 2, 3]))
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    for _ in range(2):  # the first step's learning rate is 0 (warm-up)
        stats = train_step(tr.engine, [batch], loss_fn=tr.loss_fn, world_size=1, autocast=torch.bfloat16,
                           max_grad_norm=cfg.train.max_grad_norm)
    out = {"train_dtypes": sorted({str(d) for d in seen}), "grad_norm": stats.grad_norm,
           "param_dtypes": sorted({str(p.dtype) for p in module.parameters()}),
           "moved": max(float((p.detach() - before[n]).abs().max()) for n, p in module.named_parameters())}
    seen.clear()
    (chosen, rejected), = score_batches(tr.engine, [batch])
    out["score_dtypes"] = sorted({str(d) for d in seen})
    with torch.no_grad():
        module.eval()
        want = rewards(module, batch)  # a plain fp32 forward, no autocast
    out["scores"], out["plain"] = (chosen, rejected), want
    return out


@pytest.mark.slow
def test_bf16_mixed_trains_under_autocast_and_scores_in_fp32(tmp_path):
    """``model.dtype=bf16-mixed``: the weights stay fp32, a training forward's matmuls run in bf16 and the
    step moves the weights (clipped, its norm kept); scoring (eval, export) is the plain fp32 forward."""
    root = make_tiny_setup(tmp_path, n_pairs=8)
    out, = run_distributed(bf16_mixed_worker, world_size=1, args=(root,))
    assert out["train_dtypes"] == ["torch.bfloat16"]
    assert out["param_dtypes"] == ["torch.float32"]
    assert out["grad_norm"] is not None and out["grad_norm"] > 0 and out["moved"] > 0
    assert out["score_dtypes"] == ["torch.float32"]
    for got, want in zip(out["scores"], out["plain"], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
