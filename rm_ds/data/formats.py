"""Published preference-data shapes -> rm_ds pairs: pure functions over raw rows (dicts).

``rm_ds.data.pairs.load_pairs`` reads the rows, picks a format (``detect_format`` for ``data.format=auto``)
and calls ``convert`` on each unit (one row, or for HelpSteer ratings every row of one prompt); the
``Candidate`` pairs it gets back are then validated like any pair (empty, identical, message shape).

Formats, with the columns each one reads (as the dataset cards document them):

============== ================================================================================
``pairs``      today's rows: ``prompt``/``chosen``/``rejected`` (text or messages), see rm_ds.data.pairs
``hh``         Anthropic/hh-rlhf: ``chosen``/``rejected`` full transcripts
               ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` (multi-turn), no prompt column. Split at the
               last shared turn: prompt = the shared turns as messages, chosen/rejected = the one
               final assistant turn of each (chat format, so the tokenizer's chat template applies)
``shp``        stanfordnlp/SHP: ``history`` (prompt), ``human_ref_A``/``human_ref_B``, ``labels``
               (1: A preferred, 0: B), ``score_A``/``score_B`` (``score_ratio`` if present),
               ``domain`` -> source, id ``post_id:c_root_id_A:c_root_id_B``; ``min_score_ratio``
``ultrafeedback`` binarized (HuggingFaceH4/ultrafeedback_binarized): ``prompt``, ``prompt_id``,
               ``chosen``/``rejected`` messages, ``score_chosen``/``score_rejected`` (equal = tie);
               raw (openbmb/UltraFeedback): ``instruction``, ``source``, ``completions`` with
               ``response`` and ``overall_score`` (``score="fine_grained"``: ``fine-grained_score``,
               else the mean of the numeric ``annotations.*.Rating``), paired by ``pairing``
``helpsteer``  nvidia/HelpSteer, HelpSteer2: one row per response, ``prompt``, ``response`` and 0-4
               ratings (``helpfulness``, ``correctness``, ...): responses to the same prompt are
               paired by ``pairing`` on the ``helpsteer_attribute`` rating; or HelpSteer2's
               preference file: ``prompt``, ``response_1``, ``response_2``, ``preference_strength``
               (-3..3, negative: response_1 better, 0: tie)
``scored``     ``{"id", "prompt", "responses": [...], "rewards": [...]}`` per row, or the folder form
               of three parallel JSON files (defined in ``rm_ds.data.scored``); paired by ``pairing``
               on the rewards
============== ================================================================================

Several rated responses -> pairs (``pairing``; the chosen one is always the higher rated):
``best_vs_worst`` (one pair: highest vs lowest, first index wins among equals), ``best_vs_random``
(highest vs one other drawn with ``random.Random(f"{seed}:{unit id}")``, so a row's draw does not
depend on the other rows), ``all_pairs`` (every two responses). Two scores within ``tie_eps`` make a
tie: ``ties="skip"`` drops it (counted), ``ties="train"`` keeps it with ``pref = 0.5``.

HelpSteer strength rule (``strength``), for s = |preference_strength| (of 3) or the rating difference
(of 4): ``hard``: pref 1; ``p``: ``pref = 0.5 + 0.5 * s / max`` (strength 1, 2, 3 -> 2/3, 5/6, 1);
``margin``: pref 1 and ``margin = s`` (the BT margin subtracted inside the sigmoid).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FORMATS",
    "Candidate",
    "FormatOptions",
    "RowError",
    "convert",
    "detect_format",
    "detect_rows",
    "format_options",
    "group_rows",
    "pair_indices",
    "parse_hh",
    "row_shape",
    "split_hh",
]

FORMATS = ("pairs", "hh", "shp", "ultrafeedback", "helpsteer", "scored")
PAIRINGS = ("best_vs_worst", "best_vs_random", "all_pairs")
HH_MARKER = re.compile(r"\n\n(Human|Assistant):[ ]?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass(frozen=True)
class FormatOptions:
    """How rows become pairs (the ``data.*`` keys of the same names)."""

    ties: str = "skip"
    """skip: drop tied pairs (counted); train: keep them with pref 0.5."""
    tie_eps: float = 0.0
    """Two scores within this distance are a tie."""
    pairing: str = "best_vs_worst"
    """best_vs_worst | best_vs_random | all_pairs, for several rated responses per prompt."""
    seed: int = 0
    """Seed of best_vs_random's draw."""
    min_score_ratio: float | None = None
    """SHP: drop pairs whose score ratio is below this (the SHP authors use 2)."""
    score: str = "overall"
    """UltraFeedback raw: overall (overall_score) or fine_grained (fine-grained_score / mean rating)."""
    helpsteer_attribute: str = "helpfulness"
    """HelpSteer ratings: the attribute whose rating orders the responses of a prompt."""
    strength: str = "p"
    """HelpSteer strength -> label: hard | p | margin (rule in the module docstring)."""
    pref_field: str | None = None
    """pairs: column holding a preference probability p in [0, 1] (1 = chosen preferred)."""
    objectives: tuple[str, ...] = ()
    """Several objectives (model.objectives): pairs rows carry ``objectives_field``."""
    objectives_field: str = "objectives"
    """pairs with objectives: column {objective: p or null}; a missing objective is unlabelled."""


