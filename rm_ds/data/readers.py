"""Read the rows of preference data: local files (``.jsonl``, ``.jsonl.gz``, ``.json``, ``.parquet``,
``.arrow``; a folder or a glob of them), a hub dataset, or a scored-responses folder.

The rows come back raw, as ``Rows``: one dict per row with its location (file and line, or row), or
a ``BadLine`` where a line is not a JSON object. Validation is ``rm_ds.data.validate``; assembly into
the canonical dataset is ``rm_ds.data.pairs``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import pyarrow as pa
from datasets.table import InMemoryTable

from rm_ds.data.jsonl import BadLine, iter_lines
from rm_ds.data.scored import SCORED_FILES, scored_from_files
from rm_ds.errors import DataError

__all__ = ["LOCAL_SUFFIXES", "Rows", "Record", "not_read", "read_all", "read_records", "scored_folder"]

LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".arrow")


def _suffix(path: Path) -> str:
    """The suffix that picks the reader: ``.jsonl.gz`` for gzipped JSON lines, else the last suffix."""
    return ".jsonl.gz" if path.name.endswith(".jsonl.gz") else path.suffix


def _stem(path: Path) -> str:
    return path.name[: -len(".jsonl.gz")] if _suffix(path) == ".jsonl.gz" else path.stem


@dataclass
class Rows:
    """Raw rows of one file or hub split: ``rows[i]`` is a dict, or an BadLine for an unparseable line."""

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


def _read_jsonl(path: Path, name: str) -> Rows:
    """Line numbers stay those of the file; blank lines are skipped (``rm_ds.data.jsonl``)."""
    locs: list[int] = []
    rows: list[Any] = []
    present: set[str] = set()
    for line_no, obj in iter_lines(path, name):
        locs.append(line_no)
        rows.append(obj)
        if isinstance(obj, dict):
            present.update(obj)
    return Rows(name=name, stem=_stem(path), locs=locs, rows=rows, present=present, by_line=True)


def _read_json(path: Path, name: str) -> Rows:
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
                BadLine(
                    "not a JSON object",
                    f"expected a JSON object, got {type(r).__name__}",
                )
            )
    return Rows(
        name=name,
        stem=path.stem,
        locs=list(range(len(rows))),
        rows=rows,
        present=present,
        by_line=False,
    )


def _from_table(
    ds: datasets.Dataset, *, name: str, stem: str, wanted: Sequence[str] | Any
) -> Rows:
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
    return Rows(
        name=name,
        stem=stem,
        locs=list(range(n)),
        rows=rows,
        present=set(ds.column_names),
        by_line=False,
    )


def _read_parquet(path: Path, name: str, wanted: Sequence[str]) -> Rows:
    try:
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    except Exception as e:
        raise DataError(
            f"{name}: cannot read parquet file: {type(e).__name__}: {e}"
        ) from e
    return _from_table(ds, name=name, stem=path.stem, wanted=wanted)


def _read_arrow(path: Path, name: str, wanted: Sequence[str] | Any) -> Rows:
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


def _read_hub(name: str, split: str | None, wanted: Sequence[str]) -> Rows:
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


SAVE_TO_DISK_METADATA = ("state.json", "dataset_info.json")
"""The JSON files of a ``save_to_disk`` folder: metadata, not rows."""


def not_read(path_or_name: str) -> list[str]:
    """What a folder or glob holds that ``read_all`` does not read, as ``"name (why)"``: other file types,
    sub-folders (not searched), a save_to_disk folder's metadata. Empty for a file or a hub name."""
    p = Path(path_or_name).expanduser()
    if p.is_dir():
        entries = sorted(p.iterdir())
    elif not p.exists() and any(ch in path_or_name for ch in "*?["):
        entries = sorted(Path(f) for f in glob.glob(str(p)))
    else:
        return []
    arrow = any(e.is_file() and e.suffix == ".arrow" for e in entries)
    out = []
    for e in entries:
        if e.is_dir():
            out.append(f"{e.name}/ (a folder: sub-folders are not searched)")
        elif _suffix(e) not in LOCAL_SUFFIXES:
            out.append(f"{e.name} (unsupported file type {_suffix(e) or 'without a suffix'!r}; read: "
                       f"{', '.join(LOCAL_SUFFIXES)})")
        elif arrow and e.name in SAVE_TO_DISK_METADATA:
            out.append(f"{e.name} (save_to_disk metadata)")
    return out


