"""The tokenised cache is keyed by what a data path resolves to, not by the path's text.

Run: ``PYTHONPATH=. python -m pytest tests/test_cache_key.py -q``
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rm_ds.config import load_config
from rm_ds.data.pairs import load_pairs
from rm_ds.model import load_tokenizer
from tests.harness import make_tiny_setup


def rows(n: int, tag: str) -> list[str]:
    return [json.dumps({"prompt": f"q{i}", "chosen": f"{tag} good {i}", "rejected": f"{tag} bad {i}"})
            for i in range(n)]


@pytest.mark.parametrize("pattern", ["*.jsonl", "sub", "sub/*.jsonl"])
def test_rewritten_files_behind_a_glob_or_folder_are_retokenised(tmp_path: Path, pattern: str) -> None:
    from rm_ds.data.dataset import load_split

    make_tiny_setup(tmp_path, n_pairs=2)
    cfg = load_config(None, [f"model.name_or_path={tmp_path / 'model'}", "data.max_length=32"])
    tok = load_tokenizer(cfg.model.name_or_path)
    data = tmp_path / "sub" if pattern.startswith("sub") else tmp_path / "d"
    data.mkdir(exist_ok=True)
    f = data / "train.jsonl"
    f.write_text("\n".join(rows(1, "old")) + "\n")
    path = str(data / "*.jsonl") if pattern.endswith("*.jsonl") else str(data)
    dirs = {"cache_dir": tmp_path / "cache", "builtin_dir": tmp_path / "builtin"}
    ds, _ = load_split(cfg.data, tok, path, split="train", max_pairs=None, **dirs)
    assert len(ds) == 1
    f.write_text("\n".join(rows(3, "new")) + "\n")  # same path, new content
    ds, note = load_split(cfg.data, tok, path, split="train", max_pairs=None, **dirs)
    assert len(ds) == 3 and "3/3 pairs kept" in note
    assert tok.decode(ds[0]["chosen_ids"]).strip().startswith("new")
    (data / "more.jsonl").write_text("\n".join(rows(2, "more")) + "\n")  # a file added behind the pattern
    ds, _ = load_split(cfg.data, tok, path, split="train", max_pairs=None, **dirs)
    assert len(ds) == 5


def test_the_fingerprint_follows_content(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text("\n".join(rows(2, "x")) + "\n")
    first = load_pairs(str(f))[1].fingerprint
    assert load_pairs(str(f))[1].fingerprint == first
    f.write_text("\n".join(rows(2, "y")) + "\n")
    assert load_pairs(str(f))[1].fingerprint != first
