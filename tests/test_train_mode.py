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

import torch

from tests.harness import make_tiny_setup, run_distributed


def overrides(root, dropout: float) -> list[str]:
    return [f"model.name_or_path={root / 'model'}", f"model.dropout={dropout}", "model.attn_implementation=eager",
            f"data.train_path={root / 'pairs.jsonl'}", "data.eval_path=null", "data.max_length=64",
            "train.global_batch_pairs=4", "train.micro_batching=fixed", "train.pairs_per_micro=4",
            "train.max_steps=2", "train.lr=1e-3", "deepspeed.config=zero2", f"logging.run_dir={root / 'run'}",
            "logging.progress=false", "logging.tensorboard=false", "train.export=false"]


def worker(root) -> dict:
    """The engine as ``setup`` leaves it: a train step, scoring, another train step (forwards recorded)."""
    from rm_ds import dist
    from rm_ds.config import load_config
    from rm_ds.engine import score_batches, train_step
    from rm_ds.dataset import rows_at
    from rm_ds.train import setup

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
