"""Evaluation metrics for a Bradley-Terry reward model: pure numpy functions over per-pair arrays.

Inputs are the *complete* eval set: one reward per chosen and per rejected response, already
gathered from every rank (that gather lives elsewhere). Nothing here imports torch, deepspeed or
torch.distributed, and nothing loops over pairs in Python: 1M pairs take well under 2 s on one core
(``python bench/eval_metrics_bench.py``).

Layout used throughout: pair ``i`` is ``(chosen[i], rejected[i])``; its reward margin is
``d[i] = chosen[i] - rejected[i]`` and the model's preference probability is
``p[i] = sigmoid(beta * d[i])``.

>>> import numpy as np
>>> m = pairwise_metrics(np.array([2.0, 0.5, 1.0]), np.array([1.0, 1.5, 1.0]))
>>> m["n_pairs"], m["accuracy"], round(m["auc"], 4)  # pairs win, lose, tie; AUC = 4 / 9
(3.0, 0.5, 0.4444)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rm_ds.config import LABEL_SMOOTHING_MAX
from rm_ds.errors import ConfigError

__all__ = [
    "TEMPERATURE_MIN",
    "TEMPERATURE_MAX",
    "bt_loss_per_pair",
    "roc_auc",
    "expected_calibration_error",
    "reliability_bins",
    "fit_temperature",
    "pairwise_metrics",
    "both_orientations",
    "objective_metrics",
]

TEMPERATURE_MIN = 1e-2
"""Smallest temperature ``fit_temperature`` returns (reached when the pairs are separable)."""
TEMPERATURE_MAX = 1e2
"""Largest temperature ``fit_temperature`` returns (reached when margins are not better than chance)."""

_PERCENTILES = (5, 25, 50, 75, 95)


# ----------------------------------------------------------------------------- helpers


def _as_1d(x, name: str) -> np.ndarray:
    """``x`` as a 1-D float64 array (no copy if it already is one).

    NaN/inf are rejected: a NaN reward is a bug upstream, not something to average over.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _as_pair_arrays(chosen, rejected) -> tuple[np.ndarray, np.ndarray]:
    c, r = _as_1d(chosen, "chosen"), _as_1d(rejected, "rejected")
    if c.shape != r.shape:
        raise ValueError(f"chosen and rejected differ in length: {c.size} vs {r.size}")
    if c.size == 0:
        raise ValueError("no pairs")
    return c, r


def _per_pair(x, n: int, name: str) -> np.ndarray | float:
    """A scalar stays a float; an array must have one entry per pair."""
    if np.ndim(x) == 0:
        v = float(x)
        if not np.isfinite(v):
            raise ValueError(f"{name} is not finite")
        return v
    a = _as_1d(x, name)
    if a.size != n:
        raise ValueError(f"{name} has {a.size} entries for {n} pairs")
    return a


def _prefs(pref, n: int) -> np.ndarray:
    """Soft labels as a 1-D array of n values in [0, 1]."""
    p = _as_1d(pref, "pref")
    if p.size != n:
        raise ValueError(f"pref has {p.size} entries for {n} pairs")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("pref must lie in [0, 1]")
    return p


def _softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) without overflow for large |x|."""
    return np.logaddexp(0.0, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow: only exp(-|x|) <= 1 is ever formed; sigmoid(0) is exactly 0.5."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0.0 (not NaN) when either variable is constant."""
    xc = x - x.mean()
    yc = y - y.mean()
    denom = np.sqrt(np.dot(xc, xc) * np.dot(yc, yc))
    if denom == 0.0:
        return 0.0
    return float(np.clip(np.dot(xc, yc) / denom, -1.0, 1.0))


def _bin_index(prob: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability: bin b is [b/n, (b+1)/n), the last bin also holds 1.0.

    ``searchsorted`` against the same ``linspace`` edges that ``reliability_bins`` reports keeps
    bin membership and the reported edges consistent (``floor(p * n)`` can disagree at edges).
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, n_bins - 1)


