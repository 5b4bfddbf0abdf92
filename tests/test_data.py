"""Tests for rm_ds.data.pairs.load_pairs.

Run: ``PYTHONPATH=. python -m pytest tests/test_data.py -q``
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rm_ds.data.validate import PairFields
from rm_ds.data.pairs import CHAT_FEATURES, TEXT_FEATURES, LoadReport, load_pairs
from rm_ds.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Rows are dicts (dumped) or raw strings (written verbatim: blank or broken lines)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    return path


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


TEXT_ROWS = [
    {"id": "a", "prompt": "2+2?", "chosen": "4", "rejected": "5", "source": "math"},
    {
        "id": "b",
        "prompt": "Capital of France?",
        "chosen": "Paris",
        "rejected": "Lyon",
        "source": "geo",
    },
    {"id": "c", "prompt": "", "chosen": "yes", "rejected": "no"},
]


# ---------------------------------------------------------------- round trips


def test_jsonl_text_round_trip(tmp_path: Path) -> None:
    ds, report = load_pairs(str(write_jsonl(tmp_path / "train.jsonl", TEXT_ROWS)))
    assert ds.features == TEXT_FEATURES
    assert ds.column_names == [
        "pair_id",
        "format",
        "prompt",
        "chosen",
        "rejected",
        "margin",
        "weight",
        "source",
        "row",
    ]
    assert ds[0] == {
        "pair_id": "a",
        "format": "text",
        "prompt": "2+2?",
        "chosen": "4",
        "rejected": "5",
        "margin": 0.0,
        "weight": 1.0,
        "source": "math",
        "row": 1,
    }
    assert ds["source"] == ["math", "geo", ""]
    assert ds["row"] == [1, 2, 3]
    assert report == LoadReport(
        source=str(tmp_path / "train.jsonl"),
        n_rows=3,
        n_loaded=3,
        skipped={},
        examples=[],
    )


def test_json_array_uses_zero_based_rows(tmp_path: Path) -> None:
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(TEXT_ROWS))
    ds, report = load_pairs(str(path), fields=PairFields(id=None))
    assert ds["chosen"] == ["4", "Paris", "yes"]
    assert ds["row"] == [0, 1, 2]
    assert ds["pair_id"] == ["pairs:0", "pairs:1", "pairs:2"]
    assert report.n_loaded == 3


def test_json_array_invalid_row_names_zero_based_row(tmp_path: Path) -> None:
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([*TEXT_ROWS[:2], {"prompt": "x", "chosen": "y"}]))
    with pytest.raises(
        DataError, match=r"pairs\.json row 2 \(0-based\): field 'rejected': missing"
    ):
        load_pairs(str(path))


def test_json_file_holding_json_lines_keeps_line_numbers(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "lines.json",
        [TEXT_ROWS[0], "", {"prompt": "p", "chosen": "a", "rejected": "a"}],
    )
    with pytest.raises(DataError, match=r"lines\.json line 3: .*identical"):
        load_pairs(str(path))


def test_parquet_round_trip(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "prefs.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [{**r, "score_gap": float(i)} for i, r in enumerate(TEXT_ROWS)]
        ),
        path,
    )
    ds, report = load_pairs(str(path), fields=PairFields(margin="score_gap"))
    assert ds.features == TEXT_FEATURES
    assert ds["margin"] == [0.0, 1.0, 2.0]
    assert ds["pair_id"] == ["a", "b", "c"]
    assert ds["row"] == [0, 1, 2]
    assert ds["source"] == [
        "math",
        "geo",
        "",
    ]  # a null in a parquet column means "no source"
    assert report.n_rows == 3


def test_parquet_chat_round_trip(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "chosen": [msg("user", "hi"), msg("assistant", "hello!")],
            "rejected": [msg("user", "hi"), msg("assistant", "go away")],
        }
    ]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    ds, _ = load_pairs(str(path))
    assert ds.features == CHAT_FEATURES
    assert ds[0]["prompt"] == [msg("user", "hi")]
    assert ds[0]["pair_id"] == "chat:0"


def test_parquet_invalid_row_names_zero_based_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bad.parquet"
    pq.write_table(
        pa.Table.from_pylist([TEXT_ROWS[0], {**TEXT_ROWS[1], "rejected": "  "}]), path
    )
    with pytest.raises(
        DataError, match=r"bad\.parquet row 1 \(0-based\): field 'rejected': empty"
    ):
        load_pairs(str(path))


def test_directory_and_glob(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", TEXT_ROWS[:2])
    write_jsonl(tmp_path / "b.jsonl", [TEXT_ROWS[2]])
    ds_dir, rep = load_pairs(str(tmp_path))
    ds_glob, _ = load_pairs(str(tmp_path / "*.jsonl"))
    assert ds_dir["pair_id"] == ds_glob["pair_id"] == ["a", "b", "c"]
    assert rep.n_rows == 3


def test_prompt_absent_from_whole_file_gives_empty_prompt(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "x y"}],
    )
    ds, _ = load_pairs(str(path))
    assert ds["prompt"] == [""]


def test_explicitly_named_prompt_field_must_exist(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", TEXT_ROWS)
    with pytest.raises(DataError, match=r"t\.jsonl: field 'question' occurs in no row"):
        load_pairs(str(path), fields=PairFields(prompt="question"))


def test_custom_field_names(tmp_path: Path) -> None:
    rows = [
        {"uid": 7, "q": "?", "good": "g", "bad": "b", "gap": 2, "w": 0.5, "origin": "x"}
    ]
    ds, _ = load_pairs(
        str(write_jsonl(tmp_path / "c.jsonl", rows)),
        fields=PairFields(prompt="q", chosen="good", rejected="bad", id="uid", margin="gap", weight="w",
                          source="origin"),
    )
    assert ds[0] == {
        "pair_id": "7",
        "format": "text",
        "prompt": "?",
        "chosen": "g",
        "rejected": "b",
        "margin": 2.0,
        "weight": 0.5,
        "source": "x",
        "row": 1,
    }


def test_missing_ids_fall_back_to_stem_and_line(tmp_path: Path) -> None:
    rows = [TEXT_ROWS[0], "", {k: v for k, v in TEXT_ROWS[1].items() if k != "id"}]
    ds, _ = load_pairs(str(write_jsonl(tmp_path / "mix.jsonl", rows)))
    assert ds["pair_id"] == ["a", "mix:3"]


# ---------------------------------------------------------------- chat


def test_chat_implicit_prompt_is_common_prefix(tmp_path: Path) -> None:
    conv = [msg("system", "be nice"), msg("user", "hi")]
    rows = [
        {
            "chosen": [*conv, msg("assistant", "hello!")],
            "rejected": [*conv, msg("assistant", "what")],
        },
    ]
    ds, _ = load_pairs(str(write_jsonl(tmp_path / "chat.jsonl", rows)))
    assert ds.features == CHAT_FEATURES
    assert ds[0]["format"] == "chat"
    assert ds[0]["prompt"] == conv
    assert ds[0]["chosen"] == [msg("assistant", "hello!")]
    assert ds[0]["rejected"] == [msg("assistant", "what")]


def test_chat_conversations_that_differ_before_the_last_reply_are_refused(tmp_path: Path) -> None:
    # chosen continues a different conversation (b, c, d after "a") than rejected (x after "a"): the two
    # responses answer different contexts, so the row is no preference between two replies
    rows = [
        {"chosen": [msg("user", "a"), msg("assistant", "ok")], "rejected": [msg("user", "a"), msg("assistant", "no")]},
        {
            "chosen": [msg("user", "a"), msg("assistant", "b"), msg("user", "c"), msg("assistant", "d")],
            "rejected": [msg("user", "a"), msg("assistant", "x")],
        },
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(DataError, match=r"^\S*chat\.jsonl line 2: field 'chosen': 3 messages after the shared prefix "
                                        r"\(1 messages\), expected one final 'assistant' reply.*different contexts$"):
        load_pairs(str(path))
    _, report = load_pairs(str(path), skip_invalid=True)
    assert report.skipped == {"conversations differ before the last assistant turn in field 'chosen'": 1}


def test_chat_extra_message_keys_are_dropped(tmp_path: Path) -> None:
    rows = [
        {
            "chosen": [
                {"role": "user", "content": "q", "name": "bob"},
                {**msg("assistant", "a"), "weight": 1},
            ],
            "rejected": [msg("user", "q"), msg("assistant", "b")],
        }
    ]
    ds, _ = load_pairs(str(write_jsonl(tmp_path / "chat.jsonl", rows)))
    assert ds[0]["prompt"] == [msg("user", "q")]
    assert ds[0]["chosen"] == [msg("assistant", "a")]


def test_chat_explicit_string_prompt(tmp_path: Path) -> None:
    rows = [
        {
            "prompt": "hi",
            "chosen": [msg("assistant", "hello")],
            "rejected": [msg("assistant", "bye")],
        }
    ]
    ds, _ = load_pairs(str(write_jsonl(tmp_path / "chat.jsonl", rows)))
    assert ds[0]["prompt"] == [msg("user", "hi")]
    assert ds[0]["chosen"] == [msg("assistant", "hello")]


def test_chat_explicit_prompt_strips_repeated_prefix(tmp_path: Path) -> None:
    # the UltraFeedback-binarized layout: prompt string, chosen/rejected full conversations
    rows = [
        {
            "prompt": "hi",
            "chosen": [msg("user", "hi"), msg("assistant", "hello")],
            "rejected": [msg("user", "hi"), msg("assistant", "bye")],
        },
        {
            "prompt": [msg("system", "s"), msg("user", "q")],
            "chosen": [msg("assistant", "a")],
            "rejected": [msg("system", "s"), msg("user", "q"), msg("assistant", "b")],
        },
    ]
    ds, _ = load_pairs(str(write_jsonl(tmp_path / "uf.jsonl", rows)))
    assert ds["prompt"] == [[msg("user", "hi")], [msg("system", "s"), msg("user", "q")]]
    assert ds["chosen"] == [[msg("assistant", "hello")], [msg("assistant", "a")]]
    assert ds["rejected"] == [[msg("assistant", "bye")], [msg("assistant", "b")]]


# ---------------------------------------------------------------- invalid rows

GOOD = {"prompt": "p", "chosen": "c", "rejected": "r"}
CHAT_GOOD = {
    "chosen": [msg("user", "q"), msg("assistant", "a")],
    "rejected": [msg("user", "q"), msg("assistant", "b")],
}

# (name, bad row, field named in the message, reason key, load_pairs options)
INVALID: list[tuple[str, dict[str, Any], str, str, dict[str, Any]]] = [
    (
        "missing chosen",
        {"prompt": "p", "rejected": "r"},
        "chosen",
        "missing field 'chosen'",
        {},
    ),
    (
        "missing rejected",
        {"prompt": "p", "chosen": "c"},
        "rejected",
        "missing field 'rejected'",
        {},
    ),
    (
        "missing prompt",
        {"chosen": "c", "rejected": "r"},
        "prompt",
        "missing field 'prompt'",
        {},
    ),
    ("None chosen", {**GOOD, "chosen": None}, "chosen", "None in field 'chosen'", {}),
    ("None prompt", {**GOOD, "prompt": None}, "prompt", "None in field 'prompt'", {}),
    (
        "int rejected",
        {**GOOD, "rejected": 3},
        "rejected",
        "wrong type in field 'rejected'",
        {},
    ),
    (
        "list chosen in text data",
        {**GOOD, "chosen": [msg("assistant", "x")]},
        "chosen",
        "wrong type in field 'chosen'",
        {},
    ),
    (
        "dict prompt",
        {**GOOD, "prompt": {"a": 1}},
        "prompt",
        "wrong type in field 'prompt'",
        {},
    ),
    ("empty chosen", {**GOOD, "chosen": ""}, "chosen", "empty field 'chosen'", {}),
    (
        "whitespace rejected",
        {**GOOD, "rejected": " \n\t"},
        "rejected",
        "empty field 'rejected'",
        {},
    ),
    (
        "identical",
        {**GOOD, "rejected": "c"},
        "rejected",
        "identical chosen and rejected",
        {},
    ),
    (
        "identical up to whitespace",
        {**GOOD, "rejected": "c \n"},
        "rejected",
        "identical chosen and rejected",
        {},
    ),
    (
        "margin string",
        {**GOOD, "margin": "1.5"},
        "margin",
        "not a finite number in field 'margin'",
        {"margin": "margin"},
    ),
    (
        "margin nan",
        {**GOOD, "margin": float("nan")},
        "margin",
        "not a finite number in field 'margin'",
        {"margin": "margin"},
    ),
    (
        "margin missing",
        dict(GOOD),
        "margin",
        "missing field 'margin'",
        {"margin": "margin"},
    ),
    (
        "weight inf",
        {**GOOD, "weight": float("inf")},
        "weight",
        "not a finite number in field 'weight'",
        {"weight": "weight"},
    ),
    (
        "weight bool",
        {**GOOD, "weight": True},
        "weight",
        "not a finite number in field 'weight'",
        {"weight": "weight"},
    ),
    (
        "weight negative",
        {**GOOD, "weight": -0.5},
        "weight",
        "negative weight in field 'weight'",
        {"weight": "weight"},
    ),
    (
        "source not a string",
        {**GOOD, "source": ["x"]},
        "source",
        "wrong type in field 'source'",
        {},
    ),
    (
        "id not a string or int",
        {**GOOD, "id": [1]},
        "id",
        "wrong type in field 'id'",
        {"id": "id"},
    ),
]
CHAT_INVALID: list[tuple[str, dict[str, Any], str, str, dict[str, Any]]] = [
    (
        "message without role",
        {**CHAT_GOOD, "chosen": [{"content": "q"}, msg("assistant", "a")]},
        "chosen",
        "invalid message in field 'chosen'",
        {},
    ),
    (
        "message without content",
        {**CHAT_GOOD, "rejected": [msg("user", "q"), {"role": "assistant"}]},
        "rejected",
        "invalid message in field 'rejected'",
        {},
    ),
    (
        "message content not str",
        {
            **CHAT_GOOD,
            "rejected": [msg("user", "q"), {"role": "assistant", "content": 1}],
        },
        "rejected",
        "invalid message in field 'rejected'",
        {},
    ),
    (
        "message not an object",
        {**CHAT_GOOD, "chosen": ["hello"]},
        "chosen",
        "invalid message in field 'chosen'",
        {},
    ),
    (
        "string chosen in chat data",
        {**CHAT_GOOD, "chosen": "a"},
        "chosen",
        "wrong type in field 'chosen'",
        {},
    ),
    (
        "identical conversations",
        {**CHAT_GOOD, "rejected": CHAT_GOOD["chosen"]},
        "rejected",
        "identical chosen and rejected",
        {},
    ),
    (
        "continuation ends with user",
        {**CHAT_GOOD, "chosen": [*CHAT_GOOD["chosen"], msg("user", "more?")]},
        "chosen",
        "last message not assistant in field 'chosen'",
        {},
    ),
    (
        "chosen is a prefix of rejected",
        {**CHAT_GOOD, "chosen": [msg("user", "q")]},
        "chosen",
        "empty field 'chosen'",
        {},
    ),
    (
        "empty assistant reply",
        {**CHAT_GOOD, "rejected": [msg("user", "q"), msg("assistant", "  ")]},
        "rejected",
        "empty field 'rejected'",
        {},
    ),
]


ALL_INVALID = [(*c, False) for c in INVALID] + [(*c, True) for c in CHAT_INVALID]


def _bad_file(
    tmp_path: Path, good: dict[str, Any], bad: dict[str, Any], opts: dict[str, Any]
) -> Path:
    """Line 1 good, line 2 blank, line 3 good, line 4 blank, line 5 bad, line 6 good."""
    rows: list[Any] = [good, "", good, "   ", bad, good]
    if "margin" in opts:
        rows = [
            r if isinstance(r, str) or r is bad else {**r, "margin": 1.0} for r in rows
        ]
    if "weight" in opts:
        rows = [
            r if isinstance(r, str) or r is bad else {**r, "weight": 1.0} for r in rows
        ]
    return write_jsonl(tmp_path / "train.jsonl", rows)


@pytest.mark.parametrize(
    ("case", "bad", "field", "reason", "opts", "chat"),
    ALL_INVALID,
    ids=[c[0] for c in ALL_INVALID],
)
def test_invalid_row_raises_with_file_line_and_field(
    tmp_path: Path,
    case: str,
    bad: dict[str, Any],
    field: str,
    reason: str,
    opts: dict[str, Any],
    chat: bool,
) -> None:
    path = _bad_file(tmp_path, CHAT_GOOD if chat else GOOD, bad, opts)
    with pytest.raises(DataError) as exc:
        load_pairs(str(path), fields=PairFields(**{"id": None, **opts}))
    text = str(exc.value)
    assert "train.jsonl line 5: " in text, text
    assert f"field '{field}'" in text, text


@pytest.mark.parametrize(
    ("case", "bad", "field", "reason", "opts", "chat"),
    ALL_INVALID,
    ids=[c[0] for c in ALL_INVALID],
)
def test_invalid_row_is_counted_when_skipping(
    tmp_path: Path,
    case: str,
    bad: dict[str, Any],
    field: str,
    reason: str,
    opts: dict[str, Any],
    chat: bool,
) -> None:
    path = _bad_file(tmp_path, CHAT_GOOD if chat else GOOD, bad, opts)
    ds, report = load_pairs(str(path), skip_invalid=True, fields=PairFields(**{"id": None, **opts}))
    assert ds["row"] == [1, 3, 6]
    assert report.n_rows == 4 and report.n_loaded == 3
    assert report.skipped == {reason: 1}
    assert len(report.examples) == 1
    assert (
        report.examples[0].startswith(f"{path} line 5: ")
        and f"field '{field}'" in report.examples[0]
    )


def test_chat_bad_prompt_message(tmp_path: Path) -> None:
    good = {
        "prompt": "q",
        "chosen": [msg("assistant", "a")],
        "rejected": [msg("assistant", "b")],
    }
    path = write_jsonl(
        tmp_path / "train.jsonl", [good, "", {**good, "prompt": [{"role": "user"}]}]
    )
    with pytest.raises(
        DataError,
        match=r"train\.jsonl line 3: field 'prompt': message 0: missing 'content'",
    ):
        load_pairs(str(path))
    ds, report = load_pairs(str(path), skip_invalid=True)
    assert len(ds) == 1 and report.skipped == {"invalid message in field 'prompt'": 1}


def test_invalid_json_line(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "train.jsonl", [GOOD, "", '{"prompt": "p", "chosen": ', GOOD]
    )
    with pytest.raises(DataError, match=r"train\.jsonl line 3: invalid JSON"):
        load_pairs(str(path))
    ds, report = load_pairs(str(path), skip_invalid=True)
    assert ds["row"] == [1, 4]
    assert report.skipped == {"invalid JSON": 1}


def test_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD, "[1, 2]"])
    with pytest.raises(DataError, match=r"train\.jsonl line 2: expected a JSON object"):
        load_pairs(str(path))


def test_duplicate_ids_name_both_rows(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [{**GOOD, "id": 1}, "", {**GOOD, "id": 2}, {**GOOD, "id": 1}],
    )
    with pytest.raises(DataError) as exc:
        load_pairs(str(path))
    text = str(exc.value)
    assert "train.jsonl line 4: field 'id': duplicate pair id '1'" in text
    assert "first at" in text and "train.jsonl line 1" in text
    ds, report = load_pairs(str(path), skip_invalid=True)
    assert ds["pair_id"] == ["1", "2"]
    assert report.skipped == {"duplicate id in field 'id'": 1}


def test_skip_counts_and_keeps_five_examples(tmp_path: Path) -> None:
    rows: list[Any] = (
        [GOOD] + [{**GOOD, "chosen": ""}] * 7 + [{"prompt": "p", "chosen": "c"}] * 2
    )
    ds, report = load_pairs(
        str(write_jsonl(tmp_path / "train.jsonl", rows)), skip_invalid=True
    )
    assert len(ds) == 1
    assert report.skipped == {"empty field 'chosen'": 7, "missing field 'rejected'": 2}
    assert len(report.examples) == 5
    assert (
        report.examples[0]
        == f"{tmp_path / 'train.jsonl'} line 2: field 'chosen': empty or whitespace-only"
    )


def test_zero_valid_pairs_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [{**GOOD, "rejected": "c"}, "", {**GOOD, "chosen": " "}],
    )
    with pytest.raises(DataError, match=r"train\.jsonl: no valid pairs in 2 rows"):
        load_pairs(str(path), skip_invalid=True)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no valid pairs"):
        load_pairs(str(tmp_path / "empty.jsonl"))


def test_chosen_field_absent_from_file(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "train.jsonl", [{"prompt": "p", "good": "c", "rejected": "r"}]
    )
    with pytest.raises(
        DataError, match=r"train\.jsonl: field 'chosen' occurs in no row"
    ):
        load_pairs(str(path), skip_invalid=True)


# ---------------------------------------------------------------- margin, weight, max_pairs, sources


def test_margin_weight_source_columns(tmp_path: Path) -> None:
    rows = [
        {**GOOD, "margin": 2, "weight": 0.25, "source": "s1"},
        {**GOOD, "chosen": "c2", "margin": -1.5, "weight": 0, "source": None},
    ]
    ds, _ = load_pairs(
        str(write_jsonl(tmp_path / "t.jsonl", rows)),
        fields=PairFields(margin="margin", weight="weight"),
    )
    assert ds["margin"] == [2.0, -1.5]
    assert ds["weight"] == [0.25, 0.0]
    assert ds["source"] == ["s1", ""]
    # without the options the columns get their defaults, whatever the file holds
    ds, _ = load_pairs(str(tmp_path / "t.jsonl"), fields=PairFields(source=None))
    assert (
        ds["margin"] == [0.0, 0.0]
        and ds["weight"] == [1.0, 1.0]
        and ds["source"] == ["", ""]
    )


def test_max_pairs_keeps_first_valid_pairs(tmp_path: Path) -> None:
    rows = [{**GOOD, "chosen": f"c{i}"} for i in range(5)]
    rows.insert(1, {**GOOD, "chosen": "r"})  # line 2: identical -> skipped
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    ds, report = load_pairs(str(path), max_pairs=3, skip_invalid=True)
    assert ds["chosen"] == ["c0", "c1", "c2"]
    assert ds["row"] == [1, 3, 4]
    assert report.n_loaded == 3 and report.n_rows == 6
    with pytest.raises(ValueError):
        load_pairs(str(path), max_pairs=0)


# ---------------------------------------------------------------- names that are not local files


def test_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_pairs(str(tmp_path / "nope.jsonl"))


def test_unsupported_suffix(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_pairs(str(tmp_path / "x.csv"))


def test_hub_name_offline_gives_clear_error(tmp_path: Path) -> None:
    # a subprocess, because huggingface_hub reads HF_HUB_OFFLINE at import time
    code = (
        "from rm_ds.data.pairs import load_pairs, DataError\n"
        "try:\n    load_pairs('someone/no-such-prefs', split='train')\n"
        "except DataError as e:\n    print('DATAERROR', e)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "HF_HOME": str(tmp_path / "hf"),
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "DATAERROR someone/no-such-prefs: not a local file" in out.stdout, (
        out.stdout + out.stderr
    )
    assert "network" in out.stdout
