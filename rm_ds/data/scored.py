"""The scored-responses format: several responses per prompt, with or without their rewards.

This docstring is the format's definition. One JSON object per line (``.jsonl``)::

    {"id": "wn-n-1", "prompt": "What does ...?", "responses": ["...", "..."], "rewards": [0.31, -1.2]}

``id``         a string or an integer (read as a string), unique in the file
``prompt``     a string, or a list of ``{"role", "content"}`` messages
``responses``  a non-empty list of strings: the replies to the prompt, in a fixed order
``rewards``    absent or null (unlabelled), or one finite number per response, aligned by index
``...``        any other key (``finish``, ``gold``, ``seed``, ...) is carried through unchanged

Rewards are always aligned by ``(id, response index)``, never by file order. Who writes it:
``rm-ds sample`` (no rewards), ``rm-ds label --out-scored`` and ``rm-ds score`` (rewards, plus
``gold``: the scorer's name). Who reads it: ``rm-ds label``, ``rm-ds match``, ``rm-ds inspect``,
``rm-ds select``, ``rm-ds score``, and training with ``data.format=scored`` (pairs formed by
``data.pairing`` on the rewards; ``rm_ds.data.formats``).

The folder form (as some evaluation tools export it): a folder holding three parallel JSON files,
``prompts.json`` (a list of prompts), ``responses.json`` (``[{"response_1": ..., "response_2": ...},
...]``) and ``rewards.json`` (``[[r1, r2], ...]``); ``scored_from_files`` turns them into rows.

Errors are ``DataError`` naming the file, the line and the field::

    samples.jsonl line 2: field 'rewards': expected 2 finite numbers, one per response
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rm_ds.data.jsonl import read_jsonl
from rm_ds.errors import ConfigError, DataError

__all__ = ["SCORED_FILES", "PairStats", "check_row", "make_pairs", "read_scored", "scored_from_files"]

SCORED_FILES = ("prompts.json", "responses.json", "rewards.json")
"""The three parallel files of the folder form."""


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _valid_text(v: str) -> bool:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which json.loads lets through
        return False
    return True


def _check_prompt(prompt: Any, where: str) -> None:
    if isinstance(prompt, str):
        if not _valid_text(prompt):
            raise DataError(f"{where}: field 'prompt': a lone surrogate is not valid Unicode")
        return
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"{where}: field 'prompt': expected a string or a non-empty message list")
    for k, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: field 'prompt': message {k}: expected {{'role': str, 'content': str}}")
        if not (_valid_text(m["role"]) and _valid_text(m["content"])):
            raise DataError(f"{where}: field 'prompt': message {k}: a lone surrogate is not valid Unicode")


def check_row(row: dict, where: str, *, need_rewards: bool = False) -> dict:
    """``row`` validated in place (``id`` made a string); ``where`` is its location for errors."""
    for key in ("id", "prompt", "responses"):
        if row.get(key) is None:
            raise DataError(f"{where}: field '{key}': missing")
    if isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)):
        raise DataError(f"{where}: field 'id': expected a string or an integer, got {type(row['id']).__name__}")
    row["id"] = str(row["id"])
    _check_prompt(row["prompt"], where)
    resp = row["responses"]
    if not isinstance(resp, list) or not resp or not all(isinstance(r, str) for r in resp):
        raise DataError(f"{where}: field 'responses': expected a non-empty list of strings")
    bad = next((j for j, r in enumerate(resp) if not _valid_text(r)), None)
    if bad is not None:
        raise DataError(f"{where}: field 'responses': response {bad}: a lone surrogate is not valid Unicode")
    rewards = row.get("rewards")
    if rewards is None and need_rewards:
        raise DataError(f"{where}: field 'rewards': missing (label the file with rm-ds label first)")
    if rewards is not None and (not isinstance(rewards, list) or len(rewards) != len(resp)
                                or not all(_finite(x) for x in rewards)):
        raise DataError(f"{where}: field 'rewards': expected {len(resp)} finite numbers, one per response")
    return row


def read_scored(path: str | Path, *, need_rewards: bool = False) -> list[dict]:
    """Every row of a scored-responses JSONL file, validated (``check_row``), ids unique."""
    rows, seen = [], {}
    for line_no, row in read_jsonl(path):
        where = f"{path} line {line_no}"
        check_row(row, where, need_rewards=need_rewards)
        if row["id"] in seen:
            raise DataError(f"{where}: field 'id': duplicate id {row['id']!r} (first at line {seen[row['id']]})")
        seen[row["id"]] = line_no
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def scored_from_files(prompts: Any, responses: Any, rewards: Any) -> list[dict]:
    """The three parallel JSON files -> scored rows; raises ValueError/TypeError naming the file and index."""
    for name, v in zip(SCORED_FILES, (prompts, responses, rewards)):
        if not isinstance(v, list):
            raise TypeError(f"{name}: expected a JSON array, got {type(v).__name__}")
    n = {name: len(v) for name, v in zip(SCORED_FILES, (prompts, responses, rewards))}
    if len(set(n.values())) != 1:
        short = min(n, key=n.get)
        raise ValueError(f"the three files differ in length ({', '.join(f'{k}: {v}' for k, v in n.items())}): "
                         f"index {n[short]} has no entry in {short}")
    rows = []
    for i, (p, resp, rew) in enumerate(zip(prompts, responses, rewards)):
        if not isinstance(resp, dict):
            raise TypeError(f"responses.json index {i}: expected an object {{'response_1': ...}}, got "
                            f"{type(resp).__name__}")
        keyed = []
        for k in resp:
            m = re.fullmatch(r"response_(\d+)", k)
            if m is None:
                raise ValueError(f"responses.json index {i}: key {k!r} is not response_<n>")
            keyed.append((int(m.group(1)), resp[k]))
        if not isinstance(rew, list):
            raise TypeError(f"rewards.json index {i}: expected a list of rewards, got {type(rew).__name__}")
        if len(rew) != len(keyed):
            raise ValueError(f"index {i}: responses.json has {len(keyed)} responses but rewards.json has "
                             f"{len(rew)} rewards")
        rows.append({"prompt": p, "responses": [v for _, v in sorted(keyed)], "rewards": rew})
    return rows


@dataclass
class PairStats:
    prompts: int = 0
    """Rows read."""
    candidates: int = 0
    """Response pairs considered (n*(n-1)/2 per prompt)."""
    pairs: int = 0
    """Pairs written."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Reason -> pairs skipped: "tie" (|gold difference| <= tie_eps), "identical responses", "empty response"."""

    @property
    def tie_rate(self) -> float:
        return self.skipped.get("tie", 0) / max(1, self.candidates)

    def summary(self) -> str:
        return (f"{self.pairs} pairs from {self.prompts} prompts ({self.candidates} candidate pairs); "
                f"ties {self.skipped.get('tie', 0)} (tie rate {self.tie_rate:.2%}); skipped {self.skipped}")


