"""Fuzzing ``load_pairs`` with generated JSONL files (hypothesis).

Each generated line carries its own verdict: valid, blank, broken as a whole (not JSON, not an
object), or broken in exactly one named field. The loader must agree line by line:

- ``skip_invalid=False``: a clean file loads every valid line; otherwise the first bad line raises a
  ``DataError`` naming the file, that line and its field. No other exception type escapes.
- ``skip_invalid=True``: exactly the bad lines are counted as skipped and every valid one is kept,
  with its id, text and numbers.

At least 1,150 lines per run (25 files of 46 to 60 lines), in a few seconds.
Run: ``PYTHONPATH=. python -m pytest tests/test_data_fuzz.py -q``
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rm_ds.data.pairs import load_pairs
from rm_ds.data.validate import MAX_ABS_MARGIN, MAX_WEIGHT, PairFields
from rm_ds.errors import DataError

FIELDS = ("id", "prompt", "chosen", "rejected", "margin", "weight", "source")


@dataclass
class Line:
    raw: bytes
    """The line's bytes, without the line ending."""
    verdict: str
    """"valid", "blank", "line" (invalid as a whole) or the one invalid field's name."""
    row: dict | None = None
    """For valid lines: the values the loader must return."""


# ------------------------------------------------------------------ valid values

safe_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
nonblank = safe_text.filter(lambda s: s.strip())
long_text = st.integers(10_000, 60_000).map(lambda n: "x" * n)
tricky = st.sampled_from(["a\u0000b", "\u00e9t\u00e9", "\U0001F600 emoji", "tab\there", "line\nbreak", "\ufeffbom",
                          "crlf\r\n"])
response = st.one_of(nonblank, tricky, long_text)
finite_weight = st.one_of(st.floats(0, MAX_WEIGHT), st.integers(0, int(MAX_WEIGHT)))
finite_margin = st.one_of(st.floats(-MAX_ABS_MARGIN, MAX_ABS_MARGIN), st.integers(-1000, 1000))
ids = st.one_of(st.sampled_from(["a", "b", "c", " ", "dup"]), st.integers(0, 6))


@st.composite
def valid_row(draw) -> dict:
    row = {"prompt": draw(st.one_of(safe_text, tricky)), "chosen": draw(response), "rejected": draw(response),
           "margin": draw(finite_margin), "weight": draw(finite_weight)}
    if row["chosen"].strip() == row["rejected"].strip():
        row["rejected"] = row["chosen"] + " not"
    if draw(st.booleans()):
        row["id"] = draw(ids)
    if draw(st.booleans()):
        row["source"] = draw(st.one_of(safe_text, st.none()))
    if draw(st.booleans()):  # unknown keys and nesting outside the named fields are ignored
        row["extra"] = draw(st.recursive(st.none() | st.integers() | safe_text,
                                         lambda c: st.lists(c, max_size=3) | st.dictionaries(safe_text, c, max_size=3),
                                         max_leaves=6))
    return row


# ------------------------------------------------------------------ one defect each

NOT_STR = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.integers(), max_size=2),
                    st.dictionaries(safe_text, st.integers(), max_size=2),
                    st.lists(st.lists(safe_text, max_size=2), min_size=1, max_size=2))
NOT_NUMBER = st.one_of(st.booleans(), safe_text, st.lists(st.integers(), max_size=2), st.just({"v": 1}))
LONE = st.sampled_from(["\ud800", "x\udfff", "\udc00y"])
# raw JSON number texts: non-finite (json reads NaN/Infinity, 1e400 is inf, a 400-digit int overflows)
NON_FINITE = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400])


@st.composite
def field_defect(draw, base: dict) -> tuple[dict, str, dict[str, str]]:
    """(row, field, raw number texts to splice in): ``row`` is ``base`` with exactly one bad field."""
    row, raw_numbers = dict(base), {}
    field = draw(st.sampled_from(FIELDS))
    if field in ("chosen", "rejected"):
        kind = draw(st.sampled_from(["missing", "null", "type", "empty", "blank", "surrogate", "same"]))
        if kind == "same" and field == "chosen":
            field = "rejected"  # identical responses are reported on 'rejected'
    elif field == "prompt":
        kind = draw(st.sampled_from(["missing", "null", "type", "surrogate"]))
    elif field in ("margin", "weight"):
        kinds = ["missing", "null", "type", "nonfinite", "range"] + ["negative"] * (field == "weight")
        kind = draw(st.sampled_from(kinds))
    elif field == "source":
        kind = draw(st.sampled_from(["type", "surrogate"]))
    else:  # id
        kind = draw(st.sampled_from(["type", "surrogate"]))
    if kind == "missing":
        row.pop(field, None)
    elif kind == "null":
        row[field] = None
    elif kind == "type":
        if field in ("margin", "weight"):
            row[field] = draw(NOT_NUMBER)
        elif field == "id":
            row[field] = draw(st.one_of(st.floats(allow_nan=False), st.booleans(), st.lists(st.integers(), max_size=2),
                                        st.just({"k": "v"})))
        else:
            row[field] = draw(NOT_STR.filter(lambda v: not isinstance(v, list) or field == "prompt" or v))
    elif kind == "empty":
        row[field] = ""
    elif kind == "blank":
        row[field] = draw(st.sampled_from([" ", "\t", "\n", " \r\n ", "\u3000"]))
    elif kind == "surrogate":
        row[field] = draw(st.sampled_from(["", "a"])) + draw(LONE)
    elif kind == "same":
        row["rejected"] = " " + row["chosen"] + "\n"
    elif kind == "nonfinite":
        raw_numbers[field] = draw(NON_FINITE)
    elif kind == "range":
        limit = MAX_WEIGHT if field == "weight" else MAX_ABS_MARGIN
        sign = 1 if field == "weight" else draw(st.sampled_from([1, -1]))
        row[field] = sign * draw(st.sampled_from([limit * 1.01, 1e308, 10**30]))
    elif kind == "negative":
        row[field] = -draw(st.floats(1e-9, 1e6))
    return row, field, raw_numbers


