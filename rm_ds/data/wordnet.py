"""Default preference pairs built offline from WordNet 3.0 (Debian ``wordnet-base``).

Run: ``python -m rm_ds.data.wordnet --out data/wordnet [--n-train 20000 --n-eval 1000 --seed 0]``

Each pair asks for the meaning of one word sense::

    {"id": "wn-n-02084071-dog", "prompt": "What does the noun \"dog\" mean?",
     "chosen": "a member of the genus Canis ...", "rejected": "<another synset's definition>",
     "source": "noun/sibling"}

``chosen`` is the sense's own definition; ``rejected`` is the definition of another synset of the
same part of speech: a *sibling* (another hyponym of one of its hypernyms; only nouns and verbs
have hypernyms) for a ``hard_fraction`` share of the pairs, otherwise a random synset. A rejected
synset never contains the word itself, so it is never another valid meaning of the prompt's word.

The train/eval split is decided per lemma by sha256, so a word never appears in both splits and
the split never changes with ``n_train``, ``n_eval`` or ``seed``. Output is a deterministic
function of the arguments (and the WordNet files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = ["Synset", "build_wordnet_pairs", "main", "read_synsets", "split_of"]

GENERATOR_VERSION = 1
"""Bumped whenever the pair construction changes, so old manifests no longer match."""

EVAL_BUCKETS = 10
"""Lemmas whose sha256 bucket (0..99) is below this go to eval: about 10% of all words."""

MIN_DEFINITION_WORDS = 4

POS_FILES: dict[str, str] = {
    "noun": "data.noun",
    "verb": "data.verb",
    "adjective": "data.adj",
    "adverb": "data.adv",
}
_SS_TYPE_POS = {
    "n": "noun",
    "v": "verb",
    "a": "adjective",
    "s": "adjective",
    "r": "adverb",
}
_POS_LETTER = {"noun": "n", "verb": "v", "adjective": "a", "adverb": "r"}
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_VERSION_RE = re.compile(r"WordNet (\d+(?:\.\d+)*) Copyright")


class Synset(NamedTuple):
    """One parsed line of a WordNet ``data.<pos>`` file."""

    offset: str
    """8-digit byte offset: the synset's id within its file."""
    pos: str
    """"noun", "verb", "adjective" (head and satellite) or "adverb"."""
    lemmas: tuple[str, ...]
    """Words of the synset as written in the file (underscores kept, adjective markers removed)."""
    hypernyms: tuple[str, ...]
    """Offsets of ``@`` (hypernym) and ``@i`` (instance hypernym) targets of the same part of speech."""
    gloss: str
    """Everything after ``|``: definition, then ``; "example"`` quotes."""
    definition: str
    """The gloss before the first ``; "`` example quote, stripped."""


def _parse_line(line: str, *, path: Path, line_no: int) -> Synset:
    data, sep, gloss = line.partition(" | ")
    if not sep:
        data, sep, gloss = line.partition("|")
    f = data.split()
    try:
        offset, ss_type, w_cnt = f[0], f[2], int(f[3], 16)
        lemmas = tuple(_ADJ_MARKER.sub("", f[4 + 2 * i]) for i in range(w_cnt))
        k = 4 + 2 * w_cnt
        p_cnt = int(f[k])
        hypernyms = []
        for j in range(p_cnt):
            symbol, target, target_pos = f[k + 1 + 4 * j : k + 4 + 4 * j]
            if symbol in ("@", "@i") and target_pos == ss_type:
                hypernyms.append(target)
        pos = _SS_TYPE_POS[ss_type]
    except (IndexError, KeyError, ValueError) as e:
        raise ValueError(
            f"{path} line {line_no}: cannot parse WordNet synset line ({e!r})"
        ) from e
    gloss = gloss.strip()
    return Synset(
        offset=offset,
        pos=pos,
        lemmas=lemmas,
        hypernyms=tuple(hypernyms),
        gloss=gloss,
        definition=gloss.split('; "', 1)[0].strip(),
    )


def read_synsets(wordnet_dir: str | Path, pos: str) -> list[Synset]:
    """Parse ``data.<pos>`` in file order; license header lines (two leading spaces) are skipped."""
    path = Path(wordnet_dir) / POS_FILES[pos]
    out: list[Synset] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, start=1):
            if line.startswith("  ") or not line.strip():
                continue
            out.append(_parse_line(line.rstrip("\n"), path=path, line_no=line_no))
    return out


