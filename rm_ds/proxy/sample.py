"""``rm-ds sample``: N responses per prompt from a causal LM, written as scored-responses JSONL.

    rm-ds sample --prompts builtin:wordnet/train --max-prompts 300 --out runs/proxy/samples.jsonl \
        --model builtin:smollm2 --num-responses 2 --temperature 1.0 --top-p 1.0 --max-new-tokens 48 --seed 0
    deepspeed --num_gpus 2 --master_addr 127.0.0.1 --module rm_ds.cli sample ...   (sharded over ranks)

Output, one row per prompt in input order, in the scored-responses format (``rm_ds.data.scored``;
rewards absent until ``rm-ds label``)::

    {"id": "wn-n-1", "prompt": "What does ...?", "responses": ["...", "..."], "finish": ["eos", "length"],
     "policy": "builtin:smollm2", "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 48, "n": 2},
     "seed": 8312...}

Reproducible: prompt ``id`` gets the seed ``prompt_seed(base_seed, id)``; response j of it is drawn
from its own ``torch.Generator`` seeded from that seed and j, one token at a time (temperature, then
top-p, then one inverse-CDF draw per row), and every batch is left-padded to the run's longest
prompt, so what a row samples never depends on the other rows (also under bf16 weights, the default).
Batches are fixed by input order (batch k = prompts k*B .. k*B+B-1) and batch k runs on rank
k % world_size, so every batch has the same composition (the same left padding) on 1 rank or 8.

Resumable: each rank appends every finished batch to ``OUT.parts/part-W-R.jsonl`` in one write
followed by fsync. A rerun reads all part files (any earlier world size), cuts a torn last line or a
partly written batch, and generates only the batches not yet complete; at the end rank 0 merges the
parts into OUT (written to a temporary file, then renamed), checking that every prompt is there once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rm_ds.data.jsonl import write_jsonl
from rm_ds.data.readers import read_records
from rm_ds.errors import ConfigError, DataError
from rm_ds.train import faults

log = logging.getLogger(__name__)

PARTS_SUFFIX = ".parts"
POLICY_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
META_FILE = "meta.json"


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    max_new_tokens: int = 64
    """Generation stops at eos or after this many tokens."""
    n: int = 2
    """Responses per prompt."""

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ConfigError(f"--temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p: must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens: must be >= 1, got {self.max_new_tokens}")
        if self.n < 1:
            raise ConfigError(f"--num-responses: must be >= 1, got {self.n}")


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str | list
    """A string, or a list of chat messages ending with a user turn."""


def prompt_seed(base_seed: int, prompt_id: str) -> int:
    """The seed of one prompt: a hash of the base seed and the prompt id (63 bits, stable across runs)."""
    digest = hashlib.sha256(f"{int(base_seed)}\0{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def response_seed(seed: int, j: int) -> int:
    """The generator seed of response j of a prompt whose seed is ``seed``."""
    return prompt_seed(seed, f"response-{j}")


# ---------------------------------------------------------------- prompts


def load_prompts(path: str, *, max_prompts: int | None = None) -> tuple[list[Prompt], dict[str, int]]:
    """Prompts from a JSONL/JSON/parquet file of rows with ``prompt`` (and ``id``), in file order.

    Pair files and scored-responses files work too (only ``id`` and ``prompt`` are read). A row whose
    prompt text repeats an earlier one is skipped and counted ("duplicate prompt"); a missing id
    becomes ``<file stem>:<line>``. Returns the prompts and the skip counts.
    """
    from rm_ds.builtin import rm_ds_home
    from rm_ds.data.dataset import resolve_data_path

    resolved = resolve_data_path(path, builtin_dir=rm_ds_home() / "data")
    p = Path(resolved)
    rows = read_records(p, name=path)
    out: list[Prompt] = []
    seen_text: set[str] = set()
    seen_id: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for line, where, row in rows:
        if max_prompts is not None and len(out) >= max_prompts:
            break
        prompt = row.get("prompt")
        if isinstance(prompt, str):
            if not prompt.strip():
                raise DataError(f"{where}: field 'prompt': empty or whitespace-only")
        elif isinstance(prompt, list) and prompt and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in prompt):
            prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
        else:
            raise DataError(f"{where}: field 'prompt': expected a string or a list of "
                              f"{{'role', 'content'}} messages, got {prompt!r:.80}")
        pid = row.get("id")
        pid = f"{p.stem}:{line}" if pid is None or pid == "" else str(pid)
        if pid in seen_id:
            raise DataError(f"{where}: field 'id': duplicate id {pid!r} (first at line {seen_id[pid]})")
        key = json.dumps(prompt, sort_keys=True)
        if key in seen_text:
            skipped["duplicate prompt"] = skipped.get("duplicate prompt", 0) + 1
            continue
        seen_text.add(key)
        seen_id[pid] = line
        out.append(Prompt(id=pid, prompt=prompt))
    if not out:
        raise DataError(f"{path}: no prompts")
    return out, skipped


# ---------------------------------------------------------------- generation


def encode_prompt(tokenizer, prompt: str | list, *, chat_template: bool) -> list[int]:
    """Token ids of the model's input: the chat template with the assistant turn opened, or the text."""
    if chat_template and tokenizer.chat_template:
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, str):
        raise DataError("chat-message prompts need a tokenizer with a chat template")
    return tokenizer(prompt)["input_ids"]