def _local_files(path_or_name: str) -> list[Path] | None:
    """Files to read, or None if the string should be treated as a hub dataset name."""
    p = Path(path_or_name).expanduser()
    if p.is_dir():
        files = sorted(
            f for f in p.iterdir() if f.is_file() and _suffix(f) in LOCAL_SUFFIXES
        )
        if any(f.suffix == ".arrow" for f in files):  # a save_to_disk folder: its JSON files are metadata
            files = [f for f in files if f.name not in SAVE_TO_DISK_METADATA]
        if not files:
            raise DataError(
                f"{path_or_name}: directory has no {'/'.join(LOCAL_SUFFIXES)} files"
            )
        return files
    if p.is_file():
        if _suffix(p) not in LOCAL_SUFFIXES:
            raise DataError(
                f"{path_or_name}: unsupported file type {_suffix(p)!r}; use {', '.join(LOCAL_SUFFIXES)}"
            )
        return [p]
    if any(ch in path_or_name for ch in "*?["):
        files = sorted(
            Path(f)
            for f in glob.glob(str(p))
            if _suffix(Path(f)) in LOCAL_SUFFIXES and Path(f).is_file()
        )
        if not files:
            raise DataError(
                f"{path_or_name}: glob matches no {'/'.join(LOCAL_SUFFIXES)} files"
            )
        return files
    if _suffix(p) in LOCAL_SUFFIXES or path_or_name.startswith((".", "/", "~")):
        raise DataError(f"{path_or_name}: no such file")
    return None


def read_all(
    path_or_name: str, *, split: str | None, wanted: Sequence[str]
) -> list[Rows]:
    files = _local_files(path_or_name)
    if files is None:
        return [_read_hub(path_or_name, split, wanted)]
    out = []
    for f, prefix in zip(files, _id_prefixes(files)):
        src = _read_file(f, path_or_name if len(files) == 1 else str(f), wanted)
        src.stem = prefix
        src.fingerprint = _file_digest(f)
        out.append(src)
    return out


def _read_file(f: Path, name: str, wanted: Sequence[str] | Any) -> Rows:
    if _suffix(f) in (".jsonl", ".jsonl.gz"):
        return _read_jsonl(f, name)
    if f.suffix == ".json":
        return _read_json(f, name)
    if f.suffix == ".arrow":
        return _read_arrow(f, name, wanted)
    return _read_parquet(f, name, wanted)


class Record(NamedTuple):
    loc: int
    """The 1-based line of a JSON lines file, else the 0-based row."""
    where: str
    """``<file> line N`` or ``<file> row N (0-based)``, for messages."""
    row: dict


def read_records(path: str | Path, name: str | None = None) -> list[Record]:
    """A ``Record`` for every row of one data file (any of ``LOCAL_SUFFIXES``), every column.

    For the commands that read rows of their own (``score``, ``sample``, ``select``): a row that is
    not a JSON object is a ``DataError`` naming the file and the line (or row)."""
    p = Path(path).expanduser()
    name = str(path) if name is None else name
    if p.is_dir():
        raise DataError(f"{name}: is a directory; pass one {', '.join(LOCAL_SUFFIXES)} file")
    if not p.is_file():
        raise DataError(f"{name}: no such file")
    if _suffix(p) not in LOCAL_SUFFIXES:
        raise DataError(f"{name}: unsupported file type {_suffix(p)!r}; use {', '.join(LOCAL_SUFFIXES)}")
    src = _read_file(p, name, sorted)
    for i, r in enumerate(src.rows):
        if isinstance(r, BadLine):
            raise DataError(f"{src.where(i)}: {r.detail}")
    return [Record(src.locs[i], src.where(i), r) for i, r in enumerate(src.rows)]


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
    stems = [_stem(f) for f in files]
    if len(set(stems)) == len(stems):
        return stems
    resolved = [f.resolve() for f in files]
    common = Path(os.path.commonpath([str(f.parent) for f in resolved]))
    rel = [f.relative_to(common) for f in resolved]
    bare = [r.with_suffix("").as_posix() for r in rel]
    return bare if len(set(bare)) == len(bare) else [r.as_posix() for r in rel]



def scored_folder(path_or_name: str) -> Rows | None:
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
    return Rows(name=f"{path_or_name} ({'/'.join(SCORED_FILES)})", stem=p.name, locs=list(range(len(rows))),
                 rows=rows, present={"prompt", "responses", "rewards"}, by_line=False)
