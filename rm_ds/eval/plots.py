"""PNG figures for reward-model eval: reward histograms, reliability diagrams, metric-vs-step curves.

Every function returns PNG bytes, so a caller can write a file or log a TensorBoard image from the
same result. matplotlib is imported lazily inside each function (importing ``rm_ds.eval.plots`` costs
nothing), and figures are drawn on an Agg canvas through the object API (``Figure`` +
``FigureCanvasAgg``), never through ``pyplot``: no global backend switch, no figure registry to
leak, safe to call from a training process.
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["reward_histogram_png", "reliability_diagram_png", "curves_png"]


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def reward_histogram_png(chosen: np.ndarray, rejected: np.ndarray, *, title: str, bins: int = 80) -> bytes:
    """Overlaid histograms of chosen and rejected rewards on shared bin edges, as PNG bytes."""
    c = np.asarray(chosen, dtype=np.float64).ravel()
    r = np.asarray(rejected, dtype=np.float64).ravel()
    both = np.concatenate([c, r])
    both = both[np.isfinite(both)]
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    if hi <= lo:  # constant rewards: give the single bar some width
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)

    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    ax.hist(c[np.isfinite(c)], bins=edges, alpha=0.55, color="tab:green", label=f"chosen (n={c.size})")
    ax.hist(r[np.isfinite(r)], bins=edges, alpha=0.55, color="tab:red", label=f"rejected (n={r.size})")
    ax.set_xlabel("reward")
    ax.set_ylabel("responses")
    ax.set_title(title)
    ax.legend()
    return _to_png(fig)


def _plot_bins(ax_rel, ax_cnt, bins: dict, *, label: str, color: str, offset: float) -> None:
    edges = np.asarray(bins["edges"], dtype=np.float64)
    count = np.asarray(bins["count"], dtype=np.float64)
    mean_p = np.asarray(bins["mean_prob"], dtype=np.float64)
    mean_y = np.asarray(bins["mean_label"], dtype=np.float64)
    full = count > 0
    ax_rel.plot(mean_p[full], mean_y[full], "o-", color=color, label=label)
    width = np.diff(edges)
    # two side-by-side bars per bin when before and after are both drawn
    ax_cnt.bar(edges[:-1] + offset * width, count, width=0.5 * width, align="edge", color=color, alpha=0.7)


def reliability_diagram_png(bins_before: dict, bins_after: dict | None = None, *, title: str) -> bytes:
    """Reliability diagram from ``metrics.reliability_bins`` output, as PNG bytes.

    Top: observed frequency (mean label) against mean predicted probability per non-empty bin, with
    the diagonal as the perfectly calibrated reference; ``bins_after`` (e.g. after temperature
    scaling) is drawn as a second line. Bottom: samples per bin.
    """
    fig = _new_figure(5.5, 6.0)
    ax_rel, ax_cnt = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax_rel.plot([0.0, 1.0], [0.0, 1.0], "--", color="gray", label="perfect calibration")
    _plot_bins(ax_rel, ax_cnt, bins_before, label="before", color="tab:blue", offset=0.0)
    if bins_after is not None:
        _plot_bins(ax_rel, ax_cnt, bins_after, label="after", color="tab:orange", offset=0.5)
    ax_rel.set_xlim(0.0, 1.0)
    ax_rel.set_ylim(0.0, 1.0)
    ax_rel.set_ylabel("observed frequency")
    ax_rel.set_title(title)
    ax_rel.legend(loc="upper left")
    ax_cnt.set_xlabel("predicted probability")
    ax_cnt.set_ylabel("count")
    return _to_png(fig)


def curves_png(series: dict[str, list[tuple[int, float]]], *, title: str, ylabel: str) -> bytes:
    """One line per run of ``(step, value)`` points on shared axes, as PNG bytes."""
    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    for name, points in series.items():
        if not points:
            continue
        pts = sorted(points)
        steps = [int(s) for s, _ in pts]
        values = [float(v) for _, v in pts]
        ax.plot(steps, values, marker="." if len(pts) < 50 else None, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if any(series.values()):
        ax.legend()
    ax.grid(True, alpha=0.3)
    return _to_png(fig)
