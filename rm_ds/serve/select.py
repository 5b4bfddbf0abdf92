"""``rm-ds select``: the k most informative unlabeled pairs, in a file ``rm-ds train`` reads.

    rm-ds select --model A [--model B ...] --pool unlabeled.jsonl --k 200 --by margin|ensemble_std|entropy \\
                 [--dedupe] --out to_label.jsonl

The pool holds pairs (``prompt``/``chosen``/``rejected``; their order carries no label) or candidate
responses (``{"id", "prompt", "responses": [...]}``: every two responses of a prompt form a
candidate pair, and a prompt offers at most its best one). Informativeness, larger = picked first:

- ``margin``: ``-|r_a - r_b|`` (ensemble-mean rewards): the model cannot tell the two apart;
- ``entropy``: the binary entropy of the ensemble-mean calibrated P(a beats b);
- ``ensemble_std``: the std over models of the margin ``r_a - r_b`` (needs two or more models).

``--dedupe`` walks the ranking and skips a pair whose prompt's character trigrams overlap a picked
prompt's by at least the threshold (Jaccard); skips are counted. Each output row is a pair with the
currently preferred response as ``chosen``, plus ``select_by``, ``select_score``, ``p_chosen`` and the
source row's ``id``: a labeller swaps ``chosen``/``rejected`` where the model is wrong.
"""

from __future__ import annotations

import logging
import re
from itertools import combinations
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rm_ds.data.jsonl import write_jsonl
from rm_ds.serve.score_file import read_input
from rm_ds.serve.scorer import check_ensemble, load_scorer
from rm_ds.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CRITERIA = ("margin", "ensemble_std", "entropy")


def trigrams(text) -> set[str]:
    s = text if isinstance(text, str) else " ".join(m["content"] for m in text)
    s = re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", s.lower())).strip()
    return {s[i:i + 3] for i in range(max(1, len(s) - 2))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


def informativeness(by: str, margins: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per pair, larger = more informative; ``margins`` and ``probs`` are (M, N) over models."""
    if by == "margin":
        return -np.abs(margins.mean(0))
    if by == "entropy":
        p = np.clip(probs.mean(0), 1e-12, 1 - 1e-12)
        return -(p * np.log(p) + (1 - p) * np.log(1 - p))
    if by == "ensemble_std":
        if margins.shape[0] < 2:
            raise ConfigError("--by ensemble_std needs two or more --model")
        return margins.std(0)
    raise ValueError(f"--by {by!r}: expected one of {CRITERIA}")


def pick(scores: np.ndarray, prompts: list, k: int, *, groups: list[int] | None = None, dedupe: bool = False,
         threshold: float = 0.8) -> tuple[list[int], dict[str, int]]:
    """Indices of the k best-scoring pairs (one per group), skipping near-duplicate prompts when asked."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    chosen, seen_groups, grams, counts = [], set(), [], {"near_duplicate_prompt": 0}
    for i in order.tolist():
        if len(chosen) >= k:
            break
        if groups is not None and groups[i] in seen_groups:
            continue
        if dedupe:
            g = trigrams(prompts[i])
            if any(jaccard(g, h) >= threshold for h in grams):
                counts["near_duplicate_prompt"] += 1
                continue
            grams.append(g)
        chosen.append(i)
        if groups is not None:
            seen_groups.add(groups[i])
    return chosen, counts


def select(models: list[str], pool: str, *, k: int, by: str, dedupe: bool = False, threshold: float = 0.8,
           step: str | None = None, token_budget: int | None = None, allow_pad_eq_eos: bool = False) -> list[dict]:
    if k < 1:
        raise ConfigError(f"--k: must be >= 1, got {k}")
    if by == "ensemble_std" and len(models) < 2:
        raise ConfigError("--by ensemble_std needs two or more --model")
    inp = read_input(pool)
    if inp.kind == "responses":
        raise DataError(f"{pool}: select needs pairs (prompt/chosen/rejected) or rows with a 'responses' list")
    if inp.kind == "pairs":
        prompts, a, b, ids, groups = inp.prompts, inp.chosen, inp.rejected, inp.ids, None
    else:  # candidate responses: every two responses of one prompt
        prompts, a, b, ids, groups = [], [], [], [], []
        by_row: dict[int, list[int]] = {}
        for j, o in enumerate(inp.owner):
            by_row.setdefault(o, []).append(j)
        for o, members in by_row.items():
            for x, y in combinations(members, 2):
                prompts.append(inp.prompts[x])
                a.append(inp.chosen[x])
                b.append(inp.chosen[y])
                ids.append(str(inp.rows[o].get("id", o)))
                groups.append(o)
    scorers = [load_scorer(m, step=step, token_budget=token_budget, allow_pad_eq_eos=allow_pad_eq_eos) for m in models]
    check_ensemble(scorers)
    margins, probs = [], []
    for s in scorers:
        rc, rr = s.score_pairs(prompts, a, b)
        margins.append(rc - rr)
        probs.append(s.probability(rc, rr))
    margins, probs = np.stack(margins), np.stack(probs)
    scored = ~np.isnan(margins).any(0)
    scores = np.where(scored, informativeness(by, np.nan_to_num(margins), np.nan_to_num(probs, nan=0.5)), -np.inf)
    picked, counts = pick(scores, prompts, min(k, int(scored.sum())), groups=groups, dedupe=dedupe,
                          threshold=threshold)
    counts["not_scored"] = int((~scored).sum())
    rows = []
    for i in picked:
        a_first = margins[:, i].mean() >= 0
        rows.append({"id": f"{ids[i]}:select", "source_id": ids[i], "prompt": prompts[i],
                     "chosen": a[i] if a_first else b[i], "rejected": b[i] if a_first else a[i],
                     "select_by": by, "select_score": float(scores[i]),
                     "p_chosen": float(probs[:, i].mean() if a_first else 1 - probs[:, i].mean())})
    log.info("rm-ds select: %d of %d candidate pairs picked by %s (skipped: %s)", len(rows), len(prompts), by, counts)
    print(f"rm-ds select: {len(rows)} of {len(prompts)} candidate pairs picked by {by}; skipped {counts}", flush=True)
    return rows


@dataclass(frozen=True)
class SelectOptions:
    """``rm-ds select``'s command line (``rm_ds.cli``)."""

    model: list[str]
    pool: str
    out: str
    k: int
    by: str
    dedupe: bool = False
    dedupe_threshold: float = 0.8
    step: str | None = None
    token_budget: int | None = None
    allow_pad_eq_eos: bool = False


def main(opts: SelectOptions) -> int:
    """The ``rm-ds select`` entry."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if not 0.0 <= opts.dedupe_threshold <= 1.0:
        raise ConfigError(f"--dedupe-threshold: must be in [0, 1], got {opts.dedupe_threshold}")
    if Path(opts.out).resolve() == Path(opts.pool).resolve():
        raise ConfigError(f"--out {opts.out}: is the pool file; write the selection to another file")
    rows = select(opts.model, opts.pool, k=opts.k, by=opts.by, dedupe=opts.dedupe, threshold=opts.dedupe_threshold,
                  step=opts.step, token_budget=opts.token_budget, allow_pad_eq_eos=opts.allow_pad_eq_eos)
    write_jsonl(opts.out, rows)
    print(f"wrote {opts.out}", flush=True)
    return 0
