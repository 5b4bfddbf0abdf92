"""Bradley-Terry pairwise loss, returned per pair; reduction happens once, in ``rm_ds.train.engine``.

For pair i with rewards r_c (chosen) and r_r (rejected)::

    z_i    = beta * (r_c - r_r) - margin_i
    q_i    = (1 - eps) * p_i + eps * (1 - p_i)
    loss_i = weight_i * (q_i * -log sigmoid(z_i) + (1 - q_i) * -log sigmoid(-z_i))
             + lambda * (r_c^2 + r_r^2) / 2

``p_i`` is the pair's preference probability (``batch["pref"]``; 1 = chosen preferred, the hard
label, 0.5 = a tie; absent means 1), ``eps`` label smoothing (the probability the label is flipped)
and ``lambda`` the reward-magnitude regulariser, which keeps rewards centred near zero (it is added:
it penalises). At p = 1 this is exactly the plain Bradley-Terry loss ``-log sigmoid(z)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rm_ds.config import LossConfig, check_label_smoothing

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
    pref: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair loss vector of shape (B,) for chosen/rejected rewards of shape (B,).

    -log sigmoid(z) is computed as softplus(-z), stable for large |z|. ``pref`` (B,) is the soft
    label p; None is p = 1 everywhere (and computes exactly what it always did).
    """
    if chosen.shape != rejected.shape or chosen.dim() != 1:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must be equal 1-D shapes")
    check_label_smoothing(label_smoothing, key="label_smoothing")
    z = beta * (chosen - rejected) - margin
    if pref is None:
        nll = F.softplus(-z)
        if label_smoothing:
            nll = (1.0 - label_smoothing) * nll + label_smoothing * F.softplus(z)
    else:
        q = pref.to(z.dtype)
        if label_smoothing:
            q = (1.0 - label_smoothing) * q + label_smoothing * (1.0 - q)
        nll = q * F.softplus(-z) + (1.0 - q) * F.softplus(z)
    loss = weight * nll
    if reward_l2:
        loss = loss + reward_l2 * 0.5 * (chosen.square() + rejected.square())
    return loss


def make_loss_fn(cfg: LossConfig) -> LossFn:
    """The configured loss as ``loss_fn(chosen, rejected, batch)``, reading ``batch["margin"]``,
    ``batch["weight"]`` and ``batch["pref"]`` (one value per pair; no ``pref``: p = 1); the engine
    calls it and never names a loss."""

    def loss_fn(chosen: torch.Tensor, rejected: torch.Tensor, batch: dict) -> torch.Tensor:
        if chosen.dim() == 2:  # several objectives: a (B, K) head
            return multi_objective_loss(chosen, rejected, prefs=batch.get("prefs"), labelled=batch.get("labelled"),
                                        beta=cfg.beta, margin=batch["margin"], label_smoothing=cfg.label_smoothing,
                                        weight=batch["weight"], reward_l2=cfg.reward_l2)
        return bt_loss(chosen, rejected, beta=cfg.beta, margin=batch["margin"], label_smoothing=cfg.label_smoothing,
                       weight=batch["weight"], reward_l2=cfg.reward_l2, pref=batch.get("pref"))

    return loss_fn


def multi_objective_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    prefs: torch.Tensor | None,
    labelled: torch.Tensor | None,
    beta: float = 1.0,
    margin: torch.Tensor | float = 0.0,
    label_smoothing: float = 0.0,
    weight: torch.Tensor | float = 1.0,
    reward_l2: float = 0.0,
) -> torch.Tensor:
    """Several objectives: rewards (B, K), ``prefs`` p (B, K), ``labelled`` 0/1 (B, K) -> per-pair (B,).

    Entry (i, k) is the loss above with objective k's rewards and p; unlabelled entries count zero,
    so pair i's value is the sum over the objectives it is labelled for. The engine divides the sum
    over all pairs by the global count of labelled entries (``batch["n_terms"]``), as it divides by
    the pair count with one objective. ``margin`` and ``weight`` are per pair (B,), shared by its
    objectives. ``prefs``/``labelled`` None (a filler batch) is nothing labelled.

    Layout, B = 2 pairs, K = 2 objectives, pair 1 labelled only for objective 0::

        labelled = [[1, 1],        loss = [l00 + l01,
                    [1, 0]]                l10      ]     count = 3
    """
    if chosen.shape != rejected.shape or chosen.dim() != 2:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must be equal (B, K)")
    if labelled is None:
        labelled = torch.zeros_like(chosen)
        prefs = torch.ones_like(chosen)

    def per_pair(x: torch.Tensor | float) -> torch.Tensor | float:
        return x[:, None] if isinstance(x, torch.Tensor) and x.dim() == 1 else x

    z = beta * (chosen - rejected) - per_pair(margin)
    q = prefs.to(z.dtype)
    if label_smoothing:
        q = (1.0 - label_smoothing) * q + label_smoothing * (1.0 - q)
    loss = per_pair(weight) * (q * F.softplus(-z) + (1.0 - q) * F.softplus(z))
    if reward_l2:
        loss = loss + reward_l2 * 0.5 * (chosen.square() + rejected.square())
    return (loss * labelled.to(loss.dtype)).sum(dim=1)
