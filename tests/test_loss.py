"""Bradley-Terry loss: hand-worked values, per-pair shape, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from rm_ds.train.loss import bt_loss


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


@pytest.mark.parametrize("seed", range(5))
def test_torch_loss_and_numpy_metric_agree_on_random_inputs(seed):
    """``loss.bt_loss`` (training, torch) and ``metrics.bt_loss_per_pair`` (eval, numpy) are two
    implementations of one formula: the same per-pair values for random rewards, margins, weights,
    smoothing, beta and L2, large rewards included."""
    import numpy as np

    from rm_ds.eval.metrics import bt_loss_per_pair

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    c, r = rng.normal(0, 1 + 20 * seed, n), rng.normal(0, 3, n)
    kw = dict(beta=float(rng.uniform(0.1, 3)), label_smoothing=float(rng.uniform(0, 0.49)) if seed else 0.0,
              reward_l2=float(rng.uniform(0, 0.5)))
    margin, weight = rng.uniform(-1, 2, n), rng.uniform(0, 3, n)
    want = bt_loss_per_pair(c, r, margin=margin, weight=weight, **kw)
    got = bt_loss(torch.from_numpy(c), torch.from_numpy(r), margin=torch.from_numpy(margin),
                  weight=torch.from_numpy(weight), **kw)
    # float64 both; torch's softplus returns x itself above x = 20 (off by log1p(e^-20) ~ 2e-9)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.7])
def test_one_label_smoothing_rule_in_config_loss_and_metrics(eps):
    """Config, torch loss and numpy metric refuse the same out-of-range label smoothing."""
    import numpy as np

    from rm_ds.config import load_config
    from rm_ds.errors import ConfigError
    from rm_ds.eval.metrics import bt_loss_per_pair

    with pytest.raises(ConfigError, match="loss.label_smoothing: must be in"):
        load_config(None, [f"loss.label_smoothing={eps}"])
    with pytest.raises(ValueError, match=r"label_smoothing: must be in \[0, 0.5\)"):
        bt_loss(torch.zeros(2), torch.zeros(2), label_smoothing=eps)
    with pytest.raises(ValueError, match=r"label_smoothing: must be in \[0, 0.5\)"):
        bt_loss_per_pair(np.zeros(2), np.zeros(2), label_smoothing=eps)
    assert bt_loss(torch.zeros(1), torch.zeros(1), label_smoothing=0.49).item() == pytest.approx(math.log(2))
