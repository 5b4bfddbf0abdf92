"""``rm-ds score``: rewards for a file of responses or pairs, on one process or sharded over ranks.

    rm-ds score --model runs/default/export/final --input pairs.jsonl --out scores.jsonl
    rm-ds score --model runs/default --step best --input responses.jsonl --out scores.parquet
    rm-ds score --model A --model B --input pairs.jsonl --out ensemble.jsonl          # an ensemble
    deepspeed --num_gpus 2 --master_addr 127.0.0.1 --module rm_ds.cli score --model A --input X --out Y

Input (``.jsonl``, ``.json`` or ``.parquet``), recognised by its first row:

- responses: ``{"prompt": ..., "response": ...}`` (strings or message lists), or ``{"messages": [...]}``
  (a conversation ending with the assistant turn to score);
- scored responses (``rm_ds.data.scored``): ``{"id", "prompt", "responses": [...]}``: written back with
  ``rewards`` filled in (and ``rewards/<objective>``, ``reward_std`` where they apply);
- pairs: anything ``rm_ds.data.pairs.load_pairs`` reads (``prompt``/``chosen``/``rejected``, chat pairs).

One output row per input row, in input order: ``id``, ``status`` (ok, prompt_truncated,
response_truncated, dropped_*: not scored, rewards null) and the columns of
``rm_ds.serve.scorer.response_columns`` / ``pair_columns``. Under a launcher every rank scores its shard
(``eval_shards``: every row once), the rows are gathered with ``rm_ds.cluster.dist.gather_rows`` and rank 0
checks that each appears exactly once and writes the file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rm_ds.cluster import dist
from rm_ds.data.readers import read_records
from rm_ds.errors import ConfigError, DataError
from rm_ds.serve.scorer import (
    TRUNCATED,
    Encoded,
    Scorer,
    check_ensemble,
    load_scorer,
    pair_columns,
    response_columns,
)

log = logging.getLogger(__name__)


@dataclass
class ScoreInput:
    kind: str
    """"responses", "scored" or "pairs"."""
    ids: list[str]
    prompts: list
    chosen: list
    """The responses (responses/scored) or the chosen responses (pairs)."""
    rejected: list | None
    rows: list[dict] | None = None
    """scored: the input rows (written back with rewards); their responses are flattened in order."""
    owner: list[int] | None = None
    """scored: for each flattened response, its row."""


def _unicode(where: str, key: str, v: str) -> str:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate escape, which json.loads lets through
        raise DataError(f"{where}: field '{key}': lone surrogate {v[e.start]!r} at character {e.start} is not "
                        f"valid Unicode") from None
    return v


def _text_or_messages(where: str, row: dict, key: str, *, required: bool = True):
    v = row.get(key)
    if isinstance(v, str):
        _unicode(where, key, v)
    elif isinstance(v, list):
        for m in v:
            if isinstance(m, dict):
                for part in ("role", "content"):
                    if isinstance(m.get(part), str):
                        _unicode(where, key, m[part])
    if v is None:
        if required:
            raise DataError(f"{where}: field '{key}': missing")
        return ""
    if isinstance(v, str):
        if required and not v.strip():
            raise DataError(f"{where}: field '{key}': empty or whitespace-only")
        return v
    if isinstance(v, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                   and isinstance(m.get("content"), str) for m in v) and v:
        return [{"role": m["role"], "content": m["content"]} for m in v]
    raise DataError(f"{where}: field '{key}': expected a string or a list of {{role, content}} messages")


def read_input(path: str | Path) -> ScoreInput:
    path = Path(path)
    rows = [(r.where, r.row) for r in read_records(path)]
    if not rows:
        raise DataError(f"{path}: no rows")
    first = rows[0][1]
    if "chosen" in first or "rejected" in first:
        from rm_ds.data.pairs import load_pairs

        ds, _ = load_pairs(str(path))
        return ScoreInput("pairs", list(ds["pair_id"]), list(ds["prompt"]), list(ds["chosen"]), list(ds["rejected"]))
    ids, prompts, responses = [], [], []
    if "responses" in first:
        owner = []
        for i, (where, r) in enumerate(rows):
            resp = r.get("responses")
            if not isinstance(resp, list) or not resp:
                raise DataError(f"{where}: field 'responses': expected a non-empty list")
            prompt = _text_or_messages(where, r, "prompt")
            for j in range(len(resp)):
                prompts.append(prompt)
                responses.append(_text_or_messages(where, {"responses": resp[j]}, "responses"))
                ids.append(f"{r.get('id', i)}#{j}")
                owner.append(i)
        return ScoreInput("scored", ids, prompts, responses, None, rows=[r for _, r in rows], owner=owner)
    for i, (where, r) in enumerate(rows):
        if "messages" in r:
            msgs = _text_or_messages(where, r, "messages")
            if not isinstance(msgs, list) or msgs[-1]["role"] != "assistant":
                raise DataError(f"{where}: field 'messages': must be a message list ending with an assistant turn")
            prompts.append(msgs[:-1])
            responses.append(msgs[-1:])
        else:
            prompts.append(_text_or_messages(where, r, "prompt", required=False))
            responses.append(_text_or_messages(where, r, "response"))
        ids.append(str(r.get("id", f"{path.stem}:{i}")))
    return ScoreInput("responses", ids, prompts, responses, None)


def encode(scorer: Scorer, inp: ScoreInput) -> list[Encoded]:
    if inp.kind == "pairs":
        return scorer.encode_pairs(inp.prompts, inp.chosen, inp.rejected)
    return scorer.encode_responses(inp.prompts, inp.chosen)


def score_sharded(scorer: Scorer, items: list[Encoded], *, rank: int, world_size: int, progress=None) -> np.ndarray:
    """Every item's rewards in input order (NaN where not scored), each rank scoring its shard.

    The records ``(index, rewards...)`` are gathered to every rank and checked to cover each scored
    item exactly once, as the eval gather does.
    """
    idx, vals = scorer.score_items(items, rank=rank, world_size=world_size, progress=progress)
    shape = vals.shape[1:]
    local = torch.from_numpy(np.concatenate([idx[:, None].astype(np.float64), vals.reshape(len(idx), -1)], axis=1))
    rows = dist.gather_rows(local).numpy()
    index = rows[:, 0].astype(np.int64)
    expected = sum(e.scored for e in items)
    if len(np.unique(index)) != expected or len(index) != expected:
        raise RuntimeError(f"score gather covered {len(np.unique(index))} distinct rows from {len(index)} records; "
                           f"expected each of {expected} exactly once")
    full = np.full((len(items), *shape), np.nan)
    full[index] = rows[:, 1:].reshape(len(index), *shape)
    return full


def columns_for(scorers: list[Scorer], kind: str, rewards: list[np.ndarray]) -> dict[str, np.ndarray]:
    return pair_columns(scorers, rewards) if kind == "pairs" else response_columns(scorers, rewards)


def _json_value(v):
    v = float(v)
    return None if math.isnan(v) else v


def output_rows(inp: ScoreInput, statuses: list[str], cols: dict[str, np.ndarray]) -> list[dict]:
    if inp.kind != "scored":
        return [{"id": inp.ids[i], "status": statuses[i], **{k: _json_value(c[i]) for k, c in cols.items()}}
                for i in range(len(inp.ids))]
    out = [dict(r) for r in inp.rows]
    for k in list(cols) + ["status"]:
        name = "rewards" if k == "reward" else ("statuses" if k == "status" else f"rewards{k[len('reward'):]}")
        for r in out:
            r[name] = []
        for i, o in enumerate(inp.owner):
            out[o][name].append(statuses[i] if k == "status" else _json_value(cols[k][i]))
    return out


OUT_SUFFIXES = (".jsonl", ".parquet")


def check_paths(input_path: str | Path, out: str | Path) -> None:
    """``--out`` is a .jsonl or .parquet file and not the input itself (checked before any model loads)."""
    if Path(out).suffix not in OUT_SUFFIXES:
        raise ConfigError(f"--out {out}: expected a {' or '.join(OUT_SUFFIXES)} file name")
    if Path(out).resolve() == Path(input_path).resolve():
        raise ConfigError(f"--out {out}: is the input file; write the scores to another file")


def write_rows(rows: list[dict], out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp)
    else:
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, out)


def run(models: list[str], input_path: str, out: str, *, step: str | None = None, token_budget: int | None = None,
        allow_pad_eq_eos: bool = False, rank: int = 0, world_size: int = 1, show_progress: bool = True,
        dtype: str = "fp32") -> dict:
    """Score ``input_path`` with every model; rank 0 writes ``out``. Returns the closing figures."""
    check_paths(input_path, out)
    if token_budget is not None and token_budget < 1:
        raise ConfigError(f"--token-budget: must be >= 1, got {token_budget}")
    inp = read_input(input_path)  # before any model loads: a bad input costs no load time
    scorers = [load_scorer(m, step=step, token_budget=token_budget, allow_pad_eq_eos=allow_pad_eq_eos, dtype=dtype)
               for m in models]
    check_ensemble(scorers)
    t0 = time.perf_counter()
    rewards, tokens, statuses = [], 0, None
    for s in scorers:
        items = encode(s, inp)
        statuses = statuses or [e.status for e in items]
        bar = None
        if show_progress and rank == 0 and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=sum(e.scored for e in items), desc=f"score {s.name}", unit=inp.kind.rstrip("s"),
                       dynamic_ncols=True)
        rewards.append(score_sharded(s, items, rank=rank, world_size=world_size,
                                     progress=bar.update if bar is not None else None))
        if bar is not None:
            bar.close()
        tokens += sum(len(e.prompt_ids) * (1 if e.rejected_ids is None else 2) + len(e.chosen_ids)
                      + len(e.rejected_ids or []) for e in items if e.scored)
    dt = time.perf_counter() - t0
    cols = columns_for(scorers, inp.kind, rewards)
    n = len(inp.ids)
    n_trunc = sum(s in TRUNCATED for s in statuses)
    n_drop = sum(s.startswith("dropped") for s in statuses)
    unit = "pairs" if inp.kind == "pairs" else "responses"
    figures = {"rows": n, "kind": inp.kind, "truncated": n_trunc, "not_scored": n_drop, "seconds": dt,
               "per_s": n * len(scorers) / max(dt, 1e-9), "tokens_per_s": tokens / max(dt, 1e-9),
               "world_size": world_size, "models": len(scorers), "dtype": dtype}
    if rank == 0:
        write_rows(output_rows(inp, statuses, cols), out)
        print(f"rm-ds score: {n} {unit} x {len(scorers)} model(s) in {dt:.2f}s on {world_size} rank(s): "
              f"{figures['per_s']:.1f} {unit}/s, {figures['tokens_per_s']:.0f} tokens/s; {n_trunc} truncated, "
              f"{n_drop} not scored; {dtype}; wrote {out}", flush=True)
    return figures


def launched() -> bool:
    """True under the deepspeed launcher, torchrun or mpirun with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class ScoreOptions:
    """``rm-ds score``'s command line (``rm_ds.cli``)."""

    model: list[str]
    input: str
    out: str
    step: str | None = None
    token_budget: int | None = None
    allow_pad_eq_eos: bool = False
    mpi: bool = False
    dtype: str = "fp32"


def main(opts: ScoreOptions) -> int:
    """The ``rm-ds score`` entry: one process, or every rank of a launcher."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kw = dict(step=opts.step, token_budget=opts.token_budget, allow_pad_eq_eos=opts.allow_pad_eq_eos, dtype=opts.dtype)
    if not (opts.mpi or launched()):
        run(opts.model, opts.input, opts.out, **kw)
        return 0
    info = dist.init(mpi_discovery=opts.mpi)
    dist.set_threads(info)
    run(opts.model, opts.input, opts.out, rank=info.rank, world_size=info.world_size, **kw)
    dist.barrier()
    dist.shutdown(0)  # only on success: an exception propagates with its traceback
