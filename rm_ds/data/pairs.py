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

Errors are ``DataError`` and name the file, the row and the field::

    train.jsonl line 17: field 'rejected': empty or whitespace-only

Strings must be valid Unicode: a JSON escape of a lone surrogate (``"\\ud800"``) is an error in that
field, like any other invalid value (and is skipped and counted under ``skip_invalid``).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets.table import InMemoryTable

from rm_ds.data.formats import (
    FORMATS,
    SCORED_FILES,
    Candidate,
    FormatOptions,
    RowError,
    convert,
    detect_format,
    group_rows,
    scored_from_files,
)

__all__ = ["CHAT_FEATURES", "TEXT_FEATURES", "DataError", "FormatOptions", "LoadReport", "load_pairs"]

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")
MAX_EXAMPLES = 5
MAX_WEIGHT = 1e3
"""Largest accepted per-pair loss weight: beyond it one pair swamps a batch (and 1e308 overflows)."""
MAX_ABS_MARGIN = 1e3
"""Largest accepted |margin|: margins are reward-scale offsets inside the sigmoid."""

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


class DataError(ValueError):
    """Bad input data; the message names the file (or dataset), the row or line, and the field."""


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
        return s


@dataclass(frozen=True)
class _Fields:
    prompt: str
    chosen: str
    rejected: str
    id: str | None
    margin: str | None
    weight: str | None
    source: str | None


class _Invalid(Exception):
    """One row is invalid: ``reason`` is the count key, ``detail`` the message after the location."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class _Rows:
    """Raw rows of one file or hub split: ``rows[i]`` is a dict, or an _Invalid for an unparseable line."""

    name: str
    """File path or dataset name, as used in messages."""
    stem: str
    """Prefix of fallback pair ids (unique among the sources of one load)."""
    locs: list[int]
    rows: list[Any]
    present: set[str]
    """Fields that occur in at least one row (or columns of a table)."""
    by_line: bool
    """True: locs are 1-based line numbers; False: 0-based row indices."""
    fingerprint: str = ""
    """Content digest of the file (name, size, bytes), or the hub dataset's ``datasets`` fingerprint."""

    def where(self, i: int) -> str:
        return (
            f"{self.name} line {self.locs[i]}"
            if self.by_line
            else f"{self.name} row {self.locs[i]} (0-based)"
        )


# ---------------------------------------------------------------- reading