def _filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set logits outside each row's nucleus to -inf (the top token always stays)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop_sorted = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # mass before the token already >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def draw_tokens(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row by inverse CDF: the first token whose cumulative probability exceeds u * total.

    ``u`` holds one uniform in [0, 1) per row (from that row's generator), so a draw costs one random
    number instead of torch.multinomial's vocabulary-sized exponential draw (a fifth of the decode time
    of SmolLM2). A token of probability 0 is never drawn: its cumulative value equals its predecessor's.
    """
    cum = probs.double().cumsum(dim=-1)
    target = (u.double() * cum[:, -1])[:, None]
    return torch.searchsorted(cum, target, right=True)[:, 0].clamp(max=probs.shape[-1] - 1)


@torch.no_grad()
def generate_rows(model, input_ids: list[list[int]], generators: list[torch.Generator], *,
                  params: SamplingParams, pad_id: int, eos_ids: set[int],
                  width: int | None = None) -> list[tuple[list[int], str]]:
    """Sample one continuation per row, left-padded into one batch with a KV cache.

    Layout (pad P, two rows)::

        input   P P a b c        attention 0 0 1 1 1   positions 0 0 0 1 2
                d e f g h                  1 1 1 1 1             0 1 2 3 4

    Row i draws its tokens from ``generators[i]`` only. ``width`` (at least the longest row) fixes the
    padded width: with one width for every batch of a run, a row's logits do not depend on its batch
    mates (under bf16 weights, left padding to another width changed SmolLM2's logits by up to 0.5;
    the number of rows changed nothing). Returns (new token ids without the eos, "eos" or "length") per row.
    """
    rows = len(input_ids)
    width = max([width or 0] + [len(x) for x in input_ids])
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for i, x in enumerate(input_ids):
        ids[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[i, width - len(x):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    finish = ["length"] * rows
    past = None
    step_ids, step_pos = ids, positions
    for _ in range(params.max_new_tokens):
        res = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, cache=past, use_cache=True,
                    logits_to_keep=1)
        past = res.cache
        logits = res.logits[:, -1, :].float()
        if params.temperature == 0:
            nxt = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(_filter_top_p(logits / params.temperature, params.top_p), dim=-1)
            # a finished row still draws, so its generator's stream never depends on when others stop
            u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])
            nxt = draw_tokens(probs, u)
        for i in range(rows):
            if done[i]:
                continue
            t = int(nxt[i])
            if t in eos_ids:
                done[i], finish[i] = True, "eos"
            else:
                out[i].append(t)
        if all(done):
            break
        nxt = torch.where(torch.tensor(done), torch.full_like(nxt, pad_id), nxt)
        step_ids = nxt[:, None]
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)
    return list(zip(out, finish))


def sample_batch(model, tokenizer, prompts: list[Prompt], *, params: SamplingParams, base_seed: int,
                 policy: str, dtype: str, chat_template: bool, pad_id: int, eos_ids: set[int],
                 width: int | None = None) -> list[dict]:
    """The output rows of one batch of prompts (n generation rows each), left-padded to ``width``."""
    inputs, gens = [], []
    for pr in prompts:
        ids = encode_prompt(tokenizer, pr.prompt, chat_template=chat_template)
        seed = prompt_seed(base_seed, pr.id)
        for j in range(params.n):
            inputs.append(ids)
            gens.append(torch.Generator().manual_seed(response_seed(seed, j)))
    results = generate_rows(model, inputs, gens, params=params, pad_id=pad_id, eos_ids=eos_ids, width=width)
    rows = []
    for k, pr in enumerate(prompts):
        mine = results[k * params.n:(k + 1) * params.n]
        rows.append({"id": pr.id, "prompt": pr.prompt,
                     "responses": [tokenizer.decode(t, skip_special_tokens=True).strip() for t, _ in mine],
                     "finish": [f for _, f in mine], "policy": policy, "dtype": dtype, "sampling": asdict(params),
                     "seed": prompt_seed(base_seed, pr.id)})
    return rows


def load_policy(name_or_path: str, *, seed: int, dtype: str = "bf16"):
    """(model, tokenizer, pad id, eos ids) of a causal LM with ``dtype`` weights; builtin: names resolve offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from rm_ds.builtin import resolve_model

    path = resolve_model(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)  # weights a folder lacks (a classifier folder's lm_head) are then the same everywhere
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a classifier folder loaded as a causal LM prints a load report
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=POLICY_DTYPES[dtype]).eval()
    finally:
        hf_logging.set_verbosity(verbosity)
    eos = {t for t in (tokenizer.eos_token_id, tokenizer.sep_token_id) if t is not None}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    if not eos:
        raise ConfigError(f"--model: {name_or_path}: the tokenizer has no eos token: generation could not stop")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    return model, tokenizer, pad, eos