def format_options(data_cfg: Any, *, objectives: Sequence[str] = ()) -> FormatOptions:
    """The FormatOptions of a ``DataConfig`` (its keys of the same meaning) and ``model.objectives``."""
    d = data_cfg
    return FormatOptions(ties=d.ties, tie_eps=d.tie_eps, pairing=d.pairing, seed=d.pairing_seed,
                         min_score_ratio=d.min_score_ratio, score=d.ultrafeedback_score,
                         helpsteer_attribute=d.helpsteer_attribute, strength=d.strength, pref_field=d.pref_field,
                         objectives=tuple(objectives), objectives_field=d.objectives_field)


class RowError(Exception):
    """A row cannot be converted; ``reason`` is the count key, ``detail`` the message after the location.

    ``member`` is the index of the offending row inside its unit (0 for single-row units).
    """

    def __init__(self, reason: str, detail: str, *, member: int = 0) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.member = reason, detail, member


@dataclass
class Candidate:
    """One pair from a unit, before validation; ``labels`` name the fields for error messages."""

    prompt: Any
    chosen: Any
    rejected: Any
    labels: tuple[str, str, str] = ("prompt", "chosen", "rejected")
    pref: float = 1.0
    margin: float = 0.0
    weight: float = 1.0
    source: str = ""
    tie: bool = False
    key: str = ""
    """Tells this pair from the others of its unit (e.g. "0>3": response 0 over 3); "" if the unit has one."""
    member: int = 0
    """Row of the unit the pair is located at (the chosen response's row)."""
    other: int | None = None
    """For pairs spanning two rows (HelpSteer ratings): the rejected response's row in the unit."""
    orig_id: str = ""
    """The input's own id for the unit ("" if it has none)."""


@dataclass
class Converted:
    """What one unit gave: pairs, and reasons -> counts of pairs filtered out (not errors)."""

    pairs: list[Candidate] = field(default_factory=list)
    filtered: dict[str, int] = field(default_factory=dict)
    ties: int = 0

    def drop(self, reason: str) -> None:
        self.filtered[reason] = self.filtered.get(reason, 0) + 1


# ---------------------------------------------------------------- detection


def detect_format(columns: set[str], first_row: dict | None) -> tuple[str, str]:
    """(format, why) from the columns present and the first row (HH and text pairs share columns)."""
    def has(*cols: str) -> bool:
        return all(c in columns for c in cols)

    if has("responses"):
        return "scored", "columns 'responses'/'rewards'"
    if has("human_ref_A", "human_ref_B", "labels"):
        return "shp", "columns 'human_ref_A', 'human_ref_B', 'labels'"
    if has("instruction", "completions"):
        return "ultrafeedback", "columns 'instruction', 'completions' (raw UltraFeedback)"
    if has("chosen", "rejected", "score_chosen", "score_rejected"):
        return "ultrafeedback", "columns 'chosen', 'rejected', 'score_chosen', 'score_rejected' (binarized)"
    if has("response_1", "response_2", "preference_strength"):
        return "helpsteer", "columns 'response_1', 'response_2', 'preference_strength' (HelpSteer2 preference)"
    if has("prompt", "response", "helpfulness"):
        return "helpsteer", "columns 'prompt', 'response', 'helpfulness' (per-response ratings)"
    if has("chosen", "rejected") and "prompt" not in columns and first_row is not None \
            and all(_looks_hh(first_row.get(f)) for f in ("chosen", "rejected")):
        return "hh", "'chosen'/'rejected' are '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts"
    return "pairs", "columns 'chosen'/'rejected'"