def _read_jsonl(path: Path, name: str) -> _Rows:
    """Pre-scan with json.loads: line numbers stay those of the file; blank lines are skipped."""
    locs: list[int] = []
    rows: list[Any] = []
    present: set[str] = set()
    with open(path, "rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line.strip():
                continue
            locs.append(line_no)
            try:
                obj = json.loads(line.decode("utf-8"))
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                rows.append(_Invalid("invalid JSON", f"invalid JSON: {e}"))
                continue
            if isinstance(obj, dict):
                present.update(obj)
                rows.append(obj)
            else:
                rows.append(
                    _Invalid(
                        "not a JSON object",
                        f"expected a JSON object, got {type(obj).__name__}",
                    )
                )
    return _Rows(
        name=name, stem=path.stem, locs=locs, rows=rows, present=present, by_line=True
    )


def _read_json(path: Path, name: str) -> _Rows:
    """A JSON array of row objects (0-based rows), or JSON lines under a .json name (line numbers)."""
    text = path.read_bytes()
    try:
        obj = json.loads(text)
    except ValueError as e:
        if isinstance(e, json.JSONDecodeError) and e.msg == "Extra data":
            return _read_jsonl(path, name)
        raise DataError(f"{name}: invalid JSON: {e}") from e
    if isinstance(obj, dict) and len(text.strip().splitlines()) == 1:
        return _read_jsonl(path, name)  # a one-line JSON lines file
    if not isinstance(obj, list):
        raise DataError(
            f"{name}: expected a JSON array of row objects or JSON lines, got a {type(obj).__name__}"
        )
    rows: list[Any] = []
    present: set[str] = set()
    for r in obj:
        if isinstance(r, dict):
            present.update(r)
            rows.append(r)
        else:
            rows.append(
                _Invalid(
                    "not a JSON object",
                    f"expected a JSON object, got {type(r).__name__}",
                )
            )
    return _Rows(
        name=name,
        stem=path.stem,
        locs=list(range(len(rows))),
        rows=rows,
        present=present,
        by_line=False,
    )


def _from_table(
    ds: datasets.Dataset, *, name: str, stem: str, wanted: Sequence[str] | Any
) -> _Rows:
    if callable(wanted):  # the columns to read depend on the format the column names show
        wanted = wanted(set(ds.column_names))
    cols = [c for c in dict.fromkeys(wanted) if c in ds.column_names]
    data = ds.select_columns(cols).to_dict() if cols else {}
    n = ds.num_rows
    rows = (
        [dict(zip(cols, vals)) for vals in zip(*(data[c] for c in cols))]
        if cols
        else [{} for _ in range(n)]
    )
    return _Rows(
        name=name,
        stem=stem,
        locs=list(range(n)),
        rows=rows,
        present=set(ds.column_names),
        by_line=False,
    )


def _read_parquet(path: Path, name: str, wanted: Sequence[str]) -> _Rows:
    try:
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    except Exception as e:
        raise DataError(
            f"{name}: cannot read parquet file: {type(e).__name__}: {e}"
        ) from e
    return _from_table(ds, name=name, stem=path.stem, wanted=wanted)


def _read_arrow(path: Path, name: str, wanted: Sequence[str] | Any) -> _Rows:
    """An Arrow file: the stream format ``datasets`` writes (save_to_disk), else the Arrow IPC file format."""
    try:
        ds = datasets.Dataset.from_file(str(path))
    except (OSError, pa.ArrowException):
        try:
            with pa.memory_map(str(path)) as src:
                table = pa.ipc.open_file(src).read_all()
            ds = datasets.Dataset(InMemoryTable(table))
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{name}: cannot read arrow file: {type(e).__name__}: {e}") from e
    return _from_table(ds, name=name, stem=path.stem, wanted=wanted)


def _offline() -> bool:
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _read_hub(name: str, split: str | None, wanted: Sequence[str]) -> _Rows:
    if _offline():
        raise DataError(
            f"{name}: not a local file or directory, and hub datasets need network access, but "
            f"HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set (offline): pass a local .jsonl, .json, .parquet or "
            f".arrow file or folder instead"
        )
    try:
        obj = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise DataError(
            f"{name}: not a local file or directory, and loading it as a Hugging Face hub dataset failed "
            f"({type(e).__name__}: {e}). Hub datasets need network access (or an already populated HF "
            f"cache); offline, pass a local .jsonl, .json or .parquet file instead (HF_HUB_OFFLINE=1 makes this "
            f"fail at once instead of after retries)."
        ) from e
    if isinstance(obj, datasets.DatasetDict):
        if len(obj) != 1:
            raise DataError(f"{name}: has splits {sorted(obj)}; pass split=")
        split, obj = next(iter(obj.items()))
    if not isinstance(obj, datasets.Dataset):
        raise DataError(
            f"{name}: expected a map-style dataset, got {type(obj).__name__}"
        )
    label = f"{name}[{split}]" if split else name
    src = _from_table(obj, name=label, stem=label, wanted=wanted)
    src.fingerprint = f"hub:{name}:{split}:{obj._fingerprint}"
    return src


def _local_files(path_or_name: str) -> list[Path] | None:
    """Files to read, or None if the string should be treated as a hub dataset name."""
    p = Path(path_or_name).expanduser()
    if p.is_dir():
        files = sorted(
            f for f in p.iterdir() if f.is_file() and f.suffix in LOCAL_SUFFIXES
        )
        if any(f.suffix == ".arrow" for f in files):  # a save_to_disk folder: its JSON files are metadata
            files = [f for f in files if f.name not in ("state.json", "dataset_info.json")]
        if not files:
            raise DataError(
                f"{path_or_name}: directory has no {'/'.join(LOCAL_SUFFIXES)} files"
            )
        return files
    if p.is_file():
        if p.suffix not in LOCAL_SUFFIXES:
            raise DataError(
                f"{path_or_name}: unsupported file type {p.suffix!r}; use {', '.join(LOCAL_SUFFIXES)}"
            )
        return [p]
    if any(ch in path_or_name for ch in "*?["):
        files = sorted(
            Path(f)
            for f in glob.glob(str(p))
            if Path(f).suffix in LOCAL_SUFFIXES and Path(f).is_file()
        )
        if not files:
            raise DataError(
                f"{path_or_name}: glob matches no {'/'.join(LOCAL_SUFFIXES)} files"
            )
        return files
    if p.suffix in LOCAL_SUFFIXES or path_or_name.startswith((".", "/", "~")):
        raise DataError(f"{path_or_name}: no such file")
    return None


def _read_all(
    path_or_name: str, *, split: str | None, wanted: Sequence[str]
) -> list[_Rows]:
    files = _local_files(path_or_name)
    if files is None:
        return [_read_hub(path_or_name, split, wanted)]
    out = []
    for f, prefix in zip(files, _id_prefixes(files)):
        name = path_or_name if len(files) == 1 else str(f)
        if f.suffix == ".jsonl":
            src = _read_jsonl(f, name)
        elif f.suffix == ".json":
            src = _read_json(f, name)
        elif f.suffix == ".arrow":
            src = _read_arrow(f, name, wanted)
        else:
            src = _read_parquet(f, name, wanted)
        src.stem = prefix
        src.fingerprint = _file_digest(f)
        out.append(src)
    return out


def _file_digest(path: Path) -> str:
    h = hashlib.sha256(f"{path.resolve()}\0{path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _id_prefixes(files: list[Path]) -> list[str]:
    """Fallback-id prefixes, one per file and all distinct: the stems, or, when two files share a stem
    (``a/train.jsonl``, ``b/train.jsonl``), each path relative to the files' common folder
    (``a/train``), with its suffix too if that still collides (``a/train.json``)."""
    stems = [f.stem for f in files]
    if len(set(stems)) == len(stems):
        return stems
    resolved = [f.resolve() for f in files]
    common = Path(os.path.commonpath([str(f.parent) for f in resolved]))
    rel = [f.relative_to(common) for f in resolved]
    bare = [r.with_suffix("").as_posix() for r in rel]
    return bare if len(set(bare)) == len(bare) else [r.as_posix() for r in rel]


# ---------------------------------------------------------------- validation


def _get(raw: dict, f: str) -> Any:
    if f not in raw:
        raise _Invalid(f"missing field '{f}'", f"field '{f}': missing")
    v = raw[f]
    if v is None:
        raise _Invalid(f"None in field '{f}'", f"field '{f}': is null/None")
    return v


def _wrong_type(f: str, expected: str, v: Any) -> _Invalid:
    return _Invalid(
        f"wrong type in field '{f}'",
        f"field '{f}': expected {expected}, got {type(v).__name__}",
    )


def _unicode(v: str, f: str, what: str = "") -> str:
    """``v`` itself, if it is valid Unicode (json.loads lets lone surrogates like "\\ud800" through)."""
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise _Invalid(
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
        raise _Invalid(f"empty field '{f}'", f"field '{f}': empty or whitespace-only")
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
    raise _Invalid(
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
        raise _Invalid(
            f"not a finite number in field '{f}'",
            f"field '{f}': expected a finite number, got {v!r}",
        )
    return x


def _continuation(msgs: list[dict[str, str]], f: str) -> None:
    if not msgs:
        raise _Invalid(
            f"empty field '{f}'", f"field '{f}': no messages after the prompt"
        )
    if msgs[-1]["role"] != "assistant":
        raise _Invalid(
            f"last message not assistant in field '{f}'",
            f"field '{f}': the last message must have role 'assistant', got {msgs[-1]['role']!r}",
        )
    if not msgs[-1]["content"].strip():
        raise _Invalid(
            f"empty field '{f}'",
            f"field '{f}': the last message's content is empty or whitespace-only",
        )


def _identical() -> _Invalid:
    return _Invalid(
        "identical chosen and rejected", "field 'rejected': identical to field 'chosen'"
    )


def _chat(raw: dict, fl: _Fields, *, has_prompt: bool) -> tuple[list, list, list]:
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
    else:
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        if len(chosen) == len(rejected) == n:
            raise _identical()
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    _continuation(chosen, fl.chosen)
    _continuation(rejected, fl.rejected)
    if [(m["role"], m["content"].strip()) for m in chosen] == [
        (m["role"], m["content"].strip()) for m in rejected
    ]:
        raise _identical()
    return prompt, chosen, rejected


def _row(
    raw: dict, fl: _Fields, *, fmt: str, has_prompt: bool, fmt_origin: str
) -> dict[str, Any]:
    """Canonical columns of one raw row, except pair_id and row; raises _Invalid."""
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
        raise _Invalid(
            f"negative weight in field '{fl.weight}'",
            f"field '{fl.weight}': must be >= 0, got {weight}",
        )
    if weight > MAX_WEIGHT:
        raise _Invalid(
            f"weight out of range in field '{fl.weight}'",
            f"field '{fl.weight}': must be <= {MAX_WEIGHT:g}, got {weight:g}",
        )
    if abs(margin) > MAX_ABS_MARGIN:
        raise _Invalid(
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


def _pair_id(raw: dict, fl: _Fields, fallback: str) -> str:
    if fl.id is None or raw.get(fl.id) is None or raw.get(fl.id) == "":
        return fallback
    v = raw[fl.id]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise _wrong_type(fl.id, "a string or integer", v)
    return _unicode(v, fl.id) if isinstance(v, str) else str(v)


def _detect_format(sources: list[_Rows], chosen: str) -> tuple[str, str]:
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


def _iter_rows(sources: list[_Rows]) -> Iterator[tuple[_Rows, int]]:
    for src in sources:
        for i in range(len(src.rows)):
            yield src, i


# ---------------------------------------------------------------- entry point


def load_pairs(
    path_or_name: str,
    *,
    split: str | None = None,
    prompt_field: str = "prompt",
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
    id_field: str | None = "id",
    margin_field: str | None = None,
    weight_field: str | None = None,
    source_field: str | None = "source",
    skip_invalid: bool = False,
    max_pairs: int | None = None,
    format: str = "auto",
    options: FormatOptions | None = None,
) -> tuple[datasets.Dataset, LoadReport]:
    """Read preference pairs into a canonical dataset (columns in the module docstring).

    ``path_or_name``: a ``.jsonl``/``.json``/``.parquet`` file, a directory of them, a glob, or else a
    hub dataset name (``split`` is used only there; needs network). Invalid rows raise DataError unless
    ``skip_invalid``, which drops and counts them. ``max_pairs`` keeps the first N valid pairs (rows
    after those are not validated). Zero valid pairs is always a DataError.

    ``format``: ``auto`` (detected from the columns, see ``rm_ds.data.formats.detect_format``), ``pairs``
    (the fields above), or a published shape (``hh``, ``shp``, ``ultrafeedback``, ``helpsteer``,
    ``scored``), converted by ``rm_ds.data.formats`` under ``options``; those datasets also carry the
    ``PROVENANCE`` columns. The report names the format and why it was chosen.
    """
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1 or None, got {max_pairs}")
    fl = _Fields(
        prompt=prompt_field,
        chosen=chosen_field,
        rejected=rejected_field,
        id=id_field,
        margin=margin_field,
        weight=weight_field,
        source=source_field,
    )
    wanted = [
        f
        for f in (
            prompt_field,
            chosen_field,
            rejected_field,
            id_field,
            margin_field,
            weight_field,
            source_field,
        )
        if f is not None
    ]
    opts = options or FormatOptions()
    if format not in ("auto", *FORMATS):
        raise ValueError(f"format must be auto or one of {', '.join(FORMATS)}, got {format!r}")
    if opts.pref_field is not None:
        wanted.append(opts.pref_field)
    if opts.objectives:
        wanted.append(opts.objectives_field)
    scored = _scored_folder(path_or_name) if format in ("auto", "scored") else None
    if scored is not None:
        sources = [scored]
        fmt, why = "scored", f"a folder with {', '.join(SCORED_FILES)}"
    else:
        def pick(cols: set[str]) -> Sequence[str]:
            f = format if format != "auto" else detect_format(cols, None)[0]
            return wanted if f == "pairs" else sorted(cols)

        sources = _read_all(path_or_name, split=split, wanted=pick)
        present = set().union(*(src.present for src in sources))
        first = next((r for src in sources for r in src.rows if isinstance(r, dict)), None)
        fmt, why = detect_format(present, first) if format == "auto" else (format, f"data.format={format}")
    if fmt != "pairs" and opts.objectives:
        raise DataError(f"{path_or_name}: several objectives (model.objectives) are read from pairs rows with a "
                        f"'{opts.objectives_field}' field; this data is format {fmt} ({why})")
    if fmt != "pairs":
        return _load_converted(sources, fmt, why, opts, path_or_name=path_or_name, skip_invalid=skip_invalid,
                               max_pairs=max_pairs)

    for src in sources:
        required = [chosen_field, rejected_field, margin_field, weight_field]
        if prompt_field != "prompt":  # an explicitly named prompt field must exist
            required.append(prompt_field)
        for f in required:
            if (
                f is not None
                and f not in src.present
                and any(isinstance(r, dict) for r in src.rows)
            ):
                raise DataError(
                    f"{src.name}: field '{f}' occurs in no row (fields: {sorted(src.present)})"
                )
    fmt, fmt_origin = _detect_format(sources, chosen_field)

    report = LoadReport(
        source=path_or_name, n_rows=sum(len(s.rows) for s in sources), n_loaded=0,
        format="pairs", format_reason=why,
        fingerprint=hashlib.sha256("\0".join(s.fingerprint for s in sources).encode()).hexdigest(),
    )
    cols: dict[str, list[Any]] = {k: [] for k in TEXT_FEATURES}
    if opts.pref_field is not None:
        cols["pref"] = []
    if opts.objectives:
        cols["prefs"] = []
    first_seen: dict[str, str] = {}
    for src, i in _iter_rows(sources):
        if max_pairs is not None and len(cols["row"]) >= max_pairs:
            break
        raw = src.rows[i]
        try:
            if isinstance(raw, _Invalid):
                raise raw
            out = _row(
                raw,
                fl,
                fmt=fmt,
                has_prompt=prompt_field in src.present,
                fmt_origin=fmt_origin,
            )
            if opts.pref_field is not None:
                out["pref"] = _pref(raw, opts.pref_field)
            if opts.objectives:
                out["prefs"] = _objective_prefs(raw, opts.objectives_field, opts.objectives)
            pid = _pair_id(raw, fl, f"{src.stem}:{src.locs[i]}")
            if pid in first_seen:
                f = id_field or "pair_id"
                what = (f"absent, and the numbered fallback id {pid!r} is already taken"
                        if id_field and raw.get(id_field) in (None, "") else f"duplicate pair id {pid!r}")
                raise _Invalid(
                    f"duplicate id in field '{f}'",
                    f"field '{f}': {what} (first at {first_seen[pid]})",
                )
        except _Invalid as e:
            msg = f"{src.where(i)}: {e.detail}"
            if not skip_invalid:
                raise DataError(msg) from None
            report.skipped[e.reason] = report.skipped.get(e.reason, 0) + 1
            if len(report.examples) < MAX_EXAMPLES:
                report.examples.append(msg)
            continue
        first_seen[pid] = src.where(i)
        out["pair_id"] = pid
        out["row"] = src.locs[i]
        for k, v in out.items():
            cols[k].append(v)

    if not cols["row"]:
        raise DataError(
            f"{path_or_name}: no valid pairs in {report.n_rows} rows (skipped: {report.skipped}; "
            f"first problems: {report.examples})"
        )
    report.n_loaded = len(cols["row"])
    features = TEXT_FEATURES if fmt == "text" else CHAT_FEATURES
    if opts.pref_field is not None:
        features = datasets.Features({**features, "pref": PROVENANCE["pref"]})
    if opts.objectives:
        features = datasets.Features({**features, "prefs": PREFS_FEATURE})
    # straight to arrow: Dataset.from_dict would re-encode every value in Python (several times slower)
    table = pa.Table.from_pydict(cols, schema=features.arrow_schema)
    return datasets.Dataset(
        InMemoryTable(table), info=datasets.DatasetInfo(features=features)
    ), report


# ---------------------------------------------------------------- published formats (rm_ds.data.formats)


def _pref(raw: dict, f: str) -> float:
    p = _number(raw, f, 1.0)
    if not 0.0 <= p <= 1.0:
        raise _Invalid(f"preference out of range in field '{f}'", f"field '{f}': must be in [0, 1], got {p}")
    return p


def _objective_prefs(raw: dict, f: str, objectives: Sequence[str]) -> list[float]:
    """{objective: p or null} -> one p per objective in order, NaN where absent or null (unlabelled)."""
    v = _get(raw, f)
    if not isinstance(v, dict):
        raise _wrong_type(f, "an object {objective: p}", v)
    unknown = sorted(set(v) - set(objectives))
    if unknown:
        raise _Invalid(f"unknown objective in field '{f}'",
                       f"field '{f}': unknown objective {unknown[0]!r} (model.objectives: {list(objectives)})")
    out = [math.nan if v.get(o) is None else _pref({f"{f}.{o}": v[o]}, f"{f}.{o}") for o in objectives]
    if all(math.isnan(p) for p in out):
        raise _Invalid(f"no objective labelled in field '{f}'", f"field '{f}': labels none of {list(objectives)}")
    return out


def _scored_folder(path_or_name: str) -> _Rows | None:
    """The folder form of ``scored`` (three parallel JSON files), or None if the path is not one."""
    p = Path(path_or_name).expanduser()
    if not p.is_dir() or not all((p / n).is_file() for n in SCORED_FILES):
        return None
    loaded = []
    for n in SCORED_FILES:
        try:
            loaded.append(json.loads((p / n).read_bytes()))
        except ValueError as e:
            raise DataError(f"{p / n}: invalid JSON: {e}") from e
    try:
        rows = scored_from_files(*loaded)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path_or_name}: {e}") from None
    return _Rows(name=f"{path_or_name} ({'/'.join(SCORED_FILES)})", stem=p.name, locs=list(range(len(rows))),
                 rows=rows, present={"prompt", "responses", "rewards"}, by_line=False)


def _candidate_row(cand: Candidate, kind: str, origin: str) -> dict[str, Any]:
    """Validate one converted pair like a pairs row; field names in errors are the input's own."""
    l_prompt, l_chosen, l_rejected = cand.labels
    raw = {l_prompt: cand.prompt, l_chosen: cand.chosen, l_rejected: cand.rejected}
    fl = _Fields(prompt=l_prompt, chosen=l_chosen, rejected=l_rejected, id=None, margin=None, weight=None,
                 source=None)
    out = _row(raw, fl, fmt=kind, has_prompt=True, fmt_origin=origin)
    out.update(margin=float(cand.margin), weight=float(cand.weight), source=cand.source, pref=float(cand.pref))
    return out


def _load_converted(sources: list[_Rows], fmt: str, why: str, opts: FormatOptions, *, path_or_name: str,
                    skip_invalid: bool, max_pairs: int | None) -> tuple[datasets.Dataset, LoadReport]:
    """Rows of a published format -> canonical pairs with the PROVENANCE columns (``load_pairs``)."""
    report = LoadReport(source=path_or_name, n_rows=sum(len(s.rows) for s in sources), n_loaded=0, format=fmt,
                        format_reason=why,
                        fingerprint=hashlib.sha256("\0".join(s.fingerprint for s in sources).encode()).hexdigest())
    cols: dict[str, list[Any]] = {k: [] for k in (*TEXT_FEATURES, *PROVENANCE)}
    first_seen: dict[str, str] = {}
    kind = origin = None

    def invalid(reason: str, msg: str) -> None:
        if not skip_invalid:
            raise DataError(msg) from None
        report.skipped[reason] = report.skipped.get(reason, 0) + 1
        if len(report.examples) < MAX_EXAMPLES:
            report.examples.append(msg)

    def full() -> bool:
        return max_pairs is not None and len(cols["row"]) >= max_pairs

    for src in sources:
        for unit in group_rows(fmt, src.rows):
            if full():
                break
            rows = [src.rows[i] for i in unit]
            bad = next((k for k, r in enumerate(rows) if isinstance(r, _Invalid)), None)
            if bad is not None:
                invalid(rows[bad].reason, f"{src.where(unit[bad])}: {rows[bad].detail}")
                continue
            try:
                conv = convert(fmt, rows, opts)
            except RowError as e:
                invalid(e.reason, f"{src.where(unit[e.member])}: {e.detail}")
                continue
            report.n_ties += conv.ties
            for reason, n in conv.filtered.items():
                report.filtered[reason] = report.filtered.get(reason, 0) + n
            for cand in conv.pairs:
                if full():
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
                    out = _candidate_row(cand, kind, origin)
                    if pid in first_seen:
                        raise _Invalid("duplicate pair id", f"duplicate pair id {pid!r} (first at {first_seen[pid]})")
                except _Invalid as e:
                    if e.reason == "identical chosen and rejected" and cand.key:  # two equal sampled responses
                        report.filtered["identical responses"] = report.filtered.get("identical responses", 0) + 1
                        continue
                    invalid(e.reason, f"{src.where(i)}: {e.detail}")
                    continue
                first_seen[pid] = src.where(i)
                out.update(pair_id=pid, row=src.locs[i], file=src.name, orig_id=cand.orig_id)
                for k, v in out.items():
                    cols[k].append(v)

    if not cols["row"]:
        raise DataError(
            f"{path_or_name}: no valid pairs in {report.n_rows} rows read as format {fmt} ({why}; skipped: "
            f"{report.skipped}; filtered: {report.filtered}; first problems: {report.examples})"
        )
    report.n_loaded = len(cols["row"])
    features = datasets.Features({**(TEXT_FEATURES if kind == "text" else CHAT_FEATURES), **PROVENANCE})
    table = pa.Table.from_pydict(cols, schema=features.arrow_schema)
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features)), report
