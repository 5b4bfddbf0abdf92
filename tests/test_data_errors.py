"""Hostile input that used to pass or fail without a location: every case is a DataError naming the
file, the line and the field, and under ``skip_invalid`` a counted skip.

Run: ``PYTHONPATH=. python -m pytest tests/test_data_errors.py -q``
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rm_ds.data.validate import PairFields
from rm_ds.data.pairs import load_pairs
from rm_ds.errors import DataError


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = json.dumps({"prompt": "p", "chosen": "yes", "rejected": "no"})


@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected", "source", "id"])
def test_lone_surrogate_is_a_data_error_in_its_field(tmp_path: Path, field: str) -> None:
    row = {"id": "x", "prompt": "p", "chosen": "yes", "rejected": "no", "source": "s"}
    line = json.dumps(row).replace(f'"{field}": "{row[field]}"', f'"{field}": "\\ud800x"')
    f = write_lines(tmp_path / "s.jsonl", [GOOD, line])
    with pytest.raises(DataError, match=rf"s\.jsonl line 2: field '{field}': lone surrogate"):
        load_pairs(str(f))
    ds, report = load_pairs(str(f), skip_invalid=True)
    assert len(ds) == 1 and report.skipped == {f"invalid unicode in field '{field}'": 1}
    assert "line 2" in report.examples[0]
    ds["chosen"]  # the kept rows are valid arrow strings


def test_lone_surrogate_in_a_chat_message(tmp_path: Path) -> None:
    line = ('{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\\udc00"}], '
            '"rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}')
    f = write_lines(tmp_path / "c.jsonl", [line])
    with pytest.raises(DataError, match=r"c\.jsonl line 1: field 'chosen': message 1: 'content': lone surrogate"):
        load_pairs(str(f))


def test_a_valid_surrogate_pair_is_kept(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "e.jsonl", ['{"chosen": "ok \\ud83d\\ude00", "rejected": "no"}'])
    ds, _ = load_pairs(str(f))
    assert ds["chosen"] == ["ok \U0001F600"]


def test_same_stem_in_two_folders_gets_distinct_fallback_ids(tmp_path: Path) -> None:
    rows = [GOOD, json.dumps({"prompt": "p2", "chosen": "a", "rejected": "b"})]
    write_lines(tmp_path / "a" / "train.jsonl", rows)
    write_lines(tmp_path / "b" / "train.jsonl", rows)
    ds, report = load_pairs(str(tmp_path / "*" / "train.jsonl"))
    assert list(ds["pair_id"]) == ["a/train:1", "a/train:2", "b/train:1", "b/train:2"]
    assert report.n_loaded == 4 and not report.skipped
    ds, report = load_pairs(str(tmp_path / "*" / "train.jsonl"), skip_invalid=True)
    assert report.n_loaded == 4 and not report.skipped  # nothing vanishes


def test_same_stem_different_suffix_in_one_folder(tmp_path: Path) -> None:
    write_lines(tmp_path / "d" / "train.jsonl", [GOOD])
    (tmp_path / "d" / "train.json").write_text(json.dumps([json.loads(GOOD)]))
    ds, _ = load_pairs(str(tmp_path / "d"))
    assert sorted(ds["pair_id"]) == ["train.json:0", "train.jsonl:1"]


def test_a_fallback_id_taken_by_an_explicit_id_says_so(tmp_path: Path) -> None:
    """Line 1 has id 'f:2'; line 2 has no id, so its numbered id is 'f:2' too: the message must not
    claim that the file's 'id' field holds a duplicate."""
    f = write_lines(tmp_path / "f.jsonl", [json.dumps({"id": "f:2", "chosen": "a", "rejected": "b"}),
                                           json.dumps({"chosen": "c", "rejected": "d"})])
    with pytest.raises(DataError) as e:
        load_pairs(str(f))
    msg = str(e.value)
    assert "f.jsonl line 2: field 'id': absent, and the numbered fallback id 'f:2' is already taken" in msg
    assert "f.jsonl line 1)" in msg and "duplicate pair id" not in msg


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("weight", "1e308", "weight out of range in field 'w'"),
    ("weight", "1001", "weight out of range in field 'w'"),
    ("weight", "-1", "negative weight in field 'w'"),
    ("weight", "1e400", "not a finite number in field 'w'"),
    ("weight", "NaN", "not a finite number in field 'w'"),
    ("margin", "-1e5", "margin out of range in field 'm'"),
    ("margin", "Infinity", "not a finite number in field 'm'"),
    ("margin", "1" + "0" * 400, "not a finite number in field 'm'"),
])
def test_weight_and_margin_ranges(tmp_path: Path, field: str, value: str, reason: str) -> None:
    good = '{"chosen": "a", "rejected": "b", "w": 2.5, "m": -3}'
    bad = good.replace('"w": 2.5' if field == "weight" else '"m": -3', f'"{field[0]}": {value}')
    f = write_lines(tmp_path / "n.jsonl", [good, bad])
    with pytest.raises(DataError, match=rf"n\.jsonl line 2: field '{field[0]}': "):
        load_pairs(str(f), fields=PairFields(weight="w", margin="m"))
    ds, report = load_pairs(str(f), skip_invalid=True, fields=PairFields(weight="w", margin="m"))
    assert report.skipped == {reason: 1}
    assert ds["weight"] == [2.5] and ds["margin"] == [-3.0]


def test_weight_and_margin_at_the_documented_limits_load(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "l.jsonl", ['{"chosen": "a", "rejected": "b", "w": 1000, "m": -1000}',
                                           '{"chosen": "c", "rejected": "d", "w": 0, "m": 1e3}'])
    ds, _ = load_pairs(str(f), fields=PairFields(weight="w", margin="m"))
    assert ds["weight"] == [1000.0, 0.0] and ds["margin"] == [-1000.0, 1000.0]