def _check_prob_label(prob, label, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    p, y = _as_1d(prob, "prob"), _as_1d(label, "label")
    if p.shape != y.shape:
        raise ValueError(f"prob and label differ in length: {p.size} vs {y.size}")
    if p.size == 0:
        raise ValueError("no samples")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("prob must lie in [0, 1]")
    if y.min() < 0.0 or y.max() > 1.0:
        raise ValueError("label must lie in [0, 1]")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    return p, y


def _bin_sums(p: np.ndarray, y: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = _bin_index(p, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    return count, sum_p, sum_y


# ----------------------------------------------------------------------------- public API


def bt_loss_per_pair(
    chosen: np.ndarray,
    rejected: np.ndarray,
    *,
    beta: float = 1.0,
    margin: np.ndarray | float = 0.0,
    label_smoothing: float = 0.0,
    weight: np.ndarray | float = 1.0,
    reward_l2: float = 0.0,
    pref: np.ndarray | None = None,
) -> np.ndarray:
    """Bradley-Terry loss of every pair (no reduction), float64.

    With ``pref`` (soft labels p, 1 = chosen preferred) the target is q = (1 - eps) p + eps (1 - p) and
    the BT term is ``q * softplus(-z) + (1 - q) * softplus(z)``; None is p = 1 (the formula below).

    ``z = beta * (r_c - r_r) - margin``
    ``loss = weight * ((1 - eps) * softplus(-z) + eps * softplus(z)) + reward_l2 * (r_c**2 + r_r**2) / 2``

    ``softplus(-z) = -log sigmoid(z)``; with ``eps = label_smoothing`` the target is "chosen wins
    with probability 1 - eps". ``margin`` and ``weight`` are scalars or one value per pair. The
    weight multiplies the BT term only; the L2 term keeps rewards centred and is not weighted.
    Reduce with ``loss.sum() / n_pairs`` (the global pair count), as training does.
    """
    c, r = _as_pair_arrays(chosen, rejected)
    n = c.size
    if not 0.0 <= label_smoothing < LABEL_SMOOTHING_MAX:  # the bound of config.check_label_smoothing
        raise ConfigError(f"label_smoothing: must be in [0, {LABEL_SMOOTHING_MAX}), got {label_smoothing}")
    m = _per_pair(margin, n, "margin")
    w = _per_pair(weight, n, "weight")
    z = beta * (c - r) - m
    if pref is None:
        loss = _softplus(-z)
        if label_smoothing:
            loss = (1.0 - label_smoothing) * loss + label_smoothing * _softplus(z)
    else:
        q = _prefs(pref, n)
        q = (1.0 - label_smoothing) * q + label_smoothing * (1.0 - q)
        loss = q * _softplus(-z) + (1.0 - q) * _softplus(z)
    loss = w * loss
    if reward_l2:
        loss = loss + reward_l2 * 0.5 * (c * c + r * r)
    return loss


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Exact ROC AUC of positive vs negative scores, ties counted half (Mann-Whitney U / (n_pos * n_neg)).

    Equal to the average-rank formula ``(sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``
    and to ``sklearn.metrics.roc_auc_score``. Computed as ``U = sum_i #(neg < pos_i) + #(neg == pos_i) / 2``
    with two ``searchsorted`` passes over the sorted negatives: O(n log n), and 2U is an exact int64.
    For a reward model, chosen rewards are the positives and rejected rewards the negatives.
    """
    p, q = _as_1d(pos, "pos"), _as_1d(neg, "neg")
    if p.size == 0 or q.size == 0:
        raise ValueError("roc_auc needs at least one positive and one negative score")
    q = np.sort(q)
    p = np.sort(p)  # sorted queries make the two searchsorted passes cache-friendly
    below = np.searchsorted(q, p, side="left")  # negatives strictly below each positive
    below_or_tied = np.searchsorted(q, p, side="right")
    two_u = int(below.sum(dtype=np.int64)) + int(below_or_tied.sum(dtype=np.int64))
    return two_u / (2.0 * p.size * q.size)


def reliability_bins(prob: np.ndarray, label: np.ndarray, *, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per-bin statistics for a reliability diagram (equal-width bins on [0, 1]; p = 1.0 is in the last bin).

    Returns numpy arrays:

    ============== ========== ===========================================
    key            shape      meaning
    ============== ========== ===========================================
    ``edges``      n_bins + 1 bin edges, ``linspace(0, 1, n_bins + 1)``
    ``count``      n_bins     samples in the bin (int64)
    ``mean_prob``  n_bins     mean predicted probability (NaN if empty)
    ``mean_label`` n_bins     mean label, i.e. observed frequency (NaN if empty)
    ============== ========== ===========================================
    """
    p, y = _check_prob_label(prob, label, n_bins)
    count, sum_p, sum_y = _bin_sums(p, y, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        mean_y = np.where(count > 0, sum_y / count, np.nan)
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "count": count, "mean_prob": mean_p, "mean_label": mean_y}


def expected_calibration_error(prob: np.ndarray, label: np.ndarray, *, n_bins: int = 10) -> float:
    """ECE = sum_b |B_b| / N * |mean(label in B_b) - mean(prob in B_b)| over equal-width bins on [0, 1].

    Bin ``b`` is ``[b / n_bins, (b + 1) / n_bins)``; ``p = 1.0`` goes into the last bin. Empty bins
    contribute nothing. Labels may be 0/1 or soft labels in [0, 1].
    """
    p, y = _check_prob_label(prob, label, n_bins)
    count, sum_p, sum_y = _bin_sums(p, y, n_bins)
    # |B|/N * |sum_y/|B| - sum_p/|B|| = |sum_y - sum_p| / N: no division by empty bins needed
    return float(np.abs(sum_y - sum_p).sum() / p.size)


def fit_temperature(margins: np.ndarray, *, beta: float = 1.0, weight: np.ndarray | None = None,
                    pref: np.ndarray | None = None) -> float:
    """Temperature T > 0 minimising the (weighted) mean NLL of ``sigmoid(beta * margin / T)``, label 1 per pair.

    With ``pref`` the label of pair i is the soft label p_i (NLL ``-(p log s + (1 - p) log(1 - s))``);
    a pair with p_i < 0.5 is scored in its preferred orientation (margin and p flipped), which leaves
    its NLL unchanged, and ties (p = 0.5) pull T towards large values as they should.

    ``margins`` are ``r_c - r_r``. Scoring both orientations of a pair (``margin`` with label 1 and
    ``-margin`` with label 0) gives exactly the same NLL, so this is also the fit on both orientations.

    The NLL is convex in ``s = 1 / T``; its derivative ``g(s) = -mean(w x sigmoid(-x s))`` with
    ``x = beta * margin`` is increasing, and its root is found by Newton's method safeguarded by a
    bracket on ``s`` in ``[1 / TEMPERATURE_MAX, 1 / TEMPERATURE_MIN]`` (a geometric bisection step
    whenever Newton leaves the bracket). Degenerate inputs:

    - every margin (or every weighted margin) is 0: the NLL does not depend on T; returns 1.0.
    - the NLL still decreases at ``T = TEMPERATURE_MIN`` (e.g. all margins > 0, i.e. separable
      pairs, where it decreases without bound as T -> 0): returns ``TEMPERATURE_MIN`` (0.01).
    - the NLL still increases at ``T = TEMPERATURE_MAX`` (margins no better than chance, e.g.
      all margins < 0, where the unconstrained optimum is a negative temperature): returns
      ``TEMPERATURE_MAX`` (100).
    """
    x = _as_1d(margins, "margins") * float(beta)
    if x.size == 0:
        raise ValueError("no margins")
    y = np.ones(x.size) if pref is None else _prefs(pref, x.size)
    flip = y < 0.5
    x, y = np.where(flip, -x, x), np.where(flip, 1.0 - y, y)
    if weight is None:
        w = np.full(x.size, 1.0 / x.size)
    else:
        w = _as_1d(weight, "weight")
        if w.size != x.size:
            raise ValueError(f"weight has {w.size} entries for {x.size} margins")
        if w.min() < 0.0 or w.sum() <= 0.0:
            raise ValueError("weights must be non-negative with a positive sum")
        w = w / w.sum()
    keep = (w > 0.0) & (x != 0.0)
    if not keep.any():
        return 1.0
    x, wx, y = x[keep], (w * x)[keep], y[keep]

    # d/ds of -(y log sigmoid(x s) + (1 - y) log sigmoid(-x s)) is -x (y - sigmoid(x s));
    # with y = 1 that is -x sigmoid(-x s), as before
    def grad(s: float) -> float:
        return float(-np.dot(wx, y - _sigmoid(x * s)))

    lo, hi = 1.0 / TEMPERATURE_MAX, 1.0 / TEMPERATURE_MIN
    if grad(hi) <= 0.0:
        return TEMPERATURE_MIN
    if grad(lo) >= 0.0:
        return TEMPERATURE_MAX
    s = 1.0
    for _ in range(200):
        sig = _sigmoid(x * s)
        g = float(-np.dot(wx, y - sig))
        h = float(np.dot(wx * x, sig * (1.0 - sig)))
        if g < 0.0:
            lo = s
        else:
            hi = s
        s_new = s - g / h if h > 0.0 else np.nan
        if not lo < s_new < hi:
            s_new = float(np.sqrt(lo * hi))
        if abs(s_new - s) <= 1e-12 * s or hi / lo - 1.0 <= 1e-12:
            s = s_new
            break
        s = s_new
    return float(np.clip(1.0 / s, TEMPERATURE_MIN, TEMPERATURE_MAX))


def both_orientations(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pair scored both ways: ``(prob, label)`` = ``([sigmoid(z), sigmoid(-z)], [1..., 0...])``.

    ``z`` is ``beta * (r_c - r_r)`` (divided by a temperature for calibrated figures); sigmoid(-z) is
    computed directly (no ``1 - p`` cancellation) and never overflows.
    """
    z = np.asarray(z, dtype=np.float64)
    n = z.size
    return np.concatenate([_sigmoid(z), _sigmoid(-z)]), np.concatenate([np.ones(n), np.zeros(n)])


def _calibration(z: np.ndarray, n_bins: int, suffix: str = "", pref: np.ndarray | None = None) -> dict[str, float]:
    """ECE / Brier / NLL of p = sigmoid(z), each pair scored in both orientations.

    Orientation 1 is (p, label 1), orientation 2 is (1 - p, label 0), so the labels are not all 1
    and ECE sees both halves of [0, 1]. Brier and NLL are identical in the two orientations
    ((p - 1)^2 = ((1 - p) - 0)^2 and -log p both times), so they are computed on one.
    """
    n = z.size
    prob, label = both_orientations(z)
    q = prob[n:]  # 1 - p without cancellation
    if pref is not None and not np.all(pref == 1.0):  # soft labels: (p, y), (1 - p, 1 - y); Brier, NLL vs y
        y = pref
        label = np.concatenate([y, 1.0 - y])
        return {
            f"ece{suffix}": expected_calibration_error(prob, label, n_bins=n_bins),
            f"brier{suffix}": float(np.dot(prob[:n] - y, prob[:n] - y) / n),
            f"nll{suffix}": float((y * _softplus(-z) + (1.0 - y) * _softplus(z)).mean()),
        }
    return {
        f"ece{suffix}": expected_calibration_error(prob, label, n_bins=n_bins),
        f"brier{suffix}": float(np.dot(q, q) / n),
        f"nll{suffix}": float(_softplus(-z).mean()),
    }


def pairwise_metrics(
    chosen: np.ndarray,
    rejected: np.ndarray,
    *,
    beta: float = 1.0,
    margin: np.ndarray | float = 0.0,
    label_smoothing: float = 0.0,
    weight: np.ndarray | float | None = None,
    reward_l2: float = 0.0,
    n_bins: int = 10,
    thresholds: Sequence[float] = (0.0,),
    sources: Sequence[str] | np.ndarray | None = None,
    chosen_len: np.ndarray | None = None,
    rejected_len: np.ndarray | None = None,
    temperature: float | None = None,
    pref: np.ndarray | None = None,
) -> dict[str, float]:
    """All eval metrics over ALL pairs as a flat ``{key: float}`` dict with stable keys.

    ``pref`` (soft labels p per pair, 1 = chosen preferred, 0.5 = tie; None = all 1) changes: the
    loss (soft-label BT), ``accuracy``/``auc``/``accuracy/<source>`` (over non-tied pairs, each in
    its preferred orientation: a pair with p < 0.5 counts as won when d < 0), ``ece``/``brier``/
    ``nll`` (against p: orientations (s, p) and (1 - s, 1 - p)) and adds ``tie_rate`` (share of
    pairs with p = 0.5) and ``n_untied``. With every p = 1 all values equal those without ``pref``.

    ``chosen[i]`` / ``rejected[i]`` are the rewards of pair ``i``; ``d = chosen - rejected`` is the
    reward margin (not the ``margin`` argument, which is the BT target offset used by the loss).
    ``weight`` (None = 1) enters the loss only; every other metric counts each pair once.

    =============================================== ===========================================================
    key                                             definition
    =============================================== ===========================================================
    ``n_pairs``                                     number of pairs N
    ``loss``                                        ``bt_loss_per_pair(...).sum() / N`` (weight already inside,
                                                    the same reduction training uses)
    ``accuracy``                                    mean of 1[d > 0] + 0.5 * 1[d == 0]
    ``margin_mean``, ``margin_std``                 mean and population std (ddof=0) of d
    ``margin_p5/p25/p50/p75/p95``                   percentiles of d (linear interpolation)
    ``neg_margin_rate``                             fraction of pairs with d < 0
    ``auc``                                         ``roc_auc(chosen, rejected)``, per response, chosen positive
    ``ece``, ``brier``, ``nll``                     calibration of p = sigmoid(beta * d), each pair scored as
                                                    (p, label 1) and (1 - p, label 0); ``n_bins`` equal bins
    ``ece/brier/nll_calibrated``                    the same with p = sigmoid(beta * d / temperature); only if
                                                    ``temperature`` is given
    ``tpr@<t>``, ``fpr@<t>``, ``fnr@<t>``           for each t in ``thresholds`` (key uses ``f"{t:g}"``): a
                                                    response is "good" if reward > t; tpr = P(chosen > t),
                                                    fpr = P(rejected > t), fnr = 1 - tpr
    ``accuracy/<source>``, ``n_pairs/<source>``     per distinct source (sorted); only if ``sources`` is given
    ``len_corr_chosen``                             Pearson(chosen reward, chosen length); only if both
                                                    lengths are given, like the next two; 0.0 if a
                                                    variance is 0
    ``len_corr_all``                                Pearson(reward, length) over all 2N responses
    ``len_corr_margin``                             Pearson(d, chosen_len - rejected_len)
    ``reward_mean``, ``reward_std``                 mean and population std of all 2N rewards (travel with
                                                    an exported model for normalisation)
    =============================================== ===========================================================
    """
    c, r = _as_pair_arrays(chosen, rejected)
    n = c.size
    d = c - r
    out: dict[str, float] = {"n_pairs": float(n)}

    y = None if pref is None else _prefs(pref, n)
    per_pair = bt_loss_per_pair(
        c, r, beta=beta, margin=margin, label_smoothing=label_smoothing,
        weight=1.0 if weight is None else weight, reward_l2=reward_l2, pref=y,
    )
    out["loss"] = float(per_pair.sum() / n)

    # ranking metrics see each labelled pair in its preferred orientation; tied pairs rank nothing
    untied = np.ones(n, dtype=bool) if y is None else y != 0.5
    od = d if y is None else np.where(y < 0.5, -d, d)
    # a reward tie is a coin flip for the ranking, so it earns half a point
    correct = (od > 0).astype(np.float64) + 0.5 * (od == 0)
    n_untied = int(untied.sum())
    out["accuracy"] = float(correct[untied].sum() / n_untied) if n_untied else float("nan")
    if y is not None:
        out["tie_rate"] = float((n - n_untied) / n)
        out["n_untied"] = float(n_untied)
    out["margin_mean"] = float(d.mean())
    out["margin_std"] = float(d.std())
    for q, v in zip(_PERCENTILES, np.percentile(d, _PERCENTILES)):
        out[f"margin_p{q}"] = float(v)
    out["neg_margin_rate"] = float(np.count_nonzero(d < 0) / n)

    if y is None:
        out["auc"] = roc_auc(c, r)
    else:
        swap = y < 0.5
        pos, neg = np.where(swap, r, c)[untied], np.where(swap, c, r)[untied]
        out["auc"] = roc_auc(pos, neg) if n_untied else float("nan")

    z = beta * d
    out.update(_calibration(z, n_bins, pref=y))
    if temperature is not None:
        if not temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        out.update(_calibration(z / temperature, n_bins, suffix="_calibrated", pref=y))

    for t in thresholds:
        tpr = float(np.count_nonzero(c > t) / n)
        out[f"tpr@{t:g}"] = tpr
        out[f"fpr@{t:g}"] = float(np.count_nonzero(r > t) / n)
        out[f"fnr@{t:g}"] = 1.0 - tpr

    if sources is not None:
        src = np.asarray(sources)
        if src.shape != (n,):
            raise ValueError(f"sources must have one entry per pair ({n}), got shape {src.shape}")
        names, inv = np.unique(src, return_inverse=True)
        inv = inv.reshape(-1)  # numpy 2.x may return the input's shape
        counts = np.bincount(inv, minlength=names.size)
        ranked = np.bincount(inv, weights=untied.astype(np.float64), minlength=names.size)
        hits = np.bincount(inv, weights=correct * untied, minlength=names.size)
        for name, k, u, h in zip(names.tolist(), counts.tolist(), ranked.tolist(), hits.tolist()):
            out[f"accuracy/{name}"] = h / u if u else float("nan")
            out[f"n_pairs/{name}"] = float(k)

    rewards = np.concatenate([c, r])
    if (chosen_len is None) != (rejected_len is None):
        raise ValueError("give both chosen_len and rejected_len, or neither")
    if chosen_len is not None:
        lc, lr = _as_1d(chosen_len, "chosen_len"), _as_1d(rejected_len, "rejected_len")
        if lc.size != n or lr.size != n:
            raise ValueError(f"lengths must have one entry per pair ({n})")
        out["len_corr_chosen"] = _pearson(c, lc)
        out["len_corr_all"] = _pearson(rewards, np.concatenate([lc, lr]))
        out["len_corr_margin"] = _pearson(d, lc - lr)

    out["reward_mean"] = float(rewards.mean())
    out["reward_std"] = float(rewards.std())
    return out


def objective_metrics(
    chosen: np.ndarray,
    rejected: np.ndarray,
    prefs: np.ndarray,
    objectives: Sequence[str],
    *,
    margin: np.ndarray | float = 0.0,
    weight: np.ndarray | None = None,
    sources: Sequence[str] | np.ndarray | None = None,
    temperatures: Sequence[float] | None = None,
    **kw,
) -> dict[str, float]:
    """Several objectives: ``pairwise_metrics`` per objective over the pairs labelled for it (keys
    ``<objective>/<key>``), and over all labelled (pair, objective) entries together (plain keys, so
    ``eval.metric`` names work unchanged; ``n_pairs`` there counts entries).

    ``chosen``/``rejected``/``prefs`` are (N, K); ``prefs`` is NaN where a pair is unlabelled for an
    objective. ``margin``/``weight``/``sources`` are per pair; ``temperatures`` one per objective
    (the overall calibrated figures use each entry's own objective's temperature).
    """
    c, r, p = (np.asarray(x, dtype=np.float64) for x in (chosen, rejected, prefs))
    n, k = c.shape
    if r.shape != (n, k) or p.shape != (n, k) or len(objectives) != k:
        raise ValueError(f"chosen {c.shape}, rejected {r.shape}, prefs {p.shape} and {len(objectives)} "
                         f"objectives do not line up")
    lab = ~np.isnan(p)
    m = np.broadcast_to(np.asarray(margin, dtype=np.float64), (n,))
    w = None if weight is None else np.broadcast_to(np.asarray(weight, dtype=np.float64), (n,))
    src = None if sources is None else np.asarray(sources, dtype=object)
    out: dict[str, float] = {}
    for j, name in enumerate(objectives):
        sel = lab[:, j]
        if not sel.any():
            out[f"{name}/n_pairs"] = 0.0
            continue
        t = None if temperatures is None else temperatures[j]
        mj = pairwise_metrics(c[sel, j], r[sel, j], margin=m[sel], weight=None if w is None else w[sel],
                              sources=None if src is None else src[sel], pref=p[sel, j], temperature=t, **kw)
        out.update({f"{name}/{key}": v for key, v in mj.items()})
    rows, cols = np.nonzero(lab)
    scale = 1.0 if temperatures is None else np.asarray(temperatures, dtype=np.float64)[cols]
    # the overall figures: every labelled entry once; a per-entry temperature is folded into beta * d / T
    overall = pairwise_metrics(c[rows, cols] / scale, r[rows, cols] / scale, margin=m[rows] / scale,
                               weight=None if w is None else w[rows], sources=None if src is None else src[rows],
                               pref=p[rows, cols], **kw) if temperatures is not None else None
    base = pairwise_metrics(c[rows, cols], r[rows, cols], margin=m[rows], weight=None if w is None else w[rows],
                            sources=None if src is None else src[rows], pref=p[rows, cols], **kw)
    out.update(base)
    if overall is not None:
        for key in ("ece", "brier", "nll"):
            out[f"{key}_calibrated"] = overall[key]
    return out