def row_shape(row: dict) -> tuple[str, str] | None:
    """(format, why) of one row by its own fields (``detect_format``), or None when it shows no shape
    (not even ``chosen``/``rejected``: validation then names what is missing)."""
    cols = set(row)
    fmt, why = detect_format(cols, row)
    if fmt == "pairs" and not {"chosen", "rejected"} <= cols:
        return None
    return fmt, why


def detect_rows(rows: Iterable[tuple[str, Any]]) -> tuple[str, str, str] | None:
    """(format, why, where) of the first row that shows a shape, after checking that every row shows the
    same one; ``rows`` yields (where, row). Raises ValueError naming the first row of another shape.
    None when no row shows one."""
    first: tuple[str, str, str] | None = None
    for where, r in rows:
        if not isinstance(r, dict):
            continue
        shape = row_shape(r)
        if shape is None:
            continue
        if first is None:
            first = (*shape, where)
        elif shape[0] != first[0]:
            raise ValueError(f"{where}: this row is format {shape[0]} ({shape[1]}), but {first[2]} is format "
                             f"{first[0]} ({first[1]}): one input holds one format (split the file, or set "
                             f"data.format to read every row as one format)")
    return first


def _looks_hh(v: Any) -> bool:
    """A transcript that starts with a Human turn and has an Assistant turn."""
    return isinstance(v, str) and v.lstrip("\n").startswith("Human:") and "\n\nAssistant:" in v


# ---------------------------------------------------------------- small validators


def _get(row: dict, f: str, *, member: int = 0) -> Any:
    if f not in row:
        raise RowError(f"missing field '{f}'", f"field '{f}': missing", member=member)
    if row[f] is None:
        raise RowError(f"None in field '{f}'", f"field '{f}': is null/None", member=member)
    return row[f]


def _str(v: Any, f: str, *, member: int = 0) -> str:
    if not isinstance(v, str):
        raise RowError(f"wrong type in field '{f}'", f"field '{f}': expected a string, got {type(v).__name__}",
                       member=member)
    return v