def dumps(row: dict, raw_numbers: dict[str, str]) -> bytes:
    """JSON with escapes for every non-ASCII character (lone surrogates become \\udXXX escapes, as a
    hostile writer would produce), and raw number texts spliced in."""
    marked = {k: (f"@@{k}@@" if k in raw_numbers else v) for k, v in row.items()}
    text = json.dumps(marked, ensure_ascii=True)
    for k, v in raw_numbers.items():
        text = text.replace(f'"@@{k}@@"', v)
    return text.encode()


BROKEN_LINES = st.sampled_from([b'{"chosen": "a", "rejected": ', b"[1, 2]", b'"just a string"', b"42", b"null",
                                b'{"chosen": "a\x00b", "rejected": "c"}',  # raw NUL: a control character
                                b'{"chosen": "\xff", "rejected": "c"}',  # not UTF-8
                                b'{"chosen": "\xed\xa0\x80", "rejected": "c"}',  # UTF-8-encoded surrogate
                                b"{'chosen': 'single quotes'}", b"\xef\xbb\xbf" + b'{"chosen": "a", "rejected": "b"}'])


@st.composite
def line(draw) -> Line:
    kind = draw(st.sampled_from(["valid"] * 5 + ["field"] * 4 + ["line", "blank"]))
    if kind == "blank":
        return Line(draw(st.sampled_from([b"", b"   ", b"\t", b" \r"])), "blank")
    if kind == "line":  # a BOM anywhere but the start of the file is not whitespace to json
        return Line(draw(BROKEN_LINES), "line")
    base = draw(valid_row())
    if kind == "valid":
        return Line(dumps(base, {}), "valid", base)
    row, field, raw_numbers = draw(field_defect(base))
    return Line(dumps(row, raw_numbers), field)


@st.composite
def jsonl_file(draw) -> tuple[bytes, list[Line]]:
    first = draw(valid_row())  # fixes the format (text) and makes every named field occur
    first.update(id=draw(ids), source="s")
    lines = [Line(dumps(first, {}), "valid", first)] + draw(st.lists(line(), min_size=45, max_size=59))
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    body = eol.join(x.raw for x in lines) + draw(st.sampled_from([eol, b""]))
    if draw(st.booleans()):
        body = b"\xef\xbb\xbf" + body
    return body, lines


# ------------------------------------------------------------------ the oracle


def expected(lines: list[Line], stem: str) -> tuple[list[tuple[int, str]], list[tuple[int, Line, str]]]:
    """(invalid (line number, field-or-"line"), kept (line number, line, pair id)) in file order; a
    valid line whose id was already taken by a kept line is invalid in 'id'."""
    bad, kept, seen = [], [], set()
    for n, x in enumerate(lines, start=1):
        if x.verdict == "blank":
            continue
        if x.verdict != "valid":
            bad.append((n, x.verdict))
            continue
        rid = x.row.get("id")
        pid = f"{stem}:{n}" if rid is None or rid == "" else str(rid)
        if pid in seen:
            bad.append((n, "id"))
            continue
        seen.add(pid)
        kept.append((n, x, pid))
    return bad, kept


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(jsonl_file())
def test_every_line_loads_or_is_a_located_data_error(tmp_path_factory, case) -> None:
    body, lines = case
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.jsonl"
    path.write_bytes(body)
    bad, kept = expected(lines, "fuzz")
    opts = {"fields": PairFields(margin="margin", weight="weight")}

    if bad:
        n, field = bad[0]
        try:
            load_pairs(str(path), **opts)
        except DataError as e:  # any other exception type fails the test
            msg = str(e)
            assert msg.startswith(f"{path} line {n}: "), (msg, bad[0])
            if field != "line":
                assert f"field '{field}'" in msg, (msg, bad[0])
        else:
            raise AssertionError(f"no DataError; expected line {n}, field {field}")
    else:
        ds, _ = load_pairs(str(path), **opts)
        assert len(ds) == len(kept)

    ds, report = load_pairs(str(path), skip_invalid=True, **opts)
    assert report.n_rows == sum(x.verdict != "blank" for x in lines)
    assert sum(report.skipped.values()) == len(bad), (report.skipped, bad)
    assert report.n_loaded == len(ds) == len(kept)
    assert list(ds["row"]) == [n for n, _, _ in kept]
    assert list(ds["pair_id"]) == [pid for _, _, pid in kept]
    assert list(ds["chosen"]) == [x.row["chosen"] for _, x, _ in kept]
    assert list(ds["rejected"]) == [x.row["rejected"] for _, x, _ in kept]
    assert list(ds["weight"]) == [float(x.row["weight"]) for _, x, _ in kept]
    assert list(ds["margin"]) == [float(x.row["margin"]) for _, x, _ in kept]
