"""Validate one raw row of preference data into the canonical columns (``rm_ds.data.pairs``).

``row`` checks and normalises one row under ``PairFields`` (which input field holds the prompt, the
two responses, the id, margin, weight and source); an invalid row raises ``Invalid``, whose ``reason``
is the count key under ``data.skip_invalid`` and whose ``detail`` names the field::

    field 'rejected': empty or whitespace-only

Strings must be valid Unicode: a JSON escape of a lone surrogate (``"\\ud800"``) is an error in that
field, like any other invalid value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rm_ds.data.formats import Candidate

if TYPE_CHECKING:
    from rm_ds.data.readers import Rows

__all__ = ["MAX_ABS_MARGIN", "MAX_WEIGHT", "Invalid", "PairFields", "candidate_row",
           "objective_prefs", "pair_id", "pref", "row", "text_or_chat"]

MAX_WEIGHT = 1e3
"""Largest accepted per-pair loss weight: beyond it one pair swamps a batch (and 1e308 overflows)."""
MAX_ABS_MARGIN = 1e3
"""Largest accepted |margin|: margins are reward-scale offsets inside the sigmoid."""


@dataclass(frozen=True)
class PairFields:
    """Which input field holds each part of a pair (``data.prompt_field`` ... ``data.source_field``).

    ``None`` for ``id``, ``margin``, ``weight`` or ``source``: the data has no such field (a fallback id
    ``<file>:<row>``, margin 0, weight 1, source ""). ``prompt`` may be absent from the rows (text: "";
    chat: the common prefix of the two conversations)."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    id: str | None = "id"
    margin: str | None = None
    weight: str | None = None
    source: str | None = "source"

    def names(self) -> list[str]:
        """The field names to read, in order, without the absent ones."""
        return [f for f in (self.prompt, self.chosen, self.rejected, self.id, self.margin, self.weight,
                            self.source) if f is not None]