def make_pairs(rows: list[dict], *, tie_eps: float = 0.0, margin: bool = False) -> tuple[list[dict], PairStats]:
    """Preference pairs from labelled rows: the higher gold reward is chosen; ties skipped and counted."""
    if tie_eps < 0:
        raise ConfigError(f"--tie-eps: must be >= 0, got {tie_eps}")
    pairs, stats = [], PairStats(prompts=len(rows))
    for r in rows:
        resp, rew = r["responses"], r["rewards"]
        for i in range(len(resp)):
            for j in range(i + 1, len(resp)):
                stats.candidates += 1
                reason = None
                if not resp[i].strip() or not resp[j].strip():
                    reason = "empty response"
                elif resp[i] == resp[j]:
                    reason = "identical responses"
                elif abs(rew[i] - rew[j]) <= tie_eps:
                    reason = "tie"
                if reason:
                    stats.skipped[reason] = stats.skipped.get(reason, 0) + 1
                    continue
                c, w = (i, j) if rew[i] > rew[j] else (j, i)
                pair = {"id": f"{r['id']}:{c}>{w}", "prompt": r["prompt"], "chosen": resp[c], "rejected": resp[w],
                        "gold_chosen": rew[c], "gold_rejected": rew[w],
                        "gold_pref": 1.0 / (1.0 + math.exp(-(rew[c] - rew[w])))}
                if margin:
                    pair["margin"] = rew[c] - rew[w]
                if "source" in r:
                    pair["source"] = r["source"]
                pairs.append(pair)
    stats.pairs = len(pairs)
    return pairs, stats
