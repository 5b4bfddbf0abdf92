"""Load preference pairs from local files or the hub into one canonical ``datasets.Dataset``.

Example: ``ds, report = load_pairs("data/wordnet/train.jsonl")``

Every loaded dataset has these columns, whatever the input looked like::

    pair_id  str    the id field's value (as str) if the rows carry one, else "<file>:<row>" (the file's
                    stem; when several files share a stem, its path relative to their common folder)
    format   str    "text" or "chat" (one value for the whole dataset)
    prompt   str | list[{"role", "content"}]   text: a string ("" if the file has no prompt field)
    chosen   str | list[{"role", "content"}]   chat: only the continuation after the prompt
    rejected str | list[{"role", "content"}]
    margin   float  default 0.0; finite, |margin| <= MAX_ABS_MARGIN (1e3)
    weight   float  default 1.0; finite, 0 <= weight <= MAX_WEIGHT (1e3)
    source   str    default ""
    row      int    where the pair came from: the 1-based line of a .jsonl file, else the 0-based row

A chat row without a prompt field has an implicit prompt: the longest common prefix of the chosen
and rejected message lists; chosen/rejected keep the rest, which must end with an "assistant" turn.
With a prompt field (a string becomes one "user" message), a chosen/rejected list that starts with
the prompt messages has them removed, so full conversations and bare continuations both work.

Reading is ``rm_ds.data.readers`` (files, folders, globs, the hub), row validation is
``rm_ds.data.validate`` (``PairFields`` names the input's fields); this module assembles. Errors are
``DataError`` and name the file, the row and the field::

    train.jsonl line 17: field 'rejected': empty or whitespace-only

Strings must be valid Unicode: a JSON escape of a lone surrogate (``"\\ud800"``) is an error in that
field, like any other invalid value (and is skipped and counted under ``skip_invalid``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets.table import InMemoryTable

from rm_ds.data.formats import FORMATS, FormatOptions, RowError, convert, detect_format, detect_rows, group_rows
from rm_ds.data.jsonl import BadLine
from rm_ds.data.readers import Rows, not_read, read_all, scored_folder
from rm_ds.data.scored import SCORED_FILES
from rm_ds.data.validate import Invalid, PairFields, candidate_row, objective_prefs, pair_id, pref, row, text_or_chat
from rm_ds.errors import DataError

__all__ = ["CHAT_FEATURES", "TEXT_FEATURES", "FormatOptions", "LoadReport", "PairFields", "load_pairs"]

MAX_EXAMPLES = 5
"""Skip messages kept in full in ``LoadReport.examples``."""

_MESSAGES = datasets.List(
    {"role": datasets.Value("string"), "content": datasets.Value("string")}
)
_COMMON = {
    "margin": datasets.Value("float64"),
    "weight": datasets.Value("float64"),
    "source": datasets.Value("string"),
    "row": datasets.Value("int64"),
}
TEXT_FEATURES = datasets.Features(
    {
        "pair_id": datasets.Value("string"),
        "format": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "chosen": datasets.Value("string"),
        "rejected": datasets.Value("string"),
        **_COMMON,
    }
)
CHAT_FEATURES = datasets.Features(
    {
        "pair_id": datasets.Value("string"),
        "format": datasets.Value("string"),
        "prompt": _MESSAGES,
        "chosen": _MESSAGES,
        "rejected": _MESSAGES,
        **_COMMON,
    }
)


PROVENANCE = {
    "pref": datasets.Value("float64"),
    "file": datasets.Value("string"),
    "orig_id": datasets.Value("string"),
}
PREFS_FEATURE = datasets.List(datasets.Value("float64"))
"""``prefs`` (with objectives): one preference probability per objective, NaN where unlabelled."""
"""Columns added for converted formats (and ``pref`` with ``pref_field``): the preference probability
(1 = chosen preferred, 0.5 = tie), the file (or hub split) the pair came from and the input's own id."""