# ---------------------------------------------------------------- parts, resume, merge


def batches_of(prompts: list[Prompt], batch_size: int) -> list[list[Prompt]]:
    return [prompts[k:k + batch_size] for k in range(0, len(prompts), batch_size)]


def _part_rows(path: Path) -> tuple[list[dict], list[int]]:
    """Rows of a part file and the byte offset after each; a torn last line is left out."""
    rows, ends, pos = [], [], 0
    with open(path, "rb") as f:
        for line in f:
            pos += len(line)
            if not line.endswith(b"\n"):
                break  # killed while writing this line
            rows.append(json.loads(line))
            ends.append(pos)
    return rows, ends


def completed_batches(parts_dir: Path, batches: list[list[Prompt]]) -> set[int]:
    """Indices of batches whose rows all are in the part files; cuts partial batches off the files."""
    index = {pr.id: (k, i) for k, b in enumerate(batches) for i, pr in enumerate(b)}
    done: set[int] = set()
    for path in sorted(parts_dir.glob("part-*.jsonl")):
        rows, ends = _part_rows(path)
        keep, k_rows, cur = 0, [], None
        for r, end in zip(rows, ends):
            if r["id"] not in index:
                raise DataError(f"{path}: prompt id {r['id']!r} is not among the prompts of this run")
            k, i = index[r["id"]]
            if k != cur:
                cur, k_rows = k, []
            k_rows.append(i)
            if k_rows == list(range(len(batches[k]))):  # rows of a batch are written together, in order
                done.add(k)
                keep = end
        if keep != path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(keep)
                os.fsync(f.fileno())
    return done


def append_rows(path: Path, rows: list[dict]) -> None:
    """One write of whole lines, then fsync: a kill leaves at most a torn tail that resume cuts off."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def merge_parts(parts_dir: Path, prompts: list[Prompt], out: Path) -> int:
    """Write every prompt's row once, in prompt order, to ``out`` (temp file + rename)."""
    by_id: dict[str, dict] = {}
    for path in sorted(parts_dir.glob("part-*.jsonl")):
        for r in _part_rows(path)[0]:
            if r["id"] in by_id:
                raise DataError(f"{path}: prompt id {r['id']!r} written twice")
            by_id[r["id"]] = r
    missing = [pr.id for pr in prompts if pr.id not in by_id]
    if missing:
        raise DataError(f"{parts_dir}: {len(missing)} prompts have no rows (first {missing[:3]})")
    write_jsonl(out, (by_id[pr.id] for pr in prompts))
    return len(prompts)


