"""The fuzz reaches the commands: ``inspect``, ``score``, ``label`` and ``match`` on random bytes,
encodings and row shapes give a correct result or one located line, never a traceback.

Files are built from lines of known kinds (good rows, rows with a field missing or of the wrong type,
lone surrogates, bytes that are not UTF-8, cut JSON, JSON that is not an object, blank lines, a BOM);
a file with a bad line must fail with a ``UserError`` naming the file and that line, one without must
load. ``label`` and ``match`` score with a fake gold model (the scoring itself is tested elsewhere).

Run: ``PYTHONPATH=. python -m pytest tests/test_command_fuzz.py -q``
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rm_ds.cli import main
from rm_ds.errors import DataError, UserError
from rm_ds.proxy.label import label
from rm_ds.proxy.match import run_match
from rm_ds.serve.score_file import read_input

FUZZ = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(str.strip)


def _dump(obj) -> bytes:
    return json.dumps(obj).encode()


def bad_lines() -> st.SearchStrategy[bytes]:
    """Lines no command may accept: broken JSON, not an object, not UTF-8."""
    return st.sampled_from([b'{"prompt": "a", "responses": ["x"', b"[1, 2]", b'"just a string"', b"\xff\xfe{}",
                            b'{"prompt": "\xc3\x28"}', b"null", b"{,}"])


def scored_rows(labelled: bool) -> st.SearchStrategy[dict]:
    def row(i, prompt, n, rewards):
        r = {"id": f"r{i}", "prompt": prompt, "responses": [f"resp {k} {prompt}" for k in range(n)]}
        if labelled:
            r["rewards"] = rewards[:n]
        return r
    return st.builds(row, st.integers(0, 10**6), text, st.integers(2, 3),
                     st.lists(st.floats(-5, 5), min_size=3, max_size=3))


def bad_scored_row(labelled: bool) -> st.SearchStrategy[bytes]:
    """A JSON object that breaks the scored-responses definition in one field."""
    base = {"id": "z", "prompt": "p", "responses": ["a", "b"], **({"rewards": [0.0, 1.0]} if labelled else {})}
    bad = [{**base, "responses": []}, {**base, "responses": "a"}, {**base, "prompt": 3},
           {k: v for k, v in base.items() if k != "responses"}, {**base, "prompt": [{"role": "user"}]},
           {**base, "responses": ["a", 7]}]
    if labelled:
        bad += [{**base, "rewards": [0.0]}, {**base, "rewards": ["x", 1]}, {**base, "rewards": None}]
    return st.sampled_from([_dump(b) for b in bad] + [b'{"id": "s", "prompt": "\\ud800", "responses": ["a", "b"]'
                                                      + (b', "rewards": [0, 1]}' if labelled else b"}")])


def files(good: st.SearchStrategy[dict], bad: st.SearchStrategy[bytes]):
    """(bytes, 1-based lines of the bad lines (empty: none), ids of the good rows); blank lines and a BOM
    mixed in."""
    line = st.one_of(good.map(lambda r: ("good", _dump(r))), bad.map(lambda b: ("bad", b)),
                     st.just(("blank", b"   ")))

    @st.composite
    def build(draw):
        lines = draw(st.lists(line, min_size=1, max_size=8))
        bom = draw(st.booleans())
        bad_at = [k + 1 for k, (kind, _) in enumerate(lines) if kind == "bad"]
        body = b"\n".join(b for _, b in lines) + b"\n"
        ids = [json.loads(b)["id"] for kind, b in lines if kind == "good"]
        return (b"\xef\xbb\xbf" if bom else b"") + body, bad_at, ids
    return build()


def _check_located(e: Exception, path, lines: list[int] | None) -> None:
    """One line naming the file and, where ``lines`` are given, one of them (parse errors are found
    while reading, field errors after: either may come first)."""
    msg = str(e)
    assert isinstance(e, UserError), repr(e)
    assert "\n" not in msg and str(path) in msg, msg
    if lines:
        assert any(msg.startswith(f"{path} line {n}: ") for n in lines), (msg, lines)


def fake_gold(prompts, responses):
    return np.array([len(r) + (hash(p if isinstance(p, str) else str(p)) % 7) / 10
                     for p, r in zip(prompts, responses)], dtype=np.float64)


@FUZZ
@given(case=files(scored_rows(False), st.one_of(bad_lines(), bad_scored_row(False))))
def test_label_gives_a_located_line_or_labels_every_row(tmp_path_factory, case) -> None:
    body, bad_at, ids = case
    first_bad = bad_at[0] if bad_at else None
    d = tmp_path_factory.mktemp("label")
    path = d / "samples.jsonl"
    path.write_bytes(body)
    try:
        label(str(path), fake_gold, out_scored=str(d / "scored.jsonl"), out_pairs=None)
    except Exception as e:  # noqa: BLE001 - the assertion is on its type and its text
        if first_bad is None and not ids:
            _check_located(e, path, None)  # no rows at all
        elif first_bad is None and len(set(ids)) < len(ids):
            assert isinstance(e, DataError) and "duplicate id" in str(e), e
        else:
            assert first_bad is not None, f"a good file failed: {e!r}"
            if not (len(set(ids)) < len(ids) and "duplicate id" in str(e)):
                _check_located(e, path, [first_bad])  # read line by line: the first bad line
        return
    assert first_bad is None
    out = [json.loads(x) for x in (d / "scored.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == ids and all(len(r["rewards"]) == len(r["responses"]) for r in out)


@FUZZ
@given(case=files(scored_rows(True), st.one_of(bad_lines(), bad_scored_row(True))))
def test_match_gives_a_located_line_or_figures(tmp_path_factory, case) -> None:
    body, bad_at, ids = case
    first_bad = bad_at[0] if bad_at else None
    d = tmp_path_factory.mktemp("match")
    path = d / "heldout.jsonl"
    path.write_bytes(body)
    try:
        result = run_match({"heldout": str(path)}, fake_gold, out=d / "out")
    except Exception as e:  # noqa: BLE001
        if first_bad is None:
            # a good file fails only for a stated reason: no rows, duplicate ids or no comparable pairs
            assert isinstance(e, DataError) and any(
                k in str(e) for k in ("no rows", "duplicate id", "nothing to match")), repr(e)
        elif not (len(set(ids)) < len(ids) and "duplicate id" in str(e)):
            _check_located(e, path, [first_bad])
        return
    assert first_bad is None and result["figures"]["heldout"]["n_pairs"] > 0


def response_rows() -> st.SearchStrategy[dict]:
    return st.builds(lambda i, p, r: {"id": f"x{i}", "prompt": p, "response": r}, st.integers(0, 10**6), text, text)


def bad_response_row() -> st.SearchStrategy[bytes]:
    return st.sampled_from([_dump({"prompt": "p"}), _dump({"prompt": "p", "response": 3}),
                            _dump({"prompt": "p", "response": "  "}),
                            b'{"prompt": "p", "response": "\\udc00x"}',
                            _dump({"messages": [{"role": "user", "content": "hi"}]})])


@FUZZ
@given(case=files(response_rows(), st.one_of(bad_lines(), bad_response_row())))
def test_score_input_gives_a_located_line_or_every_row(tmp_path_factory, case) -> None:
    body, bad_at, ids = case
    path = tmp_path_factory.mktemp("score") / "responses.jsonl"
    path.write_bytes(body)
    try:
        inp = read_input(path)
    except Exception as e:  # noqa: BLE001
        _check_located(e, path, bad_at)
        assert bad_at or not ids
        return
    assert not bad_at and inp.ids == ids


def pair_rows() -> st.SearchStrategy[dict]:
    return st.builds(lambda i, p, c: {"id": f"p{i}", "prompt": p, "chosen": c + " yes", "rejected": c + " no"},
                     st.integers(0, 10**6), text, text)


@FUZZ
@given(case=files(pair_rows(), bad_lines()))
def test_inspect_counts_or_gives_one_line(tmp_path_factory, capsys, case) -> None:
    body, bad_at, ids = case
    path = tmp_path_factory.mktemp("inspect") / "pairs.jsonl"
    path.write_bytes(body)
    try:
        code = main(["inspect", str(path), "--tokenizer", ""])
    except SystemExit as e:
        code = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code in (2, 3) and len(err) == 1 and str(path) in err[0], (code, err)
        return
    out = capsys.readouterr().out
    if len(set(ids)) < len(ids) or bad_at:
        assert code == 3 and "invalid" in out
    else:
        assert code == 0 and f"valid: {len(ids)}" in out


@pytest.mark.parametrize("command", ["inspect", "label", "match", "score"])
def test_a_directory_or_a_missing_file_is_one_line(tmp_path, capsys, command) -> None:
    for target, what in ((tmp_path, "is a directory"), (tmp_path / "nope.jsonl", "no such file")):
        argv = {"inspect": ["inspect", str(target), "--tokenizer", ""],
                "label": ["label", "--gold", str(tmp_path), "--samples", str(target), "--out-scored",
                          str(tmp_path / "o.jsonl")],
                "match": ["match", "--proxy", str(tmp_path), "--heldout", str(target), "--out", str(tmp_path / "m")],
                "score": ["score", "--model", str(tmp_path), "--input", str(target), "--out",
                          str(tmp_path / "s.jsonl")]}[command]
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code in (2, 3) and len(err) == 1, err
        assert err[0].startswith("rm-ds: ") and (what in err[0] or "directory has no" in err[0]), err