@dataclass
class LoadReport:
    """What ``load_pairs`` read, kept and skipped."""

    source: str
    """The path or dataset name as given."""
    n_rows: int
    """Rows in the input (non-blank lines for .jsonl), all files together."""
    n_loaded: int
    """Valid pairs kept (after ``max_pairs``)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Reason (e.g. "missing field 'chosen'") -> number of rows skipped for it (skip_invalid=True)."""
    examples: list[str] = field(default_factory=list)
    """The first few skip messages in full, with file, row and field."""
    format: str = "pairs"
    """The format the rows were read as (data.format, or what auto detected)."""
    format_reason: str = field(default="", compare=False)
    """Why: the config key, or the columns auto detection saw."""
    filtered: dict[str, int] = field(default_factory=dict)
    """Reason -> pairs left out by the format's rules (ties with data.ties=skip, SHP score ratio, ...)."""
    n_ties: int = 0
    """Tied pairs found (kept with pref 0.5 under data.ties=train, else counted in ``filtered``)."""
    not_read: list[str] = field(default_factory=list)
    """Entries of the folder or glob that were not read, each ``"name (why)"`` (other file types, sub-folders)."""
    fingerprint: str = field(default="", compare=False)
    """What was read, for cache keys: sha256 over every resolved file's name, size and bytes, or a hub
    dataset's ``datasets`` fingerprint (which covers the revision it was loaded at)."""

    def summary(self) -> str:
        """One line for the load log: format, counts, skips and filters."""
        s = f"format {self.format} ({self.format_reason}): {self.n_loaded} pairs from {self.n_rows} rows"
        if self.skipped:
            s += f"; {sum(self.skipped.values())} invalid rows skipped {dict(self.skipped)}"
        if self.n_ties:
            s += f"; {self.n_ties} ties"
        if self.filtered:
            s += f"; filtered {dict(self.filtered)}"
        if self.not_read:
            s += f"; {len(self.not_read)} entries of the folder not read: {', '.join(self.not_read)}"
        return s


class _Collector:
    """The tail both loading paths share: skips counted (or raised), ids kept unique, ``max_pairs``
    honoured, columns built straight into one arrow table."""

    def __init__(self, report: LoadReport, columns: Iterator[str] | list[str], *, skip_invalid: bool,
                 max_pairs: int | None) -> None:
        self.report = report
        self.cols: dict[str, list[Any]] = {k: [] for k in columns}
        self.skip_invalid = skip_invalid
        self.max_pairs = max_pairs
        self.first_seen: dict[str, str] = {}

    def full(self) -> bool:
        return self.max_pairs is not None and len(self.cols["row"]) >= self.max_pairs

    def invalid(self, reason: str, msg: str) -> None:
        """A row that is not a pair: a DataError, or skipped and counted under ``skip_invalid``."""
        if not self.skip_invalid:
            raise DataError(msg) from None
        self.report.skipped[reason] = self.report.skipped.get(reason, 0) + 1
        if len(self.report.examples) < MAX_EXAMPLES:
            self.report.examples.append(msg)

    def filtered(self, reason: str, n: int = 1) -> None:
        """Pairs the format's rules leave out (not errors)."""
        self.report.filtered[reason] = self.report.filtered.get(reason, 0) + n

    def first_at(self, pid: str) -> str | None:
        """Where ``pid`` was first taken, or None if it is new."""
        return self.first_seen.get(pid)

    def add(self, out: dict[str, Any], *, pid: str, where: str) -> None:
        self.first_seen[pid] = where
        out["pair_id"] = pid
        for k, v in out.items():
            self.cols[k].append(v)

    def dataset(self, features: datasets.Features, *, none_left: str) -> tuple[datasets.Dataset, LoadReport]:
        """The canonical dataset; zero pairs is the DataError ``none_left``."""
        if not self.cols["row"]:
            raise DataError(none_left)
        self.report.n_loaded = len(self.cols["row"])
        # straight to arrow: Dataset.from_dict would re-encode every value in Python (several times slower)
        table = pa.Table.from_pydict(self.cols, schema=features.arrow_schema)
        return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features)), self.report


def _report(path_or_name: str, sources: list[Rows], fmt: str, why: str) -> LoadReport:
    return LoadReport(
        source=path_or_name, n_rows=sum(len(s.rows) for s in sources), n_loaded=0, format=fmt, format_reason=why,
        not_read=not_read(path_or_name) if len(sources) > 1 or not Path(path_or_name).is_file() else [],
        fingerprint=hashlib.sha256("\0".join(s.fingerprint for s in sources).encode()).hexdigest(),
    )


