"""Bradley-Terry loss: hand-worked values, per-pair shape, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from rm_ds.loss import bt_loss


def test_plain_bt_loss():
    """r_c - r_r = [0, 2, -1]  ->  -log sigmoid(z) = [log 2, log(1 + e^-2), log(1 + e^1)]
    = [0.693147, 0.126928, 1.313262]."""
    c = torch.tensor([1.0, 3.0, 0.0])
    r = torch.tensor([1.0, 1.0, 1.0])
    torch.testing.assert_close(bt_loss(c, r), torch.tensor([0.693147, 0.126928, 1.313262]), atol=1e-6, rtol=0)


def test_beta_margin_smoothing_weight_and_l2():
    """Pair: r_c = 1, r_r = -1, beta = 0.5, margin = 0.25 -> z = 0.5*2 - 0.25 = 0.75.
    softplus(-0.75) = log(1 + e^-0.75) = 0.386871; softplus(0.75) = 1.136871.
    eps = 0.1: 0.9*0.386871 + 0.1*1.136871 = 0.461871; weight 2 -> 0.923742.
    lambda = 0.2: + 0.2*(1 + 1)/2 = 0.2  ->  1.123742."""
    c, r = torch.tensor([1.0]), torch.tensor([-1.0])
    got = bt_loss(c, r, beta=0.5, margin=torch.tensor([0.25]), label_smoothing=0.1, weight=torch.tensor([2.0]),
                  reward_l2=0.2)
    assert got.item() == pytest.approx(1.123742, abs=1e-6)


def test_l2_penalises_magnitude_and_is_added():
    """The regulariser must raise the loss for large rewards (a sign slip would reward them)."""
    c, r = torch.tensor([5.0]), torch.tensor([4.0])
    assert bt_loss(c, r, reward_l2=0.1).item() == pytest.approx(math.log1p(math.exp(-1)) + 0.1 * (25 + 16) / 2)


def test_stable_for_large_margins_and_gradient_sign():
    c = torch.tensor([100.0, -100.0], requires_grad=True)
    r = torch.zeros(2)
    loss = bt_loss(c, r)
    assert torch.isfinite(loss).all() and loss[1].item() == pytest.approx(100.0)
    loss.sum().backward()
    assert c.grad[1] < 0  # raising the losing chosen reward lowers the loss


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        bt_loss(torch.zeros(2), torch.zeros(3))
