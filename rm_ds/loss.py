"""Bradley-Terry pairwise loss, returned per pair; reduction happens once, in ``rm_ds.engine``.

For pair i with rewards r_c (chosen) and r_r (rejected)::

    z_i    = beta * (r_c - r_r) - margin_i
    loss_i = weight_i * ((1 - eps) * -log sigmoid(z_i) + eps * -log sigmoid(-z_i))
             + lambda * (r_c^2 + r_r^2) / 2

``eps`` is label smoothing (the probability the preference label is flipped) and ``lambda`` the
reward-magnitude regulariser, which keeps rewards centred near zero (it is added: it penalises).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rm_ds.config import LossConfig

LossFn = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]
"""``loss_fn(chosen, rejected, batch) -> per-pair loss (B,)``; per-pair inputs come from the collated batch."""


def bt_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    beta: float = 1.0,
    margin: torch.Tensor | float = 0.0,
    label_smoothing: float = 0.0,
    weight: torch.Tensor | float = 1.0,
    reward_l2: float = 0.0,
) -> torch.Tensor:
    """Per-pair loss vector of shape (B,) for chosen/rejected rewards of shape (B,).

    -log sigmoid(z) is computed as softplus(-z), stable for large |z|.
    """
    if chosen.shape != rejected.shape or chosen.dim() != 1:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must be equal 1-D shapes")
    z = beta * (chosen - rejected) - margin
    nll = F.softplus(-z)
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll + label_smoothing * F.softplus(z)
    loss = weight * nll
    if reward_l2:
        loss = loss + reward_l2 * 0.5 * (chosen.square() + rejected.square())
    return loss


def make_loss_fn(cfg: LossConfig) -> LossFn:
    """The configured loss as ``loss_fn(chosen, rejected, batch)``, reading ``batch["margin"]`` and
    ``batch["weight"]`` (one value per pair); the engine calls it and never names a loss."""

    def loss_fn(chosen: torch.Tensor, rejected: torch.Tensor, batch: dict) -> torch.Tensor:
        return bt_loss(chosen, rejected, beta=cfg.beta, margin=batch["margin"], label_smoothing=cfg.label_smoothing,
                       weight=batch["weight"], reward_l2=cfg.reward_l2)

    return loss_fn
