"""The data pipeline: a ``DataConfig`` -> tokenised train/eval datasets and the training sampler.

    data = prepare_data(cfg.data, tokenizer, cache_dir=cache_dir_for(cfg.data, home=rm_ds_home()),
                        builtin_dir=rm_ds_home() / "data")
    sampler = build_sampler(data.train, cfg.train, prefix_sharing=..., packing=..., world_size=2, rank=0)

Reading and validation live in ``rm_ds.data.pairs``, tokenisation in ``rm_ds.data.tokenize``; this module joins
them with the on-disk cache (keyed by source content, loading options, tokenizer and tokenisation
options). Every folder is an argument: nothing here reads the environment or the rm_ds home.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rm_ds.config import DataConfig, TrainConfig
from rm_ds.errors import ConfigError
from rm_ds.data.pairs import load_pairs
from rm_ds.data.validate import PairFields
from rm_ds.errors import DataError
from rm_ds.data.formats import format_options
from rm_ds.data.packing import pair_lengths, sampler_cost
from rm_ds.data.sampler import PairSampler, SamplerConfig
from rm_ds.data.tokenize import TokenizeOptions, cache_key, tokenize_pairs

ROW_COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids", "margin", "weight", "pref", "prefs"]
"""The columns a training row carries into collate."""


@dataclass
class PreparedData:
    train: object
    """Tokenised training pairs (None when only evaluating)."""
    eval: object | None
    """Tokenised eval pairs (None without data.eval_path)."""
    notes: list[str]
    """One line per split: format, rows loaded, skipped, filtered and tokenised."""
    reports: list[dict] = dataclasses.field(default_factory=list)
    """Per split: the LoadReport (format and why, counts, skips, filters, ties) and tokenisation counts."""


def cache_dir_for(data: DataConfig, *, home: Path) -> Path:
    """``data.cache_dir``, or ``<home>/cache/tokenized`` when it is unset."""
    return Path(data.cache_dir) if data.cache_dir else Path(home) / "cache" / "tokenized"


def resolve_data_path(path: str, *, builtin_dir: Path) -> str:
    """``builtin:wordnet/train|eval`` -> the generated WordNet pair files under ``builtin_dir``
    (built on first use); any other path is returned as given."""
    if not path.startswith("builtin:"):
        return path
    name = path[len("builtin:"):]
    if name not in ("wordnet/train", "wordnet/eval"):
        raise ConfigError(f"data path {path!r}: unknown builtin (known: builtin:wordnet/train, builtin:wordnet/eval)")
    from rm_ds.data.wordnet import build_wordnet_pairs

    out = Path(builtin_dir) / "wordnet"
    build_wordnet_pairs(out)  # idempotent: returns at once when the files match their manifest
    return str(out / f"{name.split('/')[1]}.jsonl")


def source_digest(path: str, **options) -> str:
    """sha256 of a local data file's bytes (or a hub name) plus the loading options."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    elif p.is_dir():
        for q in sorted(p.rglob("*")):
            if q.is_file():
                h.update(str(q.relative_to(p)).encode() + q.read_bytes())
    else:
        h.update(path.encode())
    return h.hexdigest()


def pair_fields(d: DataConfig) -> PairFields:
    """The input's field names, from ``data.prompt_field`` ... ``data.source_field``."""
    return PairFields(prompt=d.prompt_field, chosen=d.chosen_field, rejected=d.rejected_field, id=d.id_field,
                      margin=d.margin_field, weight=d.weight_field, source=d.source_field)


def load_split(data: DataConfig, tokenizer, path: str, *, split: str, max_pairs: int | None, cache_dir: Path,
               builtin_dir: Path, objectives: Sequence[str] = ()):
    """One split read, validated and tokenised (through the cache in ``cache_dir``): (dataset, note)."""
    tok, note, _ = load_split_with_report(data, tokenizer, path, split=split, max_pairs=max_pairs,
                                          cache_dir=cache_dir, builtin_dir=builtin_dir, objectives=objectives)
    return tok, note


