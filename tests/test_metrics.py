# PYTHONPATH=. python -m pytest tests/test_metrics.py -q
"""Eval metrics against hand-worked examples and independent references (scikit-learn, numpy)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from rm_ds.eval import metrics
from rm_ds.eval.metrics import (
    TEMPERATURE_MAX,
    TEMPERATURE_MIN,
    bt_loss_per_pair,
    expected_calibration_error,
    fit_temperature,
    pairwise_metrics,
    reliability_bins,
    roc_auc,
)

LN2, LN3, LN9 = math.log(2), math.log(3), math.log(9)


# ----------------------------------------------------------------------------- loss


def test_loss_plain_bt():
    """z = r_c - r_r; loss = softplus(-z) = log(1 + exp(-z)).

    z = 0      -> log 2
    z = ln 3   -> log(1 + 1/3) = log(4/3)
    z = -ln 3  -> log(1 + 3)   = log 4
    """
    got = bt_loss_per_pair(np.array([1.0, LN3, 0.0]), np.array([1.0, 0.0, LN3]))
    np.testing.assert_allclose(got, [LN2, math.log(4 / 3), math.log(4)], rtol=1e-12)


def test_loss_beta_margin_smoothing_weight_l2():
    """Pair 0: r_c = 1, r_r = 0.5, beta = 2, margin = 1 -> z = 2 * 0.5 - 1 = 0.
        eps = 0.25: 0.75 * softplus(0) + 0.25 * softplus(0) = ln 2; weight 3 -> 3 ln 2.
        reward_l2 = 0.1: 0.1 * (1^2 + 0.5^2) / 2 = 0.0625.  loss = 3 ln 2 + 0.0625.
    Pair 1: r_c = ln 3 / 2 + 0.5, r_r = 0, beta = 2, margin = 1 -> z = ln 3 + 1 - 1 = ln 3.
        0.75 * softplus(-ln 3) + 0.25 * softplus(ln 3) = 0.75 ln(4/3) + 0.25 ln 4; weight 0.5.
        reward_l2: 0.1 * (r_c^2 + 0) / 2 = 0.05 * r_c^2.
    """
    rc1 = LN3 / 2 + 0.5
    got = bt_loss_per_pair(
        np.array([1.0, rc1]), np.array([0.5, 0.0]),
        beta=2.0, margin=1.0, label_smoothing=0.25, weight=np.array([3.0, 0.5]), reward_l2=0.1,
    )
    want = [3 * LN2 + 0.0625, 0.5 * (0.75 * math.log(4 / 3) + 0.25 * math.log(4)) + 0.05 * rc1**2]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_loss_per_pair_margin_array():
    """margin per pair: z = (r_c - r_r) - m = [1 - 1, 0 - (-ln 3)] = [0, ln 3]."""
    got = bt_loss_per_pair(np.array([1.0, 0.0]), np.array([0.0, 0.0]), margin=np.array([1.0, -LN3]))
    np.testing.assert_allclose(got, [LN2, math.log(4 / 3)], rtol=1e-12)


def test_loss_is_stable_at_extremes():
    got = bt_loss_per_pair(np.array([1000.0, -1000.0]), np.array([-1000.0, 1000.0]))
    np.testing.assert_allclose(got, [0.0, 2000.0], atol=1e-12)


def test_loss_rejects_bad_input():
    with pytest.raises(ValueError):
        bt_loss_per_pair(np.array([1.0, 2.0]), np.array([1.0]))
    with pytest.raises(ValueError):
        bt_loss_per_pair(np.array([np.nan]), np.array([1.0]))
    with pytest.raises(ValueError):
        bt_loss_per_pair(np.array([1.0]), np.array([0.0]), weight=np.array([1.0, 2.0]))


# ----------------------------------------------------------------------------- AUC


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_pos=st.integers(1, 300),
    n_neg=st.integers(1, 300),
    n_values=st.integers(1, 6),
)
def test_auc_matches_sklearn_with_heavy_ties(seed, n_pos, n_neg, n_values):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, n_values, n_pos).astype(np.float64)
    neg = rng.integers(0, n_values, n_neg).astype(np.float64) - rng.integers(0, 2)  # sometimes shifted
    if n_values == 1 and rng.random() < 0.5:
        neg = pos[:1].repeat(n_neg)  # every score tied
    want = roc_auc_score(np.r_[np.ones(n_pos), np.zeros(n_neg)], np.r_[pos, neg])
    assert roc_auc(pos, neg) == pytest.approx(want, abs=1e-12)


def test_auc_continuous_and_hand_cases():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.5, 1, 5000), rng.normal(0, 1, 4000)
    want = roc_auc_score(np.r_[np.ones(5000), np.zeros(4000)], np.r_[pos, neg])
    assert roc_auc(pos, neg) == pytest.approx(want, abs=1e-12)
    assert roc_auc([2.0], [1.0]) == 1.0
    assert roc_auc([1.0], [2.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5
    with pytest.raises(ValueError):
        roc_auc([], [1.0])


# ----------------------------------------------------------------------------- ECE / calibration


def test_ece_hand_worked():
    """n_bins = 4, bins [0,.25) [.25,.5) [.5,.75) [.75,1] (1.0 goes in the last bin).

    samples (p, y): (0.1, 0) (0.2, 1) | (0.3, 0) | (0.6, 1) (0.7, 1) | (0.8, 1) (1.0, 1) (0.9, 0)
    bin 0: n=2, mean p 0.15, mean y 0.5  -> gap 0.35
    bin 1: n=1, mean p 0.3,  mean y 0    -> gap 0.3
    bin 2: n=2, mean p 0.65, mean y 1    -> gap 0.35
    bin 3: n=3, mean p 0.9,  mean y 2/3  -> gap 0.9 - 2/3 = 7/30
    ECE = (2 * 0.35 + 1 * 0.3 + 2 * 0.35 + 3 * 7/30) / 8 = (0.7 + 0.3 + 0.7 + 0.7) / 8 = 0.3
    """
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 1.0, 0.9])
    y = np.array([0, 1, 0, 1, 1, 1, 1, 0], dtype=float)
    assert expected_calibration_error(p, y, n_bins=4) == pytest.approx(0.3, abs=1e-12)

    bins = reliability_bins(p, y, n_bins=4)
    np.testing.assert_allclose(bins["edges"], [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(bins["count"], [2, 1, 2, 3])
    np.testing.assert_allclose(bins["mean_prob"], [0.15, 0.3, 0.65, 0.9])
    np.testing.assert_allclose(bins["mean_label"], [0.5, 0.0, 1.0, 2 / 3])


def test_reliability_bins_empty_bins_are_nan_and_ece_ignores_them():
    bins = reliability_bins(np.array([0.05, 1.0]), np.array([0.0, 1.0]), n_bins=10)
    np.testing.assert_array_equal(bins["count"], [1, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    assert np.isnan(bins["mean_prob"][1:9]).all()
    # |0 - 0.05| * 1/2 + |1 - 1| * 1/2
    assert expected_calibration_error(np.array([0.05, 1.0]), np.array([0.0, 1.0])) == pytest.approx(0.025)


def test_ece_rejects_out_of_range():
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([1.5]), np.array([1.0]))
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([0.5]), np.array([2.0]))


def test_pairwise_accuracy_and_calibration_hand_worked():
    """4 pairs, beta = 1, d = r_c - r_r = [ln 3, ln 9, 0, -ln 3] -> p = sigmoid(d) = [3/4, 9/10, 1/2, 1/4].

    accuracy = (1 + 1 + 0.5 (tie) + 0) / 4 = 0.625; neg_margin_rate = 1/4.
    Both orientations, 8 samples (p, y):
        (.75,1) (.9,1) (.5,1) (.25,1)   and   (.25,0) (.1,0) (.5,0) (.75,0)
    n_bins = 2, bins [0, .5) and [.5, 1]:
        bin 0: (.25,1) (.25,0) (.1,0): n=3, mean p = .6/3 = .2, mean y = 1/3 -> gap 2/15
        bin 1: (.75,1) (.9,1) (.5,1) (.5,0) (.75,0): n=5, mean p = 3.4/5 = .68, mean y = .6 -> gap .08
        ECE = 3/8 * 2/15 + 5/8 * .08 = .05 + .05 = 0.1
    Brier = mean over 8 of (q - y)^2 = mean over 4 of (1 - p)^2 = (.0625 + .01 + .25 + .5625) / 4 = 0.22125
    NLL = mean of -log p = (ln 4/3 + ln 10/9 + ln 2 + ln 4) / 4
    """
    chosen = np.array([LN3, LN9, 1.0, 0.0])
    rejected = np.array([0.0, 0.0, 1.0, LN3])
    m = pairwise_metrics(chosen, rejected, n_bins=2)
    assert m["n_pairs"] == 4.0
    assert m["accuracy"] == 0.625
    assert m["neg_margin_rate"] == 0.25
    assert m["ece"] == pytest.approx(0.1, abs=1e-12)
    assert m["brier"] == pytest.approx(0.22125, abs=1e-12)
    nll = (math.log(4 / 3) + math.log(10 / 9) + LN2 + math.log(4)) / 4
    assert m["nll"] == pytest.approx(nll, abs=1e-12)
    assert m["loss"] == pytest.approx(nll, abs=1e-12)  # plain BT loss is the NLL
    assert "ece_calibrated" not in m


def test_calibration_uses_both_orientations():
    """ece/brier/nll equal the explicit two-orientation computation; temperature keys use d / T."""
    rng = np.random.default_rng(1)
    c, r = rng.normal(0.3, 1, 2000), rng.normal(0, 1, 2000)
    beta, temp = 0.7, 1.8
    m = pairwise_metrics(c, r, beta=beta, temperature=temp)
    for z, suffix in [(beta * (c - r), ""), (beta * (c - r) / temp, "_calibrated")]:
        p = 1 / (1 + np.exp(-z))
        prob, label = np.r_[p, 1 - p], np.r_[np.ones_like(p), np.zeros_like(p)]
        assert m["ece" + suffix] == pytest.approx(expected_calibration_error(prob, label), abs=1e-12)
        assert m["brier" + suffix] == pytest.approx(np.mean((prob - label) ** 2), abs=1e-12)
        nll = -np.mean(label * np.log(prob) + (1 - label) * np.log(1 - prob))
        assert m["nll" + suffix] == pytest.approx(nll, abs=1e-12)


# ----------------------------------------------------------------------------- temperature


def _calibrated_margins(t0: float, n: int, seed: int) -> np.ndarray:
    """Latent margins m; the first response truly wins with prob sigmoid(m / t0); orient as (winner - loser)."""
    rng = np.random.default_rng(seed)
    m = rng.normal(0.0, 3.0, n)
    first_wins = rng.random(n) < 1 / (1 + np.exp(-m / t0))
    return np.where(first_wins, m, -m)


def _nll(margins, temperature, beta=1.0):
    return float(np.mean(np.logaddexp(0.0, -beta * margins / temperature)))


@pytest.mark.parametrize("t0", [0.5, 2.0, 5.0])
def test_fit_temperature_recovers_known_temperature(t0):
    d = _calibrated_margins(t0, 200_000, seed=int(t0 * 10))
    t = fit_temperature(d)
    assert t == pytest.approx(t0, rel=0.05)
    assert _nll(d, t) <= _nll(d, 1.0)
    # it is the minimiser: nudging T either way does not lower the NLL
    assert _nll(d, t) <= min(_nll(d, t * 1.01), _nll(d, t / 1.01))


def test_fit_temperature_beta_and_weights():
    d = _calibrated_margins(2.0, 50_000, seed=3)
    # sigmoid(beta * m / T) only depends on beta / T
    assert fit_temperature(d, beta=4.0) == pytest.approx(4.0 * fit_temperature(d), rel=1e-9)
    # integer weights are the same as repeating pairs
    w = np.random.default_rng(4).integers(0, 4, d.size)
    assert fit_temperature(d, weight=w.astype(float)) == pytest.approx(fit_temperature(np.repeat(d, w)), rel=1e-9)


def test_fit_temperature_degenerate_cases():
    assert fit_temperature(np.zeros(10)) == 1.0
    assert fit_temperature(np.array([0.0, 5.0]), weight=np.array([1.0, 0.0])) == 1.0
    # separable: NLL decreases without bound as T -> 0, clamped
    assert fit_temperature(np.array([0.5, 1.0, 3.0, 0.0])) == TEMPERATURE_MIN
    # anti-correlated: the optimum would be a negative temperature, clamped
    assert fit_temperature(np.array([-0.5, -1.0, -3.0])) == TEMPERATURE_MAX
    # a single wrong pair makes it non-separable, so an interior optimum exists
    t = fit_temperature(np.array([1.0, 2.0, 3.0, -1.0]))
    assert TEMPERATURE_MIN < t < TEMPERATURE_MAX
    with pytest.raises(ValueError):
        fit_temperature(np.array([]))
    with pytest.raises(ValueError):
        fit_temperature(np.array([1.0]), weight=np.array([-1.0]))


# ----------------------------------------------------------------------------- other keys


def test_threshold_rates():
    """chosen = [1, 2, -1, 0.5], rejected = [0, 3, -2, -0.5]
    t = 0:   tpr = #(chosen > 0)/4 = 3/4, fnr = 1/4, fpr = #(rejected > 0)/4 = 1/4
    t = 0.5: tpr = 2/4 (0.5 is not > 0.5), fnr = 1/2, fpr = 1/4
    """
    m = pairwise_metrics(np.array([1.0, 2.0, -1.0, 0.5]), np.array([0.0, 3.0, -2.0, -0.5]), thresholds=(0.0, 0.5))
    assert (m["tpr@0"], m["fpr@0"], m["fnr@0"]) == (0.75, 0.25, 0.25)
    assert (m["tpr@0.5"], m["fpr@0.5"], m["fnr@0.5"]) == (0.5, 0.25, 0.5)


def test_per_source_accuracy_matches_a_loop():
    rng = np.random.default_rng(5)
    n = 3000
    c, r = rng.integers(0, 3, n).astype(float), rng.integers(0, 3, n).astype(float)  # plenty of ties
    sources = rng.choice(["hh", "shp", "ultrafeedback"], n).tolist()
    m = pairwise_metrics(c, r, sources=sources)
    for s in ["hh", "shp", "ultrafeedback"]:
        sel = np.array([x == s for x in sources])
        acc = np.mean(np.where(c[sel] > r[sel], 1.0, np.where(c[sel] == r[sel], 0.5, 0.0)))
        assert m[f"accuracy/{s}"] == pytest.approx(acc, abs=1e-12)
        assert m[f"n_pairs/{s}"] == sel.sum()
    assert sum(m[f"n_pairs/{s}"] for s in ["hh", "shp", "ultrafeedback"]) == n


def test_length_correlation_matches_numpy():
    rng = np.random.default_rng(6)
    n = 1000
    lc, lr = rng.integers(10, 500, n), rng.integers(10, 500, n)
    c, r = 0.01 * lc + rng.normal(size=n), 0.01 * lr + rng.normal(size=n)
    m = pairwise_metrics(c, r, chosen_len=lc, rejected_len=lr)
    assert m["len_corr_chosen"] == pytest.approx(np.corrcoef(c, lc)[0, 1], abs=1e-12)
    assert m["len_corr_all"] == pytest.approx(np.corrcoef(np.r_[c, r], np.r_[lc, lr])[0, 1], abs=1e-12)
    assert m["len_corr_margin"] == pytest.approx(np.corrcoef(c - r, lc - lr)[0, 1], abs=1e-12)
    # constant lengths: a variance is zero, the correlation is defined as 0.0, not NaN
    m = pairwise_metrics(c, r, chosen_len=np.full(n, 7), rejected_len=np.full(n, 7))
    assert m["len_corr_chosen"] == m["len_corr_all"] == m["len_corr_margin"] == 0.0
    with pytest.raises(ValueError):
        pairwise_metrics(c, r, chosen_len=lc)


def test_margin_stats_reward_stats_and_key_set():
    rng = np.random.default_rng(7)
    c, r = rng.normal(1, 1, 500), rng.normal(0, 2, 500)
    d = c - r
    m = pairwise_metrics(c, r, thresholds=(0.0, 1.5), sources=["a"] * 500, chosen_len=np.arange(500),
                         rejected_len=np.arange(500)[::-1], temperature=2.0)
    assert m["margin_mean"] == pytest.approx(d.mean())
    assert m["margin_std"] == pytest.approx(d.std())
    for q in (5, 25, 50, 75, 95):
        assert m[f"margin_p{q}"] == pytest.approx(np.percentile(d, q))
    assert m["reward_mean"] == pytest.approx(np.r_[c, r].mean())
    assert m["reward_std"] == pytest.approx(np.r_[c, r].std())
    assert m["auc"] == pytest.approx(roc_auc_score(np.r_[np.ones(500), np.zeros(500)], np.r_[c, r]))
    assert m["loss"] == pytest.approx(bt_loss_per_pair(c, r).mean())
    assert all(isinstance(v, float) for v in m.values())
    assert list(m) == [
        "n_pairs", "loss", "accuracy", "margin_mean", "margin_std",
        "margin_p5", "margin_p25", "margin_p50", "margin_p75", "margin_p95", "neg_margin_rate",
        "auc", "ece", "brier", "nll", "ece_calibrated", "brier_calibrated", "nll_calibrated",
        "tpr@0", "fpr@0", "fnr@0", "tpr@1.5", "fpr@1.5", "fnr@1.5",
        "accuracy/a", "n_pairs/a", "len_corr_chosen", "len_corr_all", "len_corr_margin",
        "reward_mean", "reward_std",
    ]


def test_loss_key_uses_the_training_reduction():
    """loss = sum(per-pair loss incl. weight) / n_pairs, not sum(w * l) / sum(w).

    d = [0, 0], w = [1, 3]: per-pair [ln 2, 3 ln 2] -> sum / 2 = 2 ln 2.
    """
    m = pairwise_metrics(np.zeros(2), np.zeros(2), weight=np.array([1.0, 3.0]))
    assert m["loss"] == pytest.approx(2 * LN2)


# ----------------------------------------------------------------------------- plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plots_return_png_bytes():
    from rm_ds.eval import plots

    rng = np.random.default_rng(8)
    c, r = rng.normal(1, 1, 1000), rng.normal(0, 1, 1000)
    png = plots.reward_histogram_png(c, r, title="rewards")
    assert png.startswith(PNG_MAGIC)
    assert plots.reward_histogram_png(np.ones(3), np.ones(3), title="constant").startswith(PNG_MAGIC)

    p = 1 / (1 + np.exp(-(c - r)))
    prob, label = np.r_[p, 1 - p], np.r_[np.ones(1000), np.zeros(1000)]
    before = reliability_bins(prob, label)
    p2 = 1 / (1 + np.exp(-(c - r) / 2))
    after = reliability_bins(np.r_[p2, 1 - p2], label)
    assert plots.reliability_diagram_png(before, after, title="calibration").startswith(PNG_MAGIC)
    assert plots.reliability_diagram_png(before, None, title="calibration").startswith(PNG_MAGIC)

    series = {"run-a": [(0, 0.5), (100, 0.6), (200, 0.65)], "run-b": [(50, 0.55), (150, 0.7)]}
    assert plots.curves_png(series, title="eval accuracy", ylabel="accuracy").startswith(PNG_MAGIC)
    assert plots.curves_png({}, title="empty", ylabel="accuracy").startswith(PNG_MAGIC)


def test_metrics_module_imports_no_torch_or_matplotlib():
    import subprocess
    import sys

    code = ("import sys, rm_ds.eval.metrics, rm_ds.eval.plots; "
            "print(sorted(m for m in ('torch', 'deepspeed', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=metrics.__file__.rsplit("/rm_ds/", 1)[0])
    assert out.stdout.strip() == "[]"