class Invalid(Exception):
    """One row is invalid: ``reason`` is the count key, ``detail`` the message after the location."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _get(raw: dict, f: str) -> Any:
    if f not in raw:
        raise Invalid(f"missing field '{f}'", f"field '{f}': missing")
    v = raw[f]
    if v is None:
        raise Invalid(f"None in field '{f}'", f"field '{f}': is null/None")
    return v


def _wrong_type(f: str, expected: str, v: Any) -> Invalid:
    return Invalid(
        f"wrong type in field '{f}'",
        f"field '{f}': expected {expected}, got {type(v).__name__}",
    )


def _unicode(v: str, f: str, what: str = "") -> str:
    """``v`` itself, if it is valid Unicode (json.loads lets lone surrogates like "\\ud800" through)."""
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise Invalid(
                f"invalid unicode in field '{f}'",
                f"field '{f}': {what}lone surrogate {v[e.start]!r} at character {e.start} is not valid "
                f"Unicode (an unpaired \\ud800-\\udfff escape; fix the text or the file's encoding)",
            ) from None
    return v


def _text(raw: dict, f: str, *, nonempty: bool) -> str:
    v = _get(raw, f)
    if not isinstance(v, str):
        raise _wrong_type(f, "a string", v)
    _unicode(v, f)
    if nonempty and not v.strip():
        raise Invalid(f"empty field '{f}'", f"field '{f}': empty or whitespace-only")
    return v


def _messages(v: Any, f: str) -> list[dict[str, str]]:
    """Validated copy of a message list with exactly the keys role and content."""
    if not isinstance(v, list):
        raise _wrong_type(f, "a list of messages", v)
    out = []
    for m in v:
        if isinstance(m, dict):
            role, content = m.get("role"), m.get("content")
            if isinstance(role, str) and isinstance(content, str) and role.strip():
                k = len(out)
                _unicode(role, f, f"message {k}: 'role': ")
                _unicode(content, f, f"message {k}: 'content': ")
                out.append({"role": role, "content": content})
                continue
        _bad_message(m, f, len(out))
    return out


def _bad_message(m: Any, f: str, k: int) -> None:
    if not isinstance(m, dict):
        bad = f"expected a {{'role', 'content'}} object, got {type(m).__name__}"
    else:
        bad = "empty 'role'"
        for key in ("role", "content"):
            if m.get(key) is None:
                bad = f"missing '{key}'"
                break
            if not isinstance(m[key], str):
                bad = f"'{key}' must be a string, got {type(m[key]).__name__}"
                break
    raise Invalid(
        f"invalid message in field '{f}'", f"field '{f}': message {k}: {bad}"
    )


def _number(raw: dict, f: str | None, default: float) -> float:
    if f is None:
        return default
    v = _get(raw, f)
    try:
        x = (
            float(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            else math.nan
        )
    except OverflowError:  # an int beyond float range
        x = math.nan
    if not math.isfinite(x):
        raise Invalid(
            f"not a finite number in field '{f}'",
            f"field '{f}': expected a finite number, got {v!r}",
        )
    return x


def _continuation(msgs: list[dict[str, str]], f: str) -> None:
    if not msgs:
        raise Invalid(
            f"empty field '{f}'", f"field '{f}': no messages after the prompt"
        )
    if msgs[-1]["role"] != "assistant":
        raise Invalid(
            f"last message not assistant in field '{f}'",
            f"field '{f}': the last message must have role 'assistant', got {msgs[-1]['role']!r}",
        )
    if not msgs[-1]["content"].strip():
        raise Invalid(
            f"empty field '{f}'",
            f"field '{f}': the last message's content is empty or whitespace-only",
        )


def _identical() -> Invalid:
    return Invalid(
        "identical chosen and rejected", "field 'rejected': identical to field 'chosen'"
    )


def _chat(raw: dict, fl: PairFields, *, has_prompt: bool) -> tuple[list, list, list]:
    chosen = _messages(_get(raw, fl.chosen), fl.chosen)
    rejected = _messages(_get(raw, fl.rejected), fl.rejected)
    if has_prompt:
        p = _get(raw, fl.prompt)
        if isinstance(p, str):
            prompt = [{"role": "user", "content": _unicode(p, fl.prompt)}] if p else []
        else:
            prompt = _messages(p, fl.prompt)
        n = len(prompt)
        if n and chosen[:n] == prompt:
            chosen = chosen[n:]
        if n and rejected[:n] == prompt:
            rejected = rejected[n:]
        if prompt and prompt[-1]["role"] == "assistant":
            raise Invalid(f"prompt ends with an assistant turn in field '{fl.prompt}'",
                          f"field '{fl.prompt}': ends with an 'assistant' turn (message {n - 1}): the responses "
                          f"must answer the prompt's last turn, not continue a reply")
        shared = fl.prompt
    else:
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        if len(chosen) == len(rejected) == n:
            raise _identical()
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        if prompt and prompt[-1]["role"] == "assistant" and chosen and rejected:
            raise Invalid("shared context ends with an assistant turn",
                          f"field '{fl.chosen}': the conversations share {n} messages ending with an 'assistant' "
                          f"turn: the two responses must answer the same last non-assistant turn")
        shared = "the shared prefix"
    _continuation(chosen, fl.chosen)
    _continuation(rejected, fl.rejected)
    for f, rest in ((fl.chosen, chosen), (fl.rejected, rejected)):
        if len(rest) > 1:  # the conversations differ before their last assistant turn
            raise Invalid(f"conversations differ before the last assistant turn in field '{f}'",
                          f"field '{f}': {len(rest)} messages after {shared} ({len(prompt)} messages), expected "
                          f"one final 'assistant' reply: its earlier turns differ from the other response's, so "
                          f"the two responses answer different contexts")
    if [(m["role"], m["content"].strip()) for m in chosen] == [
        (m["role"], m["content"].strip()) for m in rejected
    ]:
        raise _identical()
    return prompt, chosen, rejected


def row(
    raw: dict, fl: PairFields, *, fmt: str, has_prompt: bool, fmt_origin: str
) -> dict[str, Any]:
    """Canonical columns of one raw row, except pair_id and row; raises Invalid."""
    if fmt == "text":
        for f in (fl.chosen, fl.rejected):
            v = _get(raw, f)
            if isinstance(v, list):
                raise _wrong_type(
                    f, f"a string (the data is text format, {fmt_origin})", v
                )
        prompt = _text(raw, fl.prompt, nonempty=False) if has_prompt else ""
        chosen = _text(raw, fl.chosen, nonempty=True)
        rejected = _text(raw, fl.rejected, nonempty=True)
        if chosen.strip() == rejected.strip():
            raise _identical()
    else:
        for f in (fl.chosen, fl.rejected):
            v = _get(raw, f)
            if isinstance(v, str):
                raise _wrong_type(
                    f, f"a list of messages (the data is chat format, {fmt_origin})", v
                )
        prompt, chosen, rejected = _chat(raw, fl, has_prompt=has_prompt)
    margin = _number(raw, fl.margin, 0.0)
    weight = _number(raw, fl.weight, 1.0)
    if weight < 0:
        raise Invalid(
            f"negative weight in field '{fl.weight}'",
            f"field '{fl.weight}': must be >= 0, got {weight}",
        )
    if weight > MAX_WEIGHT:
        raise Invalid(
            f"weight out of range in field '{fl.weight}'",
            f"field '{fl.weight}': must be <= {MAX_WEIGHT:g}, got {weight:g}",
        )
    if abs(margin) > MAX_ABS_MARGIN:
        raise Invalid(
            f"margin out of range in field '{fl.margin}'",
            f"field '{fl.margin}': must be within [-{MAX_ABS_MARGIN:g}, {MAX_ABS_MARGIN:g}], got {margin:g}",
        )
    source = ""
    if fl.source is not None and raw.get(fl.source) is not None:
        source = raw[fl.source]
        if not isinstance(source, str):
            raise _wrong_type(fl.source, "a string", source)
        _unicode(source, fl.source)
    return {
        "format": fmt,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "margin": margin,
        "weight": weight,
        "source": source,
    }


def pair_id(raw: dict, fl: PairFields, fallback: str) -> str:
    if fl.id is None or raw.get(fl.id) is None or raw.get(fl.id) == "":
        return fallback
    v = raw[fl.id]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise _wrong_type(fl.id, "a string or integer", v)
    return _unicode(v, fl.id) if isinstance(v, str) else str(v)


def text_or_chat(sources: list[Rows], chosen: str) -> tuple[str, str]:
    """("text" | "chat", where that was decided) from the first row whose chosen is a str or list."""
    for src in sources:
        for i, r in enumerate(src.rows):
            if isinstance(r, dict):
                v = r.get(chosen)
                if isinstance(v, str):
                    return "text", f"as {src.where(i)} says"
                if isinstance(v, list):
                    return "chat", f"as {src.where(i)} says"
    return "text", "by default"


def pref(raw: dict, f: str) -> float:
    p = _number(raw, f, 1.0)
    if not 0.0 <= p <= 1.0:
        raise Invalid(f"preference out of range in field '{f}'", f"field '{f}': must be in [0, 1], got {p}")
    return p


def objective_prefs(raw: dict, f: str, objectives: Sequence[str]) -> list[float]:
    """{objective: p or null} -> one p per objective in order, NaN where absent or null (unlabelled)."""
    v = _get(raw, f)
    if not isinstance(v, dict):
        raise _wrong_type(f, "an object {objective: p}", v)
    unknown = sorted(set(v) - set(objectives))
    if unknown:
        raise Invalid(f"unknown objective in field '{f}'",
                       f"field '{f}': unknown objective {unknown[0]!r} (model.objectives: {list(objectives)})")
    out = [math.nan if v.get(o) is None else pref({f"{f}.{o}": v[o]}, f"{f}.{o}") for o in objectives]
    if all(math.isnan(p) for p in out):
        raise Invalid(f"no objective labelled in field '{f}'", f"field '{f}': labels none of {list(objectives)}")
    return out



def candidate_row(cand: Candidate, kind: str, origin: str) -> dict[str, Any]:
    """Validate one converted pair like a pairs row; field names in errors are the input's own."""
    l_prompt, l_chosen, l_rejected = cand.labels
    raw = {l_prompt: cand.prompt, l_chosen: cand.chosen, l_rejected: cand.rejected}
    fl = PairFields(prompt=l_prompt, chosen=l_chosen, rejected=l_rejected, id=None, margin=None, weight=None,
                 source=None)
    out = row(raw, fl, fmt=kind, has_prompt=True, fmt_origin=origin)
    out.update(margin=float(cand.margin), weight=float(cand.weight), source=cand.source, pref=float(cand.pref))
    return out
