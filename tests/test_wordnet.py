"""Tests for rm_ds.data.wordnet against the real WordNet 3.0 files (Debian ``wordnet-base``).

Run: ``PYTHONPATH=. python -m pytest tests/test_wordnet.py -q``
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rm_ds.data.wordnet import (
    POS_FILES,
    Synset,
    _existing_manifest,
    build_wordnet_pairs,
    read_synsets,
    split_of,
    wordnet_version,
)

WORDNET = Path("/usr/share/wordnet")
REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_EVAL = 4000, 600
PROMPT = re.compile(r'^What does the (noun|verb|adjective|adverb) "(.+)" mean\?$')

needs_wordnet = pytest.mark.skipif(
    not (WORDNET / "data.noun").exists(), reason="wordnet-base not installed"
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- parser, on hand-written lines

HEADER = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  14 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.  \n"
)


def test_parser_reads_words_pointers_and_gloss(tmp_path: Path) -> None:
    (tmp_path / "data.noun").write_text(
        HEADER
        + "00001740 03 n 02 entity 0 Big_Thing 1 002 ~ 00001930 n 0000 @i 00000001 n 0000 | "
        'that which exists; "an example"; "another"  \n'
    )
    (tmp_path / "data.verb").write_text(
        HEADER
        + "00002325 29 v 01 respire 1 002 @ 02108395 v 0000 + 03110323 a 0101 01 + 02 00 | "
        "undergo the metabolic processes of respiration  \n"
    )
    (tmp_path / "data.adj").write_text(
        HEADER
        + "00019731 00 s 02 handy 0 ready_to_hand(p) 0 001 & 00019131 a 0000 | easy to reach  \n"
    )
    [noun] = read_synsets(tmp_path, "noun")
    assert noun == Synset(
        offset="00001740",
        pos="noun",
        lemmas=("entity", "Big_Thing"),
        hypernyms=("00000001",),
        gloss='that which exists; "an example"; "another"',
        definition="that which exists",
    )
    [verb] = read_synsets(tmp_path, "verb")
    assert (
        verb.hypernyms == ("02108395",)
        and verb.definition == "undergo the metabolic processes of respiration"
    )
    [adj] = read_synsets(tmp_path, "adjective")
    assert (
        adj.pos == "adjective"
        and adj.lemmas == ("handy", "ready_to_hand")
        and adj.hypernyms == ()
    )
    assert wordnet_version(tmp_path) == "3.0"


def test_split_is_a_fixed_function_of_the_word() -> None:
    assert split_of("hot_dog") == split_of("Hot Dog") == split_of("hot dog")
    buckets = [split_of(f"word{i}") for i in range(5000)]
    assert 0.07 < buckets.count("eval") / len(buckets) < 0.13
    # pinned: the split must never change between versions (it would leak eval words into training)
    digest = hashlib.sha256(
        "".join(split_of(f"w{i}")[0] for i in range(200)).encode()
    ).hexdigest()
    assert digest == PINNED_SPLIT_DIGEST


PINNED_SPLIT_DIGEST = "f09b02bde167b8f64df15bdcfd1b1caac37fb7471ba942da728d968cde3280d4"


# ---------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    if not (WORDNET / "data.noun").exists():
        pytest.skip("wordnet-base not installed")
    out = tmp_path_factory.mktemp("wn")
    return out, build_wordnet_pairs(out, n_train=N_TRAIN, n_eval=N_EVAL, seed=0)


@pytest.fixture(scope="module")
def synsets() -> dict[tuple[str, str], Synset]:
    if not (WORDNET / "data.noun").exists():
        pytest.skip("wordnet-base not installed")
    return {
        (s.pos, s.offset): s for pos in POS_FILES for s in read_synsets(WORDNET, pos)
    }


@pytest.mark.slow
@needs_wordnet
def test_sizes_manifest_and_hashes(built: tuple[Path, dict]) -> None:
    out, manifest = built
    train, evl = read_jsonl(out / "train.jsonl"), read_jsonl(out / "eval.jsonl")
    assert len(train) == N_TRAIN and len(evl) == N_EVAL
    assert manifest["wordnet_version"] == "3.0"
    assert (
        manifest["seed"] == 0
        and manifest["n_train"] == N_TRAIN
        and manifest["n_eval"] == N_EVAL
    )
    for name, rows in (("train.jsonl", N_TRAIN), ("eval.jsonl", N_EVAL)):
        assert manifest["files"][name]["rows"] == rows
        assert (
            manifest["files"][name]["sha256"]
            == hashlib.sha256((out / name).read_bytes()).hexdigest()
        )
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert sum(manifest["sources"]["train"].values()) == N_TRAIN


@pytest.mark.slow
@needs_wordnet
def test_rows_are_well_formed(built: tuple[Path, dict]) -> None:
    out, _ = built
    for split in ("train", "eval"):
        rows = read_jsonl(out / f"{split}.jsonl")
        assert len({r["id"] for r in rows}) == len(rows)
        for r in rows:
            assert set(r) == {"id", "prompt", "chosen", "rejected", "source"}
            m = PROMPT.match(r["prompt"])
            assert m, r
            assert "_" not in m.group(2)
            pos, kind = r["source"].split("/")
            assert pos == m.group(1) and kind in ("sibling", "random")
            assert r["chosen"] != r["rejected"]
            assert len(r["chosen"].split()) >= 4 and len(r["rejected"].split()) >= 4
            assert '; "' not in r["chosen"] and r["chosen"] == r["chosen"].strip()


@pytest.mark.slow
@needs_wordnet
def test_hard_fraction_and_parts_of_speech(built: tuple[Path, dict]) -> None:
    out, _ = built
    rows = read_jsonl(out / "train.jsonl")
    kinds = [r["source"].split("/")[1] for r in rows]
    assert kinds.count("sibling") == round(0.5 * N_TRAIN)
    assert {r["source"].split("/")[0] for r in rows} == set(POS_FILES)
    # only nouns and verbs have hypernyms, so only they get sibling negatives
    assert {r["source"] for r in rows if r["source"].endswith("/sibling")} <= {
        "noun/sibling",
        "verb/sibling",
    }


@pytest.mark.slow
@needs_wordnet
def test_split_is_disjoint_by_word(built: tuple[Path, dict]) -> None:
    out, _ = built
    words = {}
    for split in ("train", "eval"):
        words[split] = {
            PROMPT.match(r["prompt"]).group(2).lower()
            for r in read_jsonl(out / f"{split}.jsonl")
        }
        assert all(split_of(w) == split for w in words[split])
    assert not words["train"] & words["eval"]


@pytest.mark.slow
@needs_wordnet
def test_chosen_is_the_sense_definition_and_negatives_are_valid(
    built: tuple[Path, dict], synsets: dict[tuple[str, str], Synset]
) -> None:
    out, _ = built
    by_def: dict[tuple[str, str], list[Synset]] = {}
    for s in synsets.values():
        by_def.setdefault((s.pos, s.definition), []).append(s)
    n_sibling = 0
    for r in read_jsonl(out / "train.jsonl") + read_jsonl(out / "eval.jsonl"):
        _, letter, offset, lemma = r["id"].split("-", 3)
        pos, kind = r["source"].split("/")
        own = synsets[(pos, offset)]
        assert (
            letter == {"noun": "n", "verb": "v", "adjective": "a", "adverb": "r"}[pos]
        )
        assert lemma in own.lemmas and r["chosen"] == own.definition
        word = lemma.lower()
        negatives = by_def[
            (pos, r["rejected"])
        ]  # same part of speech by construction of the lookup
        # the rejected definition is not another meaning of the same word
        assert any(word not in {w.lower() for w in n.lemmas} for n in negatives)
        if kind == "sibling":
            n_sibling += 1
            assert any(
                set(n.hypernyms) & set(own.hypernyms) and n.offset != own.offset
                for n in negatives
            ), r
    assert n_sibling > 0


@pytest.mark.slow
@needs_wordnet
def test_deterministic(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, manifest = built
    again = build_wordnet_pairs(
        tmp_path / "again", n_train=N_TRAIN, n_eval=N_EVAL, seed=0
    )
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
    assert again["files"] == manifest["files"]


@pytest.mark.slow
@needs_wordnet
def test_idempotent_and_rebuilds_when_stale(
    built: tuple[Path, dict], tmp_path: Path
) -> None:
    out = tmp_path / "wn"
    shutil.copytree(built[0], out)
    args = {"n_train": N_TRAIN, "n_eval": N_EVAL, "seed": 0}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert build_wordnet_pairs(out, **args) == built[1]
    assert {
        p.name: p.stat().st_mtime_ns for p in out.iterdir()
    } == mtimes  # nothing rewritten
    (out / "eval.jsonl").write_text("tampered\n")
    assert build_wordnet_pairs(out, **args) == built[1]
    assert (out / "eval.jsonl").read_bytes() == (built[0] / "eval.jsonl").read_bytes()
    # other arguments do not match the manifest (checked without paying for a rebuild)
    params = {
        k: built[1][k]
        for k in (
            "generator_version",
            "wordnet_version",
            "n_train",
            "n_eval",
            "seed",
            "hard_fraction",
            "eval_buckets_of_100",
        )
    }
    assert _existing_manifest(out, params) == built[1]
    assert _existing_manifest(out, {**params, "n_train": N_TRAIN + 1}) is None
    assert _existing_manifest(out, {**params, "seed": 1}) is None


@pytest.mark.slow
@needs_wordnet
def test_too_many_pairs_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="eval split has only"):
        build_wordnet_pairs(tmp_path, n_train=10, n_eval=10**6)


@pytest.mark.slow
@needs_wordnet
def test_cli_other_seed_size_and_hard_fraction(
    built: tuple[Path, dict], tmp_path: Path
) -> None:
    cmd = [
        sys.executable,
        "-m",
        "rm_ds.data.wordnet",
        "--out",
        str(tmp_path / "d"),
        "--n-train",
        "1000",
        "--n-eval",
        "100",
        "--seed",
        "3",
        "--hard-fraction",
        "0.2",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=120, check=True
    )
    manifest = json.loads(res.stdout)
    assert manifest == json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["n_train"] == 1000 and manifest["seed"] == 3
    rows = read_jsonl(tmp_path / "d" / "train.jsonl")
    assert len(rows) == 1000
    assert sum(r["source"].endswith("/sibling") for r in rows) == 200
    assert (
        manifest["files"]["train.jsonl"]["sha256"]
        != built[1]["files"]["train.jsonl"]["sha256"]
    )
    # the split is the same function of the word whatever the size and seed
    for split in ("train", "eval"):
        for r in read_jsonl(tmp_path / "d" / f"{split}.jsonl"):
            assert split_of(PROMPT.match(r["prompt"]).group(2)) == split


@pytest.mark.slow
@needs_wordnet
def test_output_loads_with_load_pairs(built: tuple[Path, dict]) -> None:
    from rm_ds.data.pairs import load_pairs

    out, _ = built
    ds, report = load_pairs(str(out / "eval.jsonl"))
    assert report.n_loaded == N_EVAL and report.skipped == {}
    assert ds[0]["pair_id"].startswith("wn-") and ds[0]["format"] == "text"