def wordnet_version(wordnet_dir: str | Path) -> str:
    """Version from the license header of data.noun (e.g. "3.0"), or "unknown"."""
    with open(
        Path(wordnet_dir) / POS_FILES["noun"], encoding="utf-8", errors="replace"
    ) as fh:
        for line in fh:
            if not line.startswith("  "):
                break
            m = _VERSION_RE.search(line)
            if m:
                return m.group(1)
    return "unknown"


def _word_key(lemma: str) -> str:
    return lemma.replace("_", " ").lower()


def split_of(lemma: str) -> str:
    """ "train" or "eval" for a lemma (any case, spaces or underscores): a fixed sha256 bucket."""
    return _split_of_key(_word_key(lemma))


def _split_of_key(key: str) -> str:
    digest = hashlib.sha256(("rm_ds.wordnet:" + key).encode("utf-8")).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % 100 < EVAL_BUCKETS else "train"


def _valid_definition(text: str) -> bool:
    return len(text.split()) >= MIN_DEFINITION_WORDS and not text.startswith('"')


class _Sense(NamedTuple):
    synset: Synset
    lemma: str  # as in the file, underscores kept
    key: str  # _word_key(lemma): what the split and the "not the same word" check use


class _PosTable:
    """All synsets of one part of speech, with the lookups the negatives need."""

    def __init__(self, synsets: Sequence[Synset]) -> None:
        self.synsets = list(synsets)
        self.valid = {s.offset for s in self.synsets if _valid_definition(s.definition)}
        self.with_definition = [s for s in self.synsets if s.offset in self.valid]
        self.children: dict[
            str, list[Synset]
        ] = {}  # hypernym offset -> hyponyms with a valid definition
        for s in self.with_definition:
            for h in s.hypernyms:
                self.children.setdefault(h, []).append(s)
        self.words = {s.offset: {_word_key(w) for w in s.lemmas} for s in self.synsets}
        self.lower_def = {s.offset: s.definition.lower() for s in self.synsets}

    def acceptable(self, negative: Synset, sense: _Sense) -> bool:
        """A negative must not be another meaning of the word, nor say the same thing."""
        own = sense.synset.offset
        return (
            negative.offset != own
            and negative.offset in self.valid
            and sense.key not in self.words[negative.offset]
            and self.lower_def[negative.offset] != self.lower_def[own]
        )

    def sibling_negative(self, sense: _Sense, rng: random.Random) -> Synset | None:
        """A random acceptable co-hyponym of any of the sense's hypernyms, or None if there is none."""
        cands: list[Synset] = []
        for h in sense.synset.hypernyms:
            cands.extend(self.children.get(h, ()))
        if (
            len(sense.synset.hypernyms) > 1
        ):  # a synset can share several hypernyms with a sibling
            cands = list({c.offset: c for c in cands}.values())
        if not cands:
            return None
        for _ in range(8):  # usually the first draw is acceptable
            cand = cands[rng.randrange(len(cands))]
            if self.acceptable(cand, sense):
                return cand
        ok = [c for c in cands if self.acceptable(c, sense)]
        return ok[rng.randrange(len(ok))] if ok else None

    def random_negative(self, sense: _Sense, rng: random.Random) -> Synset:
        pool = self.with_definition
        for _ in range(100):
            cand = pool[rng.randrange(len(pool))]
            if self.acceptable(cand, sense):
                return cand
        for cand in pool:  # practically unreachable; keeps the function total
            if self.acceptable(cand, sense):
                return cand
        raise ValueError(f"no random negative for {sense.lemma!r} ({sense.synset.pos})")


def _senses(tables: dict[str, _PosTable]) -> Iterator[_Sense]:
    for pos in POS_FILES:
        for s in tables[pos].synsets:
            if s.offset not in tables[pos].valid:
                continue
            seen: set[str] = set()
            for lemma in s.lemmas:
                key = _word_key(lemma)
                if key not in seen:
                    seen.add(key)
                    yield _Sense(s, lemma, key)


