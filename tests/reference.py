"""The single-process reference that DeepSpeed runs are compared with: plain PyTorch, one process.

    ref = load_reference(overrides)                 # config, tokenizer, pad id, train split, model
    trainer = ReferenceTrainer(ref.model, ref.cfg.train)
    for step_plan in plan:                          # per step: each micro-batch's share of the step's loss
        trainer.step(micro_batches, lambda mb: per_pair_loss(mb).sum() / n_pairs)

``ReferenceTrainer`` is AdamW with the run's betas, eps, weight decay and lr schedule, a backward per
micro-batch, grad-norm clipping and one optimizer step: what a DeepSpeed step should equal when the
loss is divided by the global count once. Used by tests/test_dist_parity.py and tests/test_objectives.py,
and by bench/throughput.py (``--engine torch``, run from a checkout: the repo root is on its sys.path).
It lives with the tests, not in rm_ds: the product trains only through DeepSpeed, and this is the
independent computation that checks it.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from tests.harness import tiny_run


def parity_run(root, run_dir, *extra: str, steps: int, token_budget: int = 96) -> list[str]:
    """``tiny_run`` overrides for a run compared with the reference: dropout off, 11 pairs a step in
    token-budget micro-batches (uneven per rank), lr 2e-3 with linear warm-up and decay, clip 1.0, seed 3."""
    return tiny_run(root, run_dir, "model.dropout=0.0", "train.global_batch_pairs=11",
                    "train.micro_batching=token_budget", f"train.token_budget={token_budget}",
                    f"train.max_steps={steps}", "train.lr=2e-3", "train.lr_scheduler=linear",
                    "train.warmup_ratio=0.25", "train.max_grad_norm=1.0", "train.seed=3", "logging.progress=false",
                    *extra)


def load_reference(ovr: list[str]) -> SimpleNamespace:
    """What the reference trains on, built as the product builds it from the same overrides:
    ``cfg``, ``tok``, ``pad`` (id), ``ds`` (the tokenised train split, the run's cache) and ``model``
    (initialised after ``torch.manual_seed(cfg.train.seed)``)."""
    from rm_ds.config import load_config
    from rm_ds.model import build_reward_model, load_tokenizer, pad_token_for
    from tests.harness import load_split

    cfg = load_config(None, ovr)
    torch.manual_seed(cfg.train.seed)
    tok = load_tokenizer(cfg.model.name_or_path)
    pad = pad_token_for(tok, cfg.model)
    ds, _ = load_split(cfg, tok, cfg.data.train_path, split="train", max_pairs=None)
    model = build_reward_model(cfg.model, pad_token_id=pad)
    return SimpleNamespace(cfg=cfg, tok=tok, pad=pad, ds=ds, model=model)


class ReferenceTrainer:
    """Plain torch AdamW around ``model``, configured from a ``TrainConfig``.

    ``total_steps`` (default ``train.max_steps``) sizes the lr schedule; warm-up is
    ``ceil(warmup_ratio * total_steps)`` steps, as in the product."""

    def __init__(self, model: torch.nn.Module, train, *, total_steps: int | None = None):
        from rm_ds.train.engine import transformers as _tf  # the transformers the engine uses

        self.model, self.max_grad_norm = model, train.max_grad_norm
        steps = train.max_steps if total_steps is None else total_steps
        self.opt = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=train.adam_betas, eps=train.adam_eps,
                                     weight_decay=train.weight_decay)
        self.sched = _tf.get_scheduler(train.lr_scheduler, self.opt,
                                       num_warmup_steps=math.ceil(train.warmup_ratio * steps),
                                       num_training_steps=steps)

    def step(self, micro_batches, loss_of) -> float:
        """One optimizer step: ``loss_of(mb)`` for each micro-batch is its share of the step's loss
        (already divided by the step's count), back-propagated at once; then clip, step, schedule,
        zero the gradients. Returns the step's loss (the sum of the shares)."""
        total = 0.0
        for mb in micro_batches:
            loss = loss_of(mb)
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad()
        return total

    def weights(self) -> dict[str, torch.Tensor]:
        """A copy of every parameter, by name."""
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}
