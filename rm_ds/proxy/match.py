"""``rm-ds match``: how well a proxy reward model agrees with the gold one that labelled its data.

    rm-ds match --proxy runs/proxy/rm/export/final --heldout runs/proxy/heldout_labelled.jsonl \
        --train runs/proxy/train_labelled.jsonl --out runs/proxy/match

Both files are gold-labelled scored-responses JSONL (``rm-ds label --out-scored``). The proxy scores
every response (``Scorer.score_responses``), aligned by prompt id and response index. Per split:

- ``match_rate``: over every two responses of a prompt whose gold rewards differ by more than
  ``tie_eps`` (the pairs ``rm-ds label`` trains on), the share where the proxy orders them as the
  gold does (a proxy tie counts one half);
- ``spearman``, ``kendall`` (tau-b): rank correlation of proxy and gold rewards over all responses;
- ``spread_std``, ``spread_iqr``: proxy std / gold std and proxy IQR / gold IQR. BT rewards are only
  fixed up to a shift, so a ratio far below 1 means the proxy squeezes the gold's range into a
  narrow band (the classic under-trained proxy).

Written to ``--out``: ``match.json``, ``scatter_<split>.png`` (also TensorBoard images under
``tb/``), and a plain-language diagnosis naming the figure that failed its check.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rm_ds.data.scored import read_scored
from rm_ds.errors import ConfigError, DataError
from rm_ds.proxy.label import ScoreFn, score_rows

HELDOUT_MIN_MATCH = 0.8
"""A good proxy agrees with the gold on at least this share of held-out pairs (about 0.66 = failed)."""
TRAIN_MIN_MATCH = 0.9
"""... and on at least this share of its own training pairs."""
MIN_SPREAD = 0.5
"""A proxy/gold spread ratio below this is "far below 1": compressed rewards."""


# ---------------------------------------------------------------- figures (pure numpy)


def _ordered_pairs(proxy: list[list[float]], gold: list[list[float]], tie_eps: float):
    """(|gold gap|, proxy hit) of every i < j within one prompt with |gold_i - gold_j| > tie_eps; a proxy tie
    is a half hit."""
    for p, g in zip(proxy, gold, strict=True):
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                dg, dp = g[i] - g[j], p[i] - p[j]
                if abs(dg) > tie_eps:
                    yield abs(dg), 0.5 if dp == 0 else float((dp > 0) == (dg > 0))


def pairwise_agreement(proxy: list[list[float]], gold: list[list[float]], *, tie_eps: float = 0.0) -> tuple[float, int]:
    """(share of gold-ordered response pairs the proxy orders the same way, number of such pairs).

    Pairs are every i < j within one prompt with |gold_i - gold_j| > tie_eps; a proxy tie scores 1/2.
    """
    hits = [h for _, h in _ordered_pairs(proxy, gold, tie_eps)]
    return (sum(hits) / len(hits) if hits else math.nan), len(hits)


def agreement_by_gold_gap(proxy: list[list[float]], gold: list[list[float]], *, tie_eps: float = 0.0,
                          bins: int = 4) -> list[dict[str, float]]:
    """``pairwise_agreement`` within quantile bins of the gold difference |gold_i - gold_j| (smallest first).

    Where the gold rewards of two responses are nearly equal, its own preference is close to a coin flip and so
    is any proxy's agreement with it; a good proxy climbs towards 1 in the top bins. Bin edges are the
    quantiles of the gaps; each row holds its range, pair count and match rate."""
    pairs = list(_ordered_pairs(proxy, gold, tie_eps))
    if not pairs:
        return []
    gaps_a, hits_a = np.asarray(pairs).T
    order = np.argsort(gaps_a, kind="stable")
    out = []
    for part in np.array_split(order, min(bins, len(order))):
        out.append({"gap_min": float(gaps_a[part].min()), "gap_max": float(gaps_a[part].max()),
                    "n_pairs": int(len(part)), "match_rate": float(hits_a[part].mean())})
    return out


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their positions (scipy.stats.rankdata's 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    mean_rank = (starts + ends + 1) / 2.0  # positions start..end-1 are ranks start+1..end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / den if den > 0 else math.nan


def _tied_pairs(x: np.ndarray) -> int:
    _, counts = np.unique(x, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b in O(n log n): (concordant - discordant) / sqrt((n0 - ties_x)(n0 - ties_y)).

    Sorted by (x, y), a discordant pair is an inversion of y (x-ties are in y order, so they add
    none); inversions are counted with a Fenwick tree over y's ranks. Then
    concordant - discordant = n0 - ties_x - ties_y + ties_xy - 2 * discordant.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < 2:
        return math.nan
    order = np.lexsort((y, x))
    _, ry = np.unique(y[order], return_inverse=True)
    tree = np.zeros(int(ry.max()) + 2, dtype=np.int64)
    discordant = 0
    for seen, r in enumerate(ry.tolist()):  # count earlier y strictly above this one
        i, below_or_equal = r + 1, 0
        while i > 0:
            below_or_equal += tree[i]
            i -= i & -i
        discordant += seen - below_or_equal
        i = r + 1
        while i < len(tree):
            tree[i] += 1
            i += i & -i
    n0 = n * (n - 1) // 2
    tx, ty = _tied_pairs(x), _tied_pairs(y)
    txy = _tied_pairs(x + 1j * y)  # pairs tied in both
    den = math.sqrt(float(n0 - tx) * float(n0 - ty))
    return float(n0 - tx - ty + txy - 2 * discordant) / den if den > 0 else math.nan


def spread_ratios(proxy: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """proxy std / gold std and proxy IQR / gold IQR (nan when the gold has no spread)."""
    def iqr(v):
        q1, q3 = np.percentile(v, [25, 75])
        return float(q3 - q1)

    gs, gi = float(np.std(gold)), iqr(gold)
    return {"spread_std": float(np.std(proxy)) / gs if gs > 0 else math.nan,
            "spread_iqr": iqr(proxy) / gi if gi > 0 else math.nan}


def match_figures(proxy: list[list[float]], gold: list[list[float]], *, tie_eps: float = 0.0) -> dict[str, float]:
    """All figures of one split, from per-prompt reward lists (aligned: proxy[i][j] is gold[i][j]'s response)."""
    rate, n_pairs = pairwise_agreement(proxy, gold, tie_eps=tie_eps)
    p = np.array([v for row in proxy for v in row], dtype=np.float64)
    g = np.array([v for row in gold for v in row], dtype=np.float64)
    return {"match_rate": rate, "n_pairs": n_pairs, "n_responses": len(g), "spearman": spearman(p, g),
            "match_by_gold_gap": agreement_by_gold_gap(proxy, gold, tie_eps=tie_eps),
            "kendall": kendall_tau_b(p, g), **spread_ratios(p, g),
            "proxy_mean": float(p.mean()), "proxy_std": float(p.std()), "gold_mean": float(g.mean()),
            "gold_std": float(g.std())}


def diagnose(figures: dict[str, dict[str, float]]) -> list[str]:
    """Plain-language findings for failed checks, each naming the figure that triggered it."""
    out = []
    for split, minimum, what in (("heldout", HELDOUT_MIN_MATCH, "held-out prompts"),
                                 ("train", TRAIN_MIN_MATCH, "its own training pairs")):
        f = figures.get(split)
        if f is None:
            continue
        if not f["match_rate"] >= minimum:
            hint = ("the proxy has not fit its training data: train longer (more epochs) or with a higher lr"
                    if split == "train" else
                    "the proxy does not generalise to new prompts: more training pairs, more epochs or a "
                    "higher lr (if the training match rate is high, rather more data or regularisation)")
            out.append(f"{split} match_rate {f['match_rate']:.3f} < {minimum} on {what} ({f['n_pairs']} pairs): "
                       f"{hint}.")
        for key in ("spread_std", "spread_iqr"):
            if f[key] < MIN_SPREAD:
                out.append(f"{split} {key} {f[key]:.3f} < {MIN_SPREAD}: the proxy's rewards are compressed into a "
                           f"narrow band (proxy std {f['proxy_std']:.3g} vs gold {f['gold_std']:.3g}); "
                           f"try a higher lr or more epochs.")
    return out


# ---------------------------------------------------------------- plot


def scatter_png(proxy: np.ndarray, gold: np.ndarray, *, title: str) -> bytes:
    """Proxy against gold reward, one dot per response, with a least-squares line, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(gold, proxy, s=8, alpha=0.5)
    if len(gold) > 1 and np.std(gold) > 0:
        a, b = np.polyfit(gold, proxy, 1)
        xs = np.array([gold.min(), gold.max()])
        ax.plot(xs, a * xs + b, color="C3", lw=1, label=f"fit: slope {a:.3g}")
        ax.legend(loc="best")
    ax.set_xlabel("gold reward")
    ax.set_ylabel("proxy reward")
    ax.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ---------------------------------------------------------------- entry


def match_split(rows: list[dict], score: ScoreFn) -> tuple[list[list[float]], list[list[float]]]:
    """(proxy, gold) per-prompt reward lists; the proxy scores each response keyed by (id, index)."""
    proxy = score_rows(rows, score)
    return ([[proxy[(r["id"], j)] for j in range(len(r["responses"]))] for r in rows],
            [list(map(float, r["rewards"])) for r in rows])


def run_match(splits: dict[str, str], score: ScoreFn, *, out: str | Path, tie_eps: float = 0.0,
              proxy_name: str = "proxy") -> dict:
    """Figures, diagnosis, match.json and scatter plots for each ``{split: labelled file}``."""
    from rm_ds.train.tracking import RunLogger

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; match writes a folder (match.json, scatter PNGs, tb/)")
    if not tie_eps >= 0:
        raise ConfigError(f"--tie-eps: must be >= 0, got {tie_eps}")
    labelled = {split: read_scored(path, need_rewards=True) for split, path in splits.items()}
    logger = RunLogger(out, enabled=True, tensorboard=True)
    figures: dict[str, dict[str, float]] = {}
    try:
        for split, path in splits.items():
            proxy, gold = match_split(labelled[split], score)
            figures[split] = match_figures(proxy, gold, tie_eps=tie_eps)
            if figures[split]["n_pairs"] == 0:
                raise DataError(f"{path}: no two responses of one prompt have gold rewards more than "
                                f"--tie-eps {tie_eps:g} apart ({len(gold)} prompts): nothing to match")
            p = np.array([v for r in proxy for v in r])
            g = np.array([v for r in gold for v in r])
            logger.image(f"match/scatter_{split}", scatter_png(
                p, g, title=f"{split}: match {figures[split]['match_rate']:.3f}, "
                            f"spearman {figures[split]['spearman']:.3f}"), 0, filename=f"scatter_{split}.png")
            logger.log(f"match_{split}", 0, {k: v for k, v in figures[split].items() if k != "match_by_gold_gap"})
        findings = diagnose(figures)
        result = {"proxy": proxy_name, "files": splits, "tie_eps": tie_eps, "figures": figures,
                  "diagnosis": findings,
                  "checks": {"heldout_min_match": HELDOUT_MIN_MATCH, "train_min_match": TRAIN_MIN_MATCH,
                             "min_spread": MIN_SPREAD}}
        logger.write_json("match.json", result)
    finally:
        logger.close()
    return result


def format_report(result: dict) -> str:
    lines = ["== rm_ds match: proxy vs gold =="]
    keys = ("match_rate", "n_pairs", "spearman", "kendall", "spread_std", "spread_iqr", "proxy_std", "gold_std")
    for split, f in result["figures"].items():
        lines.append(f"{split:8s} " + "  ".join(f"{k} {f[k]:.4g}" for k in keys))
        if f.get("match_by_gold_gap"):
            lines.append(f"{split:8s} match rate by gold gap (quartiles, smallest first): " + ", ".join(
                f"{b['gap_min']:.3g}-{b['gap_max']:.3g}: {b['match_rate']:.3f} ({b['n_pairs']})"
                for b in f["match_by_gold_gap"]))
    lines += [f"diagnosis: {d}" for d in result["diagnosis"]] or ["diagnosis: all checks passed"]
    if "heldout" in result["figures"]:
        lines.append(f"held-out match rate: {result['figures']['heldout']['match_rate']:.4f}")
    return "\n".join(lines)


@dataclass(frozen=True)
class MatchOptions:
    """``rm-ds match``'s command line (``rm_ds.cli``)."""

    proxy: str
    heldout: str
    out: Path
    train: str | None = None
    step: str | None = None
    tie_eps: float = 0.0
    dtype: str = "fp32"


def main(args: MatchOptions) -> int:
    """The ``rm-ds match`` entry."""
    from rm_ds.serve.scorer import load_scorer

    splits = {"heldout": args.heldout}
    if args.train:
        splits["train"] = args.train
    scorer = []

    def score(prompts: list, responses: list) -> np.ndarray:  # the proxy loads once the files are read
        if not scorer:
            scorer.append(load_scorer(args.proxy, step=args.step, dtype=args.dtype))
        return scorer[0].score_responses(prompts, responses)

    result = run_match(splits, score, out=args.out, tie_eps=args.tie_eps, proxy_name=args.proxy)
    print(format_report(result), flush=True)
    print(f"match: wrote {Path(args.out) / 'match.json'}", flush=True)
    return 0