def load_split_with_report(data: DataConfig, tokenizer, path: str, *, split: str, max_pairs: int | None,
                           cache_dir: Path, builtin_dir: Path, objectives: Sequence[str] = ()):
    """``load_split`` plus the split's report as a dict (LoadReport fields, tokenisation counts);
    ``objectives`` (model.objectives) adds the per-objective ``prefs`` column."""
    d = data
    fopts = format_options(d, objectives=objectives)
    source = resolve_data_path(path, builtin_dir=builtin_dir)
    fields = pair_fields(d)
    ds, report = load_pairs(source, split=split, fields=fields, skip_invalid=d.skip_invalid, max_pairs=max_pairs,
                            format=d.format, options=fopts)
    opts = TokenizeOptions(max_length=d.max_length, overlong=d.overlong, chat_template=d.chat_template,
                           response_separator=d.response_separator)
    key = cache_key(source_digest(source, split=split, skip_invalid=d.skip_invalid,
                                  content=report.fingerprint,  # every file a glob/dir resolves to; hub fingerprint
                                  max_pairs=max_pairs, fields=dataclasses.astuple(fields),
                                  format=(d.format, fopts)), tokenizer, opts)
    tok, treport = tokenize_pairs(ds, tokenizer, opts, num_proc=d.num_proc,
                                  cache_file=str(Path(cache_dir) / f"{key}.arrow"))
    note = f"{path}: {report.summary()}; tokenized {treport.summary()}"
    if len(tok) == 0:
        raise DataError(f"{path}: no pairs left after tokenization ({treport.summary()}); raise data.max_length "
                        f"or check the data")
    return tok, note, {"path": path, "split": split, **dataclasses.asdict(report), "tokenized": treport.counts,
                       "chat_render": treport.chat_render or None}  # how conversations became text, if any


def prepare_data(data: DataConfig, tokenizer, *, cache_dir: Path, builtin_dir: Path,
                 training: bool = True, objectives: Sequence[str] = ()) -> PreparedData:
    """The train split (when ``training``) and the eval split (when ``data.eval_path`` is set).

    On several ranks call it inside ``dist.main_rank_first`` so one rank per node fills the cache.
    """
    dirs = dict(cache_dir=cache_dir, builtin_dir=builtin_dir, objectives=objectives)
    train, notes, reports = None, [], []
    if training:
        train, n1, r1 = load_split_with_report(data, tokenizer, data.train_path, split=data.train_split,
                                               max_pairs=data.max_train_pairs, **dirs)
        notes.append(n1)
        reports.append(r1)
    ev = None
    if data.eval_path:
        ev, n2, r2 = load_split_with_report(data, tokenizer, data.eval_path, split=data.eval_split,
                                            max_pairs=data.max_eval_pairs, **dirs)
        notes.append(n2)
        reports.append(r2)
    return PreparedData(train=train, eval=ev, notes=notes, reports=reports)


def build_sampler(train_ds, t: TrainConfig, *, prefix_sharing: bool, packing: bool, world_size: int,
                  rank: int) -> PairSampler:
    """The training plan for this rank (every rank computes the same plan and takes its part)."""
    return PairSampler(pair_lengths(train_ds, prefix_sharing=prefix_sharing, packing=packing), SamplerConfig(
        global_batch_pairs=t.global_batch_pairs, mode=t.micro_batching,
        token_budget=t.token_budget if t.micro_batching == "token_budget" else None,
        pairs_per_micro=t.pairs_per_micro if t.micro_batching == "fixed" else None,
        length_grouping=t.length_grouping, drop_last=t.drop_last, cost=sampler_cost(packing=packing)),
        world_size=world_size, rank=rank, seed=t.seed)


def rows_at(ds, idx: list[int]) -> list[dict]:
    """The rows of ``idx`` as dicts (one batched read)."""
    if not idx:
        return []
    cols = ds[idx]
    return [{k: cols[k][j] for k in ROW_COLUMNS if k in cols} for j in range(len(idx))]


def dataset_hash(ds) -> str:
    """sha256 over the pairs' ids and token ids: names exactly which eval set a calibration came from."""
    h = hashlib.sha256()
    for col in ("pair_id", "prompt_ids", "chosen_ids", "rejected_ids"):
        h.update(json.dumps(list(ds[col])).encode())
    return h.hexdigest()
