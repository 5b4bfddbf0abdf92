"""``rm-ds label``: a gold reward model scores every sampled response; winners become training pairs.

    rm-ds label --gold runs/default/export/final --samples samples.jsonl \
        --out-scored labelled.jsonl --out-pairs pairs.jsonl [--tie-eps 0.0] [--margin]

Input and ``--out-scored`` are scored-responses JSONL (defined in ``rm_ds.data.scored``); the output rows are the
input rows with ``rewards`` (and ``gold``, the scorer's name) added. Rewards are aligned by prompt id
and response index: every response becomes an item keyed ``(id, j)``, the items are scored in an
order of their own (longest first, which also keeps batches tight), and each reward goes back to
its key, so an order change anywhere between reading and scoring cannot misplace one.

``--out-pairs`` holds one pair per two responses of a prompt (all i < j; the usual n = 2 gives one):
the higher gold reward is ``chosen``; ``gold_chosen``/``gold_rejected`` record both rewards and, with
``--margin``, ``margin`` is their difference (train with ``data.margin_field=margin``); ``gold_pref`` is the
gold's own Bradley-Terry probability that ``chosen`` wins, sigmoid(gold_chosen - gold_rejected), a soft label
(train with ``data.pref_field=gold_pref`` to distil the gold's confidence instead of hard winners). A pair whose
gold rewards differ by at most ``tie_eps`` is a tie: skipped and counted, and the tie rate printed;
so are pairs of identical or empty responses, which a pair file cannot hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rm_ds.data.jsonl import write_jsonl
from rm_ds.data.scored import PairStats, make_pairs, read_scored
from rm_ds.errors import ConfigError, DataError

ScoreFn = Callable[[list, list], np.ndarray]
"""``score(prompts, responses) -> rewards`` of shape (N,) or (N, K): ``rm_ds.serve.scorer.Scorer.score_responses``."""


def score_rows(rows: list[dict], score: ScoreFn, *, objective: int | None = None) -> dict[tuple[str, int], float]:
    """Score every response once; returns ``{(prompt id, response index): reward}``.

    Items are sent longest first (not in file order) and mapped back by key.
    """
    keys = [(r["id"], j) for r in rows for j in range(len(r["responses"]))]
    text = {(r["id"], j): (r["prompt"], resp) for r in rows for j, resp in enumerate(r["responses"])}

    def size(k):
        p, resp = text[k]
        return len(resp) + (len(p) if isinstance(p, str) else sum(len(m.get("content", "")) for m in p))

    order = sorted(keys, key=lambda k: (-size(k), k))
    out = np.asarray(score([text[k][0] for k in order], [text[k][1] for k in order]), dtype=np.float64)
    if objective is not None and (out.ndim == 1 or out.shape[1] == 1) and objective != 0:
        raise ConfigError(f"--objective: {objective}, but the gold model gives one reward per response (only 0)")
    if out.ndim == 2:
        if out.shape[1] == 1:
            out = out[:, 0]
        elif objective is None:
            raise ConfigError(f"--objective: the gold model gives {out.shape[1]} objectives per response: pick one")
        else:
            if not 0 <= objective < out.shape[1]:
                raise ConfigError(f"--objective: {objective} is not in 0..{out.shape[1] - 1}")
            out = out[:, objective]
    if out.shape != (len(order),):
        got = out.shape[0] if out.ndim else 0
        raise DataError(f"the gold model returned {got} rewards for {len(order)} responses")
    if not np.all(np.isfinite(out)):
        bad = [order[i] for i in np.flatnonzero(~np.isfinite(out))[:3]]
        raise DataError(f"the gold model returned non-finite rewards (first at {bad})")
    return dict(zip(order, out.tolist()))


def attach_rewards(rows: list[dict], rewards: dict[tuple[str, int], float], *, gold: str | None = None) -> list[dict]:
    """Copies of ``rows`` with ``rewards`` (and ``gold``) set from the keyed rewards."""
    out = []
    for r in rows:
        new = dict(r)
        new["rewards"] = [rewards[(r["id"], j)] for j in range(len(r["responses"]))]
        if gold is not None:
            new["gold"] = gold
        out.append(new)
    return out


def label(samples: str, score: ScoreFn, *, out_scored: str, out_pairs: str | None, tie_eps: float = 0.0,
          margin: bool = False, gold: str | None = None, objective: int | None = None) -> PairStats:
    """Read, score, attach, pair, write. ``score`` is the gold model's ``score_responses``."""
    rows = read_scored(samples)
    labelled = attach_rewards(rows, score_rows(rows, score, objective=objective), gold=gold)
    pairs, stats = make_pairs(labelled, tie_eps=tie_eps, margin=margin)
    write_jsonl(out_scored, labelled)
    if out_pairs:
        if not pairs:
            raise DataError(f"{samples}: no pairs left ({stats.summary()})")
        write_jsonl(out_pairs, pairs)
    return stats


@dataclass(frozen=True)
class LabelOptions:
    """``rm-ds label``'s command line (``rm_ds.cli``)."""

    gold: str
    samples: str
    out_scored: str
    out_pairs: str | None = None
    step: str | None = None
    tie_eps: float = 0.0
    margin: bool = False
    objective: int | None = None
    dtype: str = "fp32"


def main(args: LabelOptions) -> int:
    """The ``rm-ds label`` entry."""
    from rm_ds.serve.scorer import load_scorer

    scorer = []

    def score(prompts: list, responses: list) -> np.ndarray:  # the gold model loads once the samples are read
        if not scorer:
            scorer.append(load_scorer(args.gold, step=args.step, dtype=args.dtype))
        return scorer[0].score_responses(prompts, responses)

    stats = label(args.samples, score, out_scored=args.out_scored, out_pairs=args.out_pairs,
                  tie_eps=args.tie_eps, margin=args.margin, gold=args.gold, objective=args.objective)
    print(f"label: {stats.summary()}", flush=True)
    print(f"label: wrote {args.out_scored}" + (f" and {args.out_pairs}" if args.out_pairs else ""), flush=True)
    return 0