def _make_pairs(
    pool: list[_Sense],
    tables: dict[str, _PosTable],
    *,
    n: int,
    hard_fraction: float,
    rng: random.Random,
    split: str,
) -> list[dict[str, str]]:
    """Random negatives for a uniform sample of the pool, siblings for the first eligible others."""
    if n > len(pool):
        raise ValueError(
            f"asked for {n} {split} pairs but the {split} split has only {len(pool)} word senses"
        )
    order = list(pool)
    rng.shuffle(order)
    n_hard = round(hard_fraction * n)
    n_random = n - n_hard
    picked: list[tuple[int, _Sense, Synset, str]] = []
    for i, sense in enumerate(order[:n_random]):
        picked.append(
            (i, sense, tables[sense.synset.pos].random_negative(sense, rng), "random")
        )
    n_found = 0
    for i in range(n_random, len(order)):
        if n_found == n_hard:
            break
        sense = order[i]
        sib = tables[sense.synset.pos].sibling_negative(sense, rng)
        if sib is not None:
            picked.append((i, sense, sib, "sibling"))
            n_found += 1
    if n_found < n_hard:
        raise ValueError(
            f"{split}: only {n_found} senses have a sibling negative, {n_hard} needed"
        )
    picked.sort(key=lambda t: t[0])
    rows = []
    for _, sense, neg, kind in picked:
        s = sense.synset
        rows.append(
            {
                "id": f"wn-{_POS_LETTER[s.pos]}-{s.offset}-{sense.lemma}",
                "prompt": f'What does the {s.pos} "{sense.lemma.replace("_", " ")}" mean?',
                "chosen": s.definition,
                "rejected": neg.definition,
                "source": f"{s.pos}/{kind}",
            }
        )
    return rows


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.replace(tmp, path)


def _params(
    *, n_train: int, n_eval: int, seed: int, hard_fraction: float, version: str
) -> dict[str, object]:
    return {
        "generator_version": GENERATOR_VERSION,
        "wordnet_version": version,
        "n_train": n_train,
        "n_eval": n_eval,
        "seed": seed,
        "hard_fraction": hard_fraction,
        "eval_buckets_of_100": EVAL_BUCKETS,
    }


def _existing_manifest(out: Path, params: dict[str, object]) -> dict | None:
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        if any(manifest.get(k) != v for k, v in params.items()):
            return None
        for name, info in manifest["files"].items():
            if _sha256(out / name) != info["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def build_wordnet_pairs(
    out_dir: str | Path,
    *,
    wordnet_dir: str | Path = "/usr/share/wordnet",
    n_train: int = 20000,
    n_eval: int = 1000,
    seed: int = 0,
    hard_fraction: float = 0.5,
) -> dict:
    """Write ``train.jsonl``, ``eval.jsonl`` and ``manifest.json`` into ``out_dir``; return the manifest.

    Idempotent: if a manifest with the same parameters exists and both files still match its
    sha256, nothing is written. Raises ValueError if a split has too few senses.
    """
    if n_train < 0 or n_eval < 0:
        raise ValueError(f"n_train and n_eval must be >= 0, got {n_train} and {n_eval}")
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
    out = Path(out_dir)
    params = _params(
        n_train=n_train,
        n_eval=n_eval,
        seed=seed,
        hard_fraction=hard_fraction,
        version=wordnet_version(wordnet_dir),
    )
    existing = _existing_manifest(out, params)
    if existing is not None:
        return existing

    tables = {pos: _PosTable(read_synsets(wordnet_dir, pos)) for pos in POS_FILES}
    pools: dict[str, list[_Sense]] = {"train": [], "eval": []}
    for sense in _senses(tables):
        pools[_split_of_key(sense.key)].append(sense)
    files: dict[str, dict[str, object]] = {}
    sources: dict[str, dict[str, int]] = {}
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("eval", n_eval)):
        # one stream per split, so the eval pairs do not depend on n_train
        split_seed = int.from_bytes(
            hashlib.sha256(f"{seed}:{split}".encode()).digest()[:8], "big"
        )
        rows = _make_pairs(
            pools[split],
            tables,
            n=n,
            hard_fraction=hard_fraction,
            rng=random.Random(split_seed),
            split=split,
        )
        name = f"{split}.jsonl"
        _write_jsonl(out / name, rows)
        files[name] = {"rows": len(rows), "sha256": _sha256(out / name)}
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["source"]] = counts.get(r["source"], 0) + 1
        sources[split] = dict(sorted(counts.items()))
    manifest = {
        **params,
        "wordnet_dir": str(wordnet_dir),
        "senses_available": {k: len(v) for k, v in pools.items()},
        "sources": sources,
        "files": files,
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "manifest.json")
    return manifest


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m rm_ds.data.wordnet", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--wordnet-dir", default="/usr/share/wordnet")
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard-fraction", type=float, default=0.5)
    a = p.parse_args(argv)
    manifest = build_wordnet_pairs(
        a.out,
        wordnet_dir=a.wordnet_dir,
        n_train=a.n_train,
        n_eval=a.n_eval,
        seed=a.seed,
        hard_fraction=a.hard_fraction,
    )
    print(json.dumps(manifest, indent=2))
    return manifest


if __name__ == "__main__":
    main()
