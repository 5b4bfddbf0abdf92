"""Eval scores -> metrics, pure numpy: what ``rm_ds.train.evaluate`` gathered, merged and scored once.

Imports no DeepSpeed and no torch.distributed, so scoring and serving can use it without an engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rm_ds.config import LossConfig
from rm_ds.eval.metrics import objective_metrics, pairwise_metrics


@dataclass
class EvalScores:
    """Per-pair eval scores over the whole eval set, ordered by pair index."""

    index: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray


def merge_records(rows: np.ndarray, *, n_expected: int) -> EvalScores:
    """``(pair index, r_chosen, r_rejected)`` rows from every rank -> de-duplicated, ordered scores,
    checked to hold every pair exactly once."""
    index = rows[:, 0].astype(np.int64)
    uniq, first = np.unique(index, return_index=True)
    if len(uniq) != n_expected or len(index) != n_expected:
        raise RuntimeError(f"eval gather covered {len(uniq)} distinct pairs from {len(index)} records; "
                           f"expected each of {n_expected} exactly once")
    r = rows[first]
    k = (rows.shape[1] - 1) // 2  # several objectives: (index, K chosen rewards, K rejected rewards)
    if k > 1:
        return EvalScores(index=uniq, chosen=r[:, 1:1 + k], rejected=r[:, 1 + k:])
    return EvalScores(index=uniq, chosen=r[:, 1], rejected=r[:, 2])


def compute_metrics(scores: EvalScores, ds, *, loss: LossConfig, n_bins: int, thresholds: Sequence[float],
                    temperature: float | None = None, objectives: Sequence[str] = (),
                    temperatures: Sequence[float] | None = None) -> dict[str, float]:
    """All eval figures over every pair, once (rank-independent); ``loss`` gives the BT loss options,
    ``n_bins`` the ECE bins (eval.ece_bins), ``thresholds`` eval.thresholds. Several ``objectives``
    (scores (N, K), the ``prefs`` column): ``objective_metrics`` with one temperature per objective."""
    cols = set(ds.column_names)
    sources = np.asarray(list(ds["source"]), dtype=object)[scores.index] if "source" in cols else None
    if sources is not None and not any(sources):  # no pair names a source
        sources = None
    margin = np.asarray(ds["margin"], dtype=np.float64)[scores.index] if "margin" in cols else 0.0
    weight = np.asarray(ds["weight"], dtype=np.float64)[scores.index] if "weight" in cols else None
    pref = np.asarray(ds["pref"], dtype=np.float64)[scores.index] if "pref" in cols else None
    if objectives:
        prefs = np.asarray(list(ds["prefs"]), dtype=np.float64)[scores.index]
        return objective_metrics(scores.chosen, scores.rejected, prefs, objectives, margin=margin, weight=weight,
                                 sources=sources, temperatures=temperatures, beta=loss.beta,
                                 label_smoothing=loss.label_smoothing, reward_l2=loss.reward_l2, n_bins=n_bins,
                                 thresholds=thresholds)
    resp_len = lambda col: np.array([len(x) for x in ds[col]], dtype=np.float64)[scores.index]  # noqa: E731
    return pairwise_metrics(scores.chosen, scores.rejected, beta=loss.beta, margin=margin,
                            label_smoothing=loss.label_smoothing, weight=weight, reward_l2=loss.reward_l2,
                            n_bins=n_bins, thresholds=thresholds, sources=sources,
                            chosen_len=resp_len("chosen_ids"), rejected_len=resp_len("rejected_ids"),
                            temperature=temperature, pref=pref)
