"""rm-ds inspect: counts by reason, truncation, exit code; scored-responses summaries."""

import json

from rm_ds.cli import main


def _run(capsys, *argv):
    try:
        code = main(["inspect", *argv])
    except SystemExit as e:  # a located one-line error
        code = e.code
    return code, capsys.readouterr().out


def test_pairs_summary_counts_invalid_rows_and_exits_nonzero(tmp_path, capsys):
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "prompt": "one two three four five six", "chosen": "yes yes", "rejected": "no", "source": "s1"},
        {"id": "b", "prompt": "hi", "chosen": "same", "rejected": "same"},
        {"id": "c", "prompt": "x", "chosen": "ok"},
        {"id": "d", "prompt": "short", "chosen": "fine", "rejected": "bad", "source": "s2"}]) + "\n")
    code, out = _run(capsys, str(f), "--max-length", "8")
    assert code == 3  # invalid rows are a data error
    assert "format: pairs (text)" in out and "rows: 4  valid: 2  invalid: 2" in out
    assert "invalid, missing field 'rejected': 1" in out and "p.jsonl line 3: field 'rejected': missing" in out
    assert "ties (identical chosen and rejected): 1" in out
    assert "prompt_truncated: 1 (50.0%)" in out  # 6 words + [CLS]/[SEP] + a 3-token response > 8
    assert "sources: s1 1, s2 1" in out
    assert _run(capsys, str(f), "--skip-invalid")[0] == 0


def test_scored_summary_counts_gold_ties(tmp_path, capsys):
    f = tmp_path / "s.jsonl"
    f.write_text("\n".join(json.dumps({"id": str(i), "prompt": "p", "responses": ["a", "b"],
                                       "rewards": [1.0, 1.0 if i < 2 else 2.0], "policy": "pol"})
                           for i in range(5)) + "\n")
    code, out = _run(capsys, str(f))
    assert code == 0 and "format: scored responses" in out and "labelled: 5/5" in out
    assert "3 pairs from 5 prompts (5 candidate pairs); ties 2 (tie rate 40.00%)" in out