def _check_meta(parts_dir: Path, meta: dict) -> None:
    path = parts_dir / META_FILE
    if path.exists():
        old = json.loads(path.read_text())
        if old != meta:
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise ConfigError(f"{parts_dir}: left by a run with other settings ({', '.join(diff)} differ); "
                              f"delete it or use the same settings to resume")
    else:
        tmp = path.with_name(META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(tmp, path)


def run_sample(*, prompts_path: str, out: str, model: str = "builtin:smollm2", params: SamplingParams,
               seed: int = 0, batch_size: int = 32, dtype: str = "bf16", max_prompts: int | None = None,
               chat_template: bool = True,
               rank: int = 0, world_size: int = 1, barrier: Callable[[], None] = lambda: None,
               on_batch: Callable[[int], None] | None = None) -> dict:
    """Sample every prompt's responses on this rank's batches, then (rank 0) merge into ``out``.

    ``barrier`` synchronises the ranks (rm_ds.cluster.dist.barrier under a launcher). Returns counts.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {batch_size}")
    if dtype not in POLICY_DTYPES:
        raise ConfigError(f"--dtype: expected one of {sorted(POLICY_DTYPES)}, got {dtype!r}")
    prompts, skipped = load_prompts(prompts_path, max_prompts=max_prompts)
    out_path = Path(out)
    parts_dir = out_path.with_name(out_path.name + PARTS_SUFFIX)
    batches = batches_of(prompts, batch_size)
    meta = {"policy": model, "dtype": dtype, "sampling": asdict(params), "seed": seed, "batch_size": batch_size,
            "chat_template": chat_template,
            "prompts_sha256": hashlib.sha256(json.dumps([[p.id, p.prompt] for p in prompts]).encode()).hexdigest()}
    if rank == 0:
        parts_dir.mkdir(parents=True, exist_ok=True)
        _check_meta(parts_dir, meta)
        done = completed_batches(parts_dir, batches)  # also cuts torn tails, before anyone appends
    barrier()
    if rank != 0:
        _check_meta(parts_dir, meta)
        done = {k for k in range(len(batches)) if k not in _todo_from_parts(parts_dir, batches)}
    mine = [k for k in range(len(batches)) if k % world_size == rank and k not in done]
    if rank == 0:
        log.info("sample: %d prompts (%s), %d batches of %d, %d already complete, %d ranks; %s", len(prompts),
                 f"skipped {skipped}" if skipped else "none skipped", len(batches), batch_size, len(done),
                 world_size, model)
    n_new = 0
    if mine:
        policy, tokenizer, pad_id, eos_ids = load_policy(model, seed=seed, dtype=dtype)
        # one padded width for the whole run: a prompt's output then never depends on its batch
        width = max(len(encode_prompt(tokenizer, pr.prompt, chat_template=chat_template)) for pr in prompts)
        part = parts_dir / f"part-{world_size:03d}-{rank:03d}.jsonl"
        t0 = time.perf_counter()
        for count, k in enumerate(mine, start=1):
            rows = sample_batch(policy, tokenizer, batches[k], params=params, base_seed=seed, policy=model,
                                dtype=dtype, chat_template=chat_template, pad_id=pad_id, eos_ids=eos_ids,
                                width=width)
            append_rows(part, rows)
            n_new += len(rows)
            if on_batch is not None:
                on_batch(k)
            faults.fault("sample_batch", count, barrier=False)
            if rank == 0 and (count % 5 == 0 or count == len(mine)):
                log.info("sample: rank 0 batch %d/%d (%.1f s)", count, len(mine), time.perf_counter() - t0)
    barrier()
    result = {"prompts": len(prompts), "skipped": skipped, "already_done_batches": len(done), "new_rows": n_new}
    if rank == 0:
        merge_parts(parts_dir, prompts, out_path)
        result["out"] = str(out_path)
    barrier()
    return result


def _todo_from_parts(parts_dir: Path, batches: list[list[Prompt]]) -> set[int]:
    """Batches not complete in the part files (read only: rank 0 has already cut torn tails)."""
    have = set()
    for path in sorted(parts_dir.glob("part-*.jsonl")):
        have.update(r["id"] for r in _part_rows(path)[0])
    return {k for k, b in enumerate(batches) if not all(pr.id in have for pr in b)}


@dataclass(frozen=True)
class SampleOptions:
    """``rm-ds sample``'s command line (``rm_ds.cli``)."""

    prompts: str
    out: str
    model: str = "builtin:smollm2"
    n: int = 2
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0
    batch_size: int = 32
    dtype: str = "bf16"
    max_prompts: int | None = None
    no_chat_template: bool = False
    mpi: bool = False


def main(args: SampleOptions) -> int:
    """The ``rm-ds sample`` entry."""
    from rm_ds.cluster import dist

    info = dist.init(mpi_discovery=args.mpi)
    logging.basicConfig(level=logging.INFO if info.is_main else logging.WARNING,
                        format=f"[rank{info.rank}] %(message)s")
    dist.set_threads(info)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                            n=args.n)
    result = run_sample(prompts_path=args.prompts, out=args.out, model=args.model, params=params, seed=args.seed,
                        batch_size=args.batch_size, dtype=args.dtype, max_prompts=args.max_prompts,
                        chat_template=not args.no_chat_template, rank=info.rank, world_size=info.world_size,
                        barrier=dist.barrier)
    if info.is_main:
        print(f"sample: wrote {result['prompts']} prompts x {params.n} responses to {result['out']} "
              f"({result['already_done_batches']} batches resumed from an earlier run; skipped {result['skipped']})",
              flush=True)
    dist.shutdown(0)
    return 0