def _detect(path_or_name: str, sources: list[Rows]) -> tuple[str, str]:
    """data.format=auto: the shape every row shows (a row of another shape is a DataError naming it)."""
    try:
        found = detect_rows((src.where(i), r) for src in sources for i, r in enumerate(src.rows))
    except ValueError as e:
        raise DataError(str(e)) from None
    if found is None:  # no row shows a shape: the columns decide (validation names what is missing)
        present = set().union(*(src.present for src in sources))
        return detect_format(present, None)
    fmt, why, where = found
    return fmt, f"{why}, as {where} and every other row show"


# ---------------------------------------------------------------- entry point


def load_pairs(
    path_or_name: str,
    *,
    split: str | None = None,
    fields: PairFields | None = None,
    skip_invalid: bool = False,
    max_pairs: int | None = None,
    format: str = "auto",
    options: FormatOptions | None = None,
) -> tuple[datasets.Dataset, LoadReport]:
    """Read preference pairs into a canonical dataset (columns in the module docstring).

    ``path_or_name``: a ``.jsonl``/``.jsonl.gz``/``.json``/``.parquet``/``.arrow`` file, a directory of
    them, a glob, or else a hub dataset name (``split`` is used only there; needs network). ``fields``
    names the input's fields (``data.prompt_field`` ...). Invalid rows raise DataError unless
    ``skip_invalid``, which drops and counts them. ``max_pairs`` keeps the first N valid pairs (rows
    after those are not validated). Zero valid pairs is always a DataError.

    ``format``: ``auto`` (detected from the columns, see ``rm_ds.data.formats.detect_format``), ``pairs``
    (the fields above), or a published shape (``hh``, ``shp``, ``ultrafeedback``, ``helpsteer``,
    ``scored``), converted by ``rm_ds.data.formats`` under ``options``; those datasets also carry the
    ``PROVENANCE`` columns. The report names the format and why it was chosen.
    """
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1 or None, got {max_pairs}")
    fl = fields or PairFields()
    wanted = fl.names()
    opts = options or FormatOptions()
    if format not in ("auto", *FORMATS):
        raise ValueError(f"format must be auto or one of {', '.join(FORMATS)}, got {format!r}")
    if opts.pref_field is not None:
        wanted.append(opts.pref_field)
    if opts.objectives:
        wanted.append(opts.objectives_field)
    scored = scored_folder(path_or_name) if format in ("auto", "scored") else None
    if scored is not None:
        sources = [scored]
        fmt, why = "scored", f"a folder with {', '.join(SCORED_FILES)}"
    else:
        def pick(cols: set[str]) -> list[str]:
            f = format if format != "auto" else detect_format(cols, None)[0]
            return wanted if f == "pairs" else sorted(cols)

        sources = read_all(path_or_name, split=split, wanted=pick)
        if format == "auto":
            fmt, why = _detect(path_or_name, sources)
        else:
            fmt, why = format, f"data.format={format}"
    if fmt != "pairs" and opts.objectives:
        raise DataError(f"{path_or_name}: several objectives (model.objectives) are read from pairs rows with a "
                        f"'{opts.objectives_field}' field; this data is format {fmt} ({why})")
    if fmt != "pairs":
        return _load_converted(sources, fmt, why, opts, path_or_name=path_or_name, skip_invalid=skip_invalid,
                               max_pairs=max_pairs)

    for src in sources:
        required = [fl.chosen, fl.rejected, fl.margin, fl.weight]
        if fl.prompt != "prompt":  # an explicitly named prompt field must exist
            required.append(fl.prompt)
        for f in required:
            if f is not None and f not in src.present and any(isinstance(r, dict) for r in src.rows):
                raise DataError(f"{src.name}: field '{f}' occurs in no row (fields: {sorted(src.present)})")
    kind, kind_origin = text_or_chat(sources, fl.chosen)

    columns = [*TEXT_FEATURES] + (["pref"] if opts.pref_field is not None else []) + (
        ["prefs"] if opts.objectives else [])
    out_ = _Collector(_report(path_or_name, sources, "pairs", why), columns, skip_invalid=skip_invalid,
                      max_pairs=max_pairs)
    for src in sources:
        for i, raw in enumerate(src.rows):
            if out_.full():
                break
            try:
                if isinstance(raw, BadLine):
                    raise Invalid(raw.reason, raw.detail)
                out = row(raw, fl, fmt=kind, has_prompt=fl.prompt in src.present, fmt_origin=kind_origin)
                if opts.pref_field is not None:
                    out["pref"] = pref(raw, opts.pref_field)
                if opts.objectives:
                    out["prefs"] = objective_prefs(raw, opts.objectives_field, opts.objectives)
                pid = pair_id(raw, fl, f"{src.stem}:{src.locs[i]}")
                first = out_.first_at(pid)
                if first is not None:
                    f = fl.id or "pair_id"
                    what = (f"absent, and the numbered fallback id {pid!r} is already taken"
                            if fl.id and raw.get(fl.id) in (None, "") else f"duplicate pair id {pid!r}")
                    raise Invalid(f"duplicate id in field '{f}'", f"field '{f}': {what} (first at {first})")
            except Invalid as e:
                out_.invalid(e.reason, f"{src.where(i)}: {e.detail}")
                continue
            out["row"] = src.locs[i]
            out_.add(out, pid=pid, where=src.where(i))

    features = TEXT_FEATURES if kind == "text" else CHAT_FEATURES
    if opts.pref_field is not None:
        features = datasets.Features({**features, "pref": PROVENANCE["pref"]})
    if opts.objectives:
        features = datasets.Features({**features, "prefs": PREFS_FEATURE})
    r = out_.report
    return out_.dataset(features, none_left=f"{path_or_name}: no valid pairs in {r.n_rows} rows (skipped: "
                                            f"{r.skipped}; first problems: {r.examples})")