def _num(v: Any, f: str, *, member: int = 0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        x = math.nan
    else:
        try:
            x = float(v)
        except OverflowError:
            x = math.nan
    if not math.isfinite(x):
        raise RowError(f"not a finite number in field '{f}'", f"field '{f}': expected a finite number, got {v!r}",
                       member=member)
    return x


def _list(v: Any, f: str) -> list:
    if not isinstance(v, list):
        raise RowError(f"wrong type in field '{f}'", f"field '{f}': expected a list, got {type(v).__name__}")
    return v


def _orig_id(row: dict, f: str) -> str:
    v = row.get(f)
    if v is None or v == "":
        return ""
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise RowError(f"wrong type in field '{f}'", f"field '{f}': expected a string or integer, got "
                       f"{type(v).__name__}")
    return str(v)


def _source(row: dict, f: str) -> str:
    v = row.get(f)
    return v if isinstance(v, str) else ""


# ---------------------------------------------------------------- pairing


def pair_indices(scores: Sequence[float], *, pairing: str, tie_eps: float, rng: random.Random | None = None
                 ) -> list[tuple[int, int, bool]]:
    """(chosen, rejected, tie) index pairs of several scored responses under a pairing policy.

    >>> pair_indices([1.0, 3.0, 2.0], pairing="best_vs_worst", tie_eps=0.0)
    [(1, 0, False)]
    >>> pair_indices([1.0, 3.0, 1.0], pairing="all_pairs", tie_eps=0.0)
    [(1, 0, False), (0, 2, True), (1, 2, False)]
    """
    n = len(scores)
    if n < 2:
        return []
    order = sorted(range(n), key=lambda k: (-scores[k], k))  # best first; among equals the first index
    if pairing == "best_vs_worst":
        picks = [(order[0], order[-1])]
    elif pairing == "best_vs_random":
        if rng is None:
            raise ValueError("best_vs_random needs an rng")
        picks = [(order[0], rng.choice(order[1:]))]
    elif pairing == "all_pairs":
        picks = [(a, b) if scores[a] >= scores[b] else (b, a) for a in range(n) for b in range(a + 1, n)]
    else:
        raise ValueError(f"unknown pairing {pairing!r} (known: {', '.join(PAIRINGS)})")
    return [(i, j, abs(scores[i] - scores[j]) <= tie_eps) for i, j in picks]


def _scored_pairs(out: Converted, opts: FormatOptions, scores: list[float], unit_id: str, make) -> None:
    """Pairs of one unit's scored responses, ties handled; ``make(i, j)`` builds the Candidate."""
    rng = random.Random(f"{opts.seed}:{unit_id}") if opts.pairing == "best_vs_random" else None
    if len(scores) < 2:
        out.drop("fewer than 2 responses")
        return
    for i, j, tie in pair_indices(scores, pairing=opts.pairing, tie_eps=opts.tie_eps, rng=rng):
        _emit(out, opts, make(i, j), tie=tie)


def _emit(out: Converted, opts: FormatOptions, cand: Candidate, *, tie: bool) -> None:
    if tie:
        out.ties += 1
        if opts.ties == "skip":
            out.drop("tie (data.ties=skip)")
            return
        cand.pref, cand.margin, cand.tie = 0.5, 0.0, True
    out.pairs.append(cand)


# ---------------------------------------------------------------- HH


def parse_hh(text: str, f: str) -> list[dict[str, str]]:
    """An HH transcript ``"\\n\\nHuman: a\\n\\nAssistant: b ..."`` as chat messages (user/assistant)."""
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    marks = list(HH_MARKER.finditer(text))
    if not marks or marks[0].start() != 0:
        raise RowError(f"malformed HH transcript in field '{f}'",
                       f"field '{f}': expected a transcript starting with '\\n\\nHuman: '")
    msgs = []
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        msgs.append({"role": HH_ROLES[m.group(1)], "content": text[m.end():end]})
    for k in range(1, len(msgs)):
        if msgs[k]["role"] == msgs[k - 1]["role"]:
            raise RowError(f"malformed HH transcript in field '{f}'",
                           f"field '{f}': turns {k - 1} and {k} are both {msgs[k]['role']!r} (expected "
                           f"alternating Human/Assistant turns)")
    if msgs[0]["role"] != "user":
        raise RowError(f"malformed HH transcript in field '{f}'", f"field '{f}': the first turn must be 'Human:'")
    return msgs


def split_hh(chosen: str, rejected: str) -> tuple[list, list, list]:
    """(prompt messages, [chosen reply], [rejected reply]) split at the last shared turn boundary."""
    c, r = parse_hh(chosen, "chosen"), parse_hh(rejected, "rejected")
    n = 0
    while n < min(len(c), len(r)) and c[n] == r[n]:
        n += 1
    if len(c) == len(r) == n:
        raise RowError("identical chosen and rejected", "field 'rejected': identical to field 'chosen'")
    for f, rest in (("chosen", c[n:]), ("rejected", r[n:])):
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise RowError("HH transcripts do not share a prefix up to a final assistant turn",
                           f"field '{f}': the transcripts share {n} turns, then '{f}' has {len(rest)} more "
                           f"(expected exactly one final 'Assistant:' turn after the shared prompt)")
    return c[:n], c[n:], r[n:]


def _hh(rows: list[dict], opts: FormatOptions) -> Converted:
    row = rows[0]
    chosen, rejected = _str(_get(row, "chosen"), "chosen"), _str(_get(row, "rejected"), "rejected")
    prompt, c, r = split_hh(chosen, rejected)
    out = Converted()
    out.pairs.append(Candidate(prompt, c, r, orig_id=_orig_id(row, "id")))
    return out


# ---------------------------------------------------------------- SHP


def _shp(rows: list[dict], opts: FormatOptions) -> Converted:
    row = rows[0]
    label = _get(row, "labels")
    if isinstance(label, bool) or label not in (0, 1):
        raise RowError("invalid value in field 'labels'", f"field 'labels': expected 1 (A preferred) or 0 "
                       f"(B preferred), got {label!r}")
    a, b = ("human_ref_A", "human_ref_B") if label == 1 else ("human_ref_B", "human_ref_A")
    out = Converted()
    if opts.min_score_ratio is not None:
        if row.get("score_ratio") is not None:
            ratio = _num(row["score_ratio"], "score_ratio")
        else:
            sa, sb = _num(_get(row, "score_A"), "score_A"), _num(_get(row, "score_B"), "score_B")
            lo, hi = min(sa, sb), max(sa, sb)
            ratio = math.inf if lo <= 0 else hi / lo
        if ratio < opts.min_score_ratio:
            out.drop("score ratio below data.min_score_ratio")
            return out
    post = _orig_id(row, "post_id")
    key = f"{_orig_id(row, 'c_root_id_A')}:{_orig_id(row, 'c_root_id_B')}" if post else ""
    out.pairs.append(Candidate(_str(_get(row, "history"), "history"), _get(row, a), _get(row, b),
                               labels=("history", a, b), source=_source(row, "domain"), orig_id=post,
                               key=key if key != ":" else ""))
    return out


# ---------------------------------------------------------------- UltraFeedback


def _uf_score(c: dict, k: int, how: str) -> float:
    base = f"completions[{k}]"
    if how == "overall":
        return _num(_get(c, "overall_score"), f"{base}.overall_score")
    if c.get("fine-grained_score") is not None:
        return _num(c["fine-grained_score"], f"{base}.fine-grained_score")
    ann = c.get("annotations")
    ratings = []
    if isinstance(ann, dict):
        for aspect in ann.values():
            for a in aspect if isinstance(aspect, list) else [aspect]:
                v = a.get("Rating") if isinstance(a, dict) else None
                try:
                    ratings.append(float(v))
                except (TypeError, ValueError):  # "N/A"
                    pass
    if not ratings:
        raise RowError(f"missing field '{base}.fine-grained_score'", f"field '{base}.fine-grained_score': missing, "
                       f"and no numeric annotations.*.Rating to average")
    return sum(ratings) / len(ratings)


def _ultrafeedback(rows: list[dict], opts: FormatOptions) -> Converted:
    row = rows[0]
    out = Converted()
    if "completions" not in row and "instruction" not in row:  # binarized
        sc, sr = _num(_get(row, "score_chosen"), "score_chosen"), _num(_get(row, "score_rejected"), "score_rejected")
        cand = Candidate(_get(row, "prompt"), _get(row, "chosen"), _get(row, "rejected"),
                         orig_id=_orig_id(row, "prompt_id"), source=_source(row, "source"))
        _emit(out, opts, cand, tie=abs(sc - sr) <= opts.tie_eps)
        return out
    prompt = _str(_get(row, "instruction"), "instruction")
    comps = _list(_get(row, "completions"), "completions")
    responses, scores = [], []
    for k, c in enumerate(comps):
        if not isinstance(c, dict):
            raise RowError("wrong type in field 'completions'",
                           f"field 'completions[{k}]': expected an object, got {type(c).__name__}")
        if c.get("response") is None:
            raise RowError(f"missing field 'completions[{k}].response'", f"field 'completions[{k}].response': missing")
        responses.append(c["response"])
        scores.append(_uf_score(c, k, opts.score))
    uid = _orig_id(row, "id")
    src = _source(row, "source")

    def make(i: int, j: int) -> Candidate:
        return Candidate(prompt, responses[i], responses[j], labels=("instruction", f"completions[{i}].response",
                                                                     f"completions[{j}].response"),
                         key=f"{i}>{j}", source=src, orig_id=uid)

    _scored_pairs(out, opts, scores, uid or prompt, make)
    return out


# ---------------------------------------------------------------- HelpSteer


def _strength(out: Converted, opts: FormatOptions, cand: Candidate, s: float, s_max: float) -> None:
    if opts.strength == "p":
        cand.pref = min(1.0, 0.5 + 0.5 * s / s_max)
    elif opts.strength == "margin":
        cand.margin = s
    elif opts.strength != "hard":
        raise ValueError(f"unknown strength rule {opts.strength!r} (known: hard, p, margin)")
    _emit(out, opts, cand, tie=s <= opts.tie_eps)


def _helpsteer(rows: list[dict], opts: FormatOptions) -> Converted:
    out = Converted()
    if "preference_strength" in rows[0]:  # HelpSteer2 preference file: one row, two responses
        row = rows[0]
        s = _num(_get(row, "preference_strength"), "preference_strength")
        if not -3 <= s <= 3:
            raise RowError("invalid value in field 'preference_strength'",
                           f"field 'preference_strength': expected -3..3, got {s:g}")
        a, b = ("response_1", "response_2") if s <= 0 else ("response_2", "response_1")
        cand = Candidate(_get(row, "prompt"), _get(row, a), _get(row, b), labels=("prompt", a, b),
                         orig_id=_orig_id(row, "id"))
        _strength(out, opts, cand, abs(s), 3.0)
        return out
    attr = opts.helpsteer_attribute
    prompt = _str(_get(rows[0], "prompt"), "prompt")
    responses = [_str(_get(r, "response", member=k), "response", member=k) for k, r in enumerate(rows)]
    for k, resp in enumerate(responses):
        if not resp.strip():
            raise RowError("empty field 'response'", "field 'response': empty or whitespace-only", member=k)
    scores = [_num(_get(r, attr, member=k), attr, member=k) for k, r in enumerate(rows)]
    if len(rows) < 2:
        out.drop("fewer than 2 responses")
        return out
    rng = random.Random(f"{opts.seed}:{prompt}") if opts.pairing == "best_vs_random" else None
    for i, j, tie in pair_indices(scores, pairing=opts.pairing, tie_eps=opts.tie_eps, rng=rng):
        # the pair sits at the chosen response's row; its id names both rows' positions in the group
        cand = Candidate(prompt, responses[i], responses[j], labels=("prompt", "response", "other response"),
                         key=f"{i}>{j}", member=i, other=j)
        _strength(out, opts, cand, 0.0 if tie else scores[i] - scores[j], 4.0)
    return out


# ---------------------------------------------------------------- scored responses


def _scored(rows: list[dict], opts: FormatOptions) -> Converted:
    row = rows[0]
    prompt = _get(row, "prompt")
    responses = _list(_get(row, "responses"), "responses")
    if "rewards" not in row or row["rewards"] is None:
        raise RowError("missing field 'rewards'", "field 'rewards': missing (unlabelled scored responses: "
                       "label them first, e.g. with rm-ds label)")
    rewards = _list(row["rewards"], "rewards")
    if len(rewards) != len(responses):
        raise RowError("rewards and responses differ in length",
                       f"field 'rewards': {len(rewards)} rewards for {len(responses)} responses")
    scores = [_num(v, f"rewards[{k}]") for k, v in enumerate(rewards)]
    uid = _orig_id(row, "id")
    chat = isinstance(prompt, list)
    src = _source(row, "source")

    def as_resp(x: Any) -> Any:
        return [{"role": "assistant", "content": x}] if chat and isinstance(x, str) else x

    def make(i: int, j: int) -> Candidate:
        return Candidate(prompt, as_resp(responses[i]), as_resp(responses[j]),
                         labels=("prompt", f"responses[{i}]", f"responses[{j}]"), key=f"{i}>{j}", orig_id=uid,
                         source=src)

    out = Converted()
    _scored_pairs(out, opts, scores, uid or str(prompt), make)
    return out


# ---------------------------------------------------------------- entry points


CONVERTERS = {"hh": _hh, "shp": _shp, "ultrafeedback": _ultrafeedback, "helpsteer": _helpsteer, "scored": _scored}


def group_rows(fmt: str, rows: Sequence[Any]) -> list[list[int]]:
    """Indices of the rows that form one unit, in input order: HelpSteer per-response rows group by
    prompt (every row of one prompt, wherever it is); every other format is one row per unit.
    Non-dict rows (unparseable lines) stay units of their own."""
    if fmt != "helpsteer" or any(isinstance(r, dict) and "preference_strength" in r for r in rows[:1]):
        return [[i] for i in range(len(rows))]
    groups: dict[Any, list[int]] = {}
    units: list[list[int]] = []
    for i, r in enumerate(rows):
        p = r.get("prompt") if isinstance(r, dict) else None
        if not isinstance(p, str):
            units.append([i])
            continue
        if p not in groups:
            groups[p] = []
            units.append(groups[p])
        groups[p].append(i)
    return units


def convert(fmt: str, rows: list[dict], opts: FormatOptions) -> Converted:
    """The pairs of one unit (``rows``: one row, or a HelpSteer prompt's rows); raises RowError."""
    return CONVERTERS[fmt](rows, opts)
