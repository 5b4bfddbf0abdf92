"""JSON lines: the one reader every command uses, with errors that name the file and the line.

    for line_no, obj in read_jsonl("samples.jsonl"):    # one dict per non-blank line
        ...

A ``.gz`` file (``train.jsonl.gz``, as HelpSteer2 ships) is read through gzip. A UTF-8 byte-order mark
on line 1 is dropped and blank lines are skipped; line numbers stay those of the file. Errors are
``DataError`` and read::

    samples.jsonl: no such file
    samples.jsonl: is a directory, not a JSON lines file
    samples.jsonl line 3: invalid JSON: Expecting value: line 1 column 1 (char 0)
    samples.jsonl line 3: not valid UTF-8: byte 0xff at column 7
    samples.jsonl line 3: expected a JSON object, got list

``iter_lines`` is the lenient form: it yields a ``BadLine`` in place of a line that is not a JSON
object, so a loader can skip and count such lines (``data.skip_invalid``). ``write_jsonl`` writes
rows atomically: a reader never sees half a file.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rm_ds.errors import DataError

__all__ = ["BadLine", "iter_lines", "open_input", "read_jsonl", "write_jsonl"]


class BadLine(Exception):
    """A line (or array element) that is not a JSON object: ``reason`` counts it, ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def open_input(path: str | Path, name: str | None = None):
    """``path`` opened for reading bytes (gunzipped if it ends in ``.gz``), or a located ``DataError``."""
    p = Path(path)
    name = str(path) if name is None else name
    if p.is_dir():
        raise DataError(f"{name}: is a directory, not a JSON lines file")
    try:
        return gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except OSError as e:
        raise DataError(f"{name}: cannot read: {e.strerror or e}") from None


def _parse(line: bytes) -> Any:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadLine("invalid UTF-8", f"not valid UTF-8: byte 0x{line[e.start]:02x} at column {e.start + 1}") from None
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise BadLine("invalid JSON", f"invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadLine("not a JSON object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def iter_lines(path: str | Path, name: str | None = None) -> Iterator[tuple[int, dict | BadLine]]:
    """``(line_no, object or BadLine)`` for every non-blank line; 1-based line numbers of the file."""
    name = str(path) if name is None else name
    with open_input(path, name) as fh:
        try:
            for line_no, line in enumerate(fh, start=1):
                if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
                if not line.strip():
                    continue
                try:
                    yield line_no, _parse(line)
                except BadLine as e:
                    yield line_no, e
        except (OSError, EOFError) as e:  # a truncated or corrupt .gz
            raise DataError(f"{name}: cannot read: {e}") from None


def read_jsonl(path: str | Path, name: str | None = None) -> Iterator[tuple[int, dict]]:
    """``(line_no, object)`` for every non-blank line; the first bad line is a located ``DataError``."""
    name = str(path) if name is None else name
    for line_no, obj in iter_lines(path, name):
        if isinstance(obj, BadLine):
            raise DataError(f"{name} line {line_no}: {obj.detail}")
        yield line_no, obj


def write_jsonl(path: str | Path, rows) -> None:
    """All rows to a temporary file, fsync, rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