def _load_converted(sources: list[Rows], fmt: str, why: str, opts: FormatOptions, *, path_or_name: str,
                    skip_invalid: bool, max_pairs: int | None) -> tuple[datasets.Dataset, LoadReport]:
    """Rows of a published format -> canonical pairs with the PROVENANCE columns (``load_pairs``)."""
    out_ = _Collector(_report(path_or_name, sources, fmt, why), [*TEXT_FEATURES, *PROVENANCE],
                      skip_invalid=skip_invalid, max_pairs=max_pairs)
    report = out_.report
    kind = origin = None
    for src in sources:
        for unit in group_rows(fmt, src.rows):
            if out_.full():
                break
            rows = [src.rows[i] for i in unit]
            bad = next((k for k, r in enumerate(rows) if isinstance(r, BadLine)), None)
            if bad is not None:
                out_.invalid(rows[bad].reason, f"{src.where(unit[bad])}: {rows[bad].detail}")
                continue
            try:
                conv = convert(fmt, rows, opts)
            except RowError as e:
                out_.invalid(e.reason, f"{src.where(unit[e.member])}: {e.detail}")
                continue
            report.n_ties += conv.ties
            for reason, n in conv.filtered.items():
                out_.filtered(reason, n)
            for cand in conv.pairs:
                if out_.full():
                    break
                i = unit[cand.member]
                if kind is None:
                    kind = "chat" if isinstance(cand.chosen, list) else "text"
                    origin = f"as {src.where(i)} says"
                if cand.other is not None:  # a pair of two rows: named by both
                    pid = f"{src.stem}:{src.locs[i]}>{src.locs[unit[cand.other]]}"
                else:
                    pid = (cand.orig_id or f"{src.stem}:{src.locs[i]}") + (f":{cand.key}" if cand.key else "")
                try:
                    out = candidate_row(cand, kind, origin)
                    first = out_.first_at(pid)
                    if first is not None:
                        raise Invalid("duplicate pair id", f"duplicate pair id {pid!r} (first at {first})")
                except Invalid as e:
                    if e.reason == "identical chosen and rejected" and cand.key:  # two equal sampled responses
                        out_.filtered("identical responses")
                        continue
                    out_.invalid(e.reason, f"{src.where(i)}: {e.detail}")
                    continue
                out.update(row=src.locs[i], file=src.name, orig_id=cand.orig_id)
                out_.add(out, pid=pid, where=src.where(i))

    features = datasets.Features({**(TEXT_FEATURES if kind == "text" else CHAT_FEATURES), **PROVENANCE})
    return out_.dataset(features, none_left=f"{path_or_name}: no valid pairs in {report.n_rows} rows read as "
                                            f"format {fmt} ({why}; skipped: {report.skipped}; filtered: "
                                            f"{report.filtered}; first problems: {report.examples})")
