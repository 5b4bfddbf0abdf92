"""The training recipe: pairs -> tokenize -> sampler/collate -> engine -> loss -> eval -> logging.

Run it through the console script under any launcher, e.g. 2 CPU ranks::

    deepspeed --num_gpus 2 --master_addr 127.0.0.1 --module rm_ds.cli train --config default

Reads top to bottom: set up, build data, build model and engine, loop over optimizer steps, evaluate,
shut down. All rank logic is in ``rm_ds.dist``; every rank runs the same code.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rm_ds import dist
from rm_ds.builtin import rm_ds_home
from rm_ds.collate import collate_pairs
from rm_ds.config import Config, build_ds_config, save_config
from rm_ds.data import load_pairs
from rm_ds.engine import build_engine, model_build_context, train_step
from rm_ds.evaluate import compute_metrics, gather_scores
from rm_ds.metrics import fit_temperature
from rm_ds.model import build_reward_model, load_model_config, load_tokenizer, pools_last_token, resolve_pad_token
from rm_ds.sampler import PairSampler, SamplerConfig
from rm_ds.tokenize import TokenizeOptions, eos_id, tokenize_pairs
from rm_ds.tracking import RunLogger, peak_rss_mib

log = logging.getLogger("rm_ds")

ROW_COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids", "margin", "weight"]


@dataclass
class PreparedData:
    train: object
    eval: object | None
    notes: list[str]


def resolve_data_path(path: str) -> str:
    """``builtin:wordnet/train|eval`` -> the generated WordNet pair files (built on first use)."""
    if not path.startswith("builtin:"):
        return path
    name = path[len("builtin:"):]
    if name not in ("wordnet/train", "wordnet/eval"):
        raise ValueError(f"data path {path!r}: unknown builtin (known: builtin:wordnet/train, builtin:wordnet/eval)")
    from rm_ds.wordnet import build_wordnet_pairs

    out = rm_ds_home() / "data" / "wordnet"
    build_wordnet_pairs(out)  # idempotent: returns at once when the files match their manifest
    return str(out / f"{name.split('/')[1]}.jsonl")


def load_split(cfg: Config, tokenizer, path: str, *, split: str, max_pairs: int | None):
    d = cfg.data
    ds, report = load_pairs(resolve_data_path(path), split=split, prompt_field=d.prompt_field,
                            chosen_field=d.chosen_field, rejected_field=d.rejected_field, id_field=d.id_field,
                            margin_field=d.margin_field, weight_field=d.weight_field, source_field=d.source_field,
                            skip_invalid=d.skip_invalid, max_pairs=max_pairs)
    opts = TokenizeOptions(max_length=d.max_length, overlong=d.overlong, chat_template=d.chat_template,
                           response_separator=d.response_separator)
    tok, treport = tokenize_pairs(ds, tokenizer, opts, num_proc=d.num_proc)
    skipped = sum(report.skipped.values())
    note = f"{path}: {report.n_loaded} valid of {report.n_rows} rows" + (
        f" ({skipped} skipped: {dict(report.skipped)})" if skipped else "") + f"; tokenized {treport.summary()}"
    if len(tok) == 0:
        raise ValueError(f"{path}: no pairs left after tokenization ({treport.summary()})")
    return tok, note


def prepare_data(cfg: Config, tokenizer, info: dist.DistInfo) -> PreparedData:
    with dist.main_rank_first(info):  # rank 0 fills the datasets cache; the others read it
        train, n1 = load_split(cfg, tokenizer, cfg.data.train_path, split=cfg.data.train_split,
                               max_pairs=cfg.data.max_train_pairs)
        ev, notes = None, [n1]
        if cfg.data.eval_path:
            ev, n2 = load_split(cfg, tokenizer, cfg.data.eval_path, split=cfg.data.eval_split,
                                max_pairs=cfg.data.max_eval_pairs)
            notes.append(n2)
    return PreparedData(train=train, eval=ev, notes=notes)


def rows_at(ds, idx: list[int]) -> list[dict]:
    """The rows of ``idx`` as dicts (one batched read)."""
    if not idx:
        return []
    cols = ds[idx]
    return [{k: cols[k][j] for k in ROW_COLUMNS if k in cols} for j in range(len(idx))]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(info: dist.DistInfo) -> None:
    """One rank per core unless OMP_NUM_THREADS says otherwise (oversubscription is 7x slower)."""
    if "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))


def evaluate_and_log(tr: "Trainer", step: int) -> dict[str, float]:
    """Score every eval pair once over all ranks, fit a temperature, log everything on rank 0."""
    scores = gather_scores(tr.engine, tr.data.eval, tr.cfg, rank=tr.info.rank, world_size=tr.info.world_size,
                           pad_id=tr.pad_id, eos_id=tr.eos)
    temperature = fit_temperature(scores.chosen - scores.rejected, beta=tr.cfg.loss.beta)
    metrics = compute_metrics(scores, tr.data.eval, tr.cfg, temperature=temperature)
    metrics["temperature"] = temperature
    tr.logger.log("eval", step, metrics)
    return metrics


@dataclass
class Trainer:
    """Everything a run holds after set-up; ``train_loop`` drives it."""

    cfg: Config
    info: dist.DistInfo
    data: PreparedData
    sampler: PairSampler
    engine: object
    logger: RunLogger
    pad_id: int
    eos: int
    total_steps: int
    step: int = 0


def setup(cfg: Config, info: dist.DistInfo) -> Trainer:
    """Tokenizer, data, sampler, model and engine, in that order."""
    set_threads(info)
    seed_everything(cfg.train.seed)
    run_dir = Path(cfg.logging.run_dir)
    if info.is_main:
        save_config(cfg, run_dir / "config.yaml")

    tokenizer = load_tokenizer(cfg.model.name_or_path)
    probe = load_model_config(cfg.model, pad_token_id=0)
    pad_id = resolve_pad_token(tokenizer, cfg.model, last_token_pooling=pools_last_token(probe))
    data = prepare_data(cfg, tokenizer, info)
    for n in data.notes:
        log.info(n)

    # every rank computes the same plan and takes its part
    t = cfg.train
    sampler = PairSampler(data.train["pair_len"], SamplerConfig(
        global_batch_pairs=t.global_batch_pairs, mode=t.micro_batching,
        token_budget=t.token_budget if t.micro_batching == "token_budget" else None,
        pairs_per_micro=t.pairs_per_micro if t.micro_batching == "fixed" else None,
        length_grouping=t.length_grouping, drop_last=t.drop_last), world_size=info.world_size, rank=info.rank,
        seed=t.seed)
    steps_per_epoch = sampler.steps_per_epoch()
    total_steps = min(t.max_steps or math.inf, steps_per_epoch * t.epochs)
    max_micro = max(len(step[0]) for step in sampler.plan_epoch(0))

    ds_config = build_ds_config(cfg, world_size=info.world_size, max_micro_steps=max_micro)
    with model_build_context(ds_config):
        model = build_reward_model(cfg.model, pad_token_id=pad_id)
    engine = build_engine(model, cfg, ds_config, total_steps=total_steps)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    log.info("model %s: %.1fM parameters, ZeRO stage %d, %s, world size %d; %d steps (%d per epoch), "
             "%d pairs per step", cfg.model.name_or_path, n_params / 1e6,
             ds_config["zero_optimization"]["stage"], cfg.model.dtype, info.world_size, total_steps,
             steps_per_epoch, t.global_batch_pairs)
    logger = RunLogger(run_dir, enabled=info.is_main, tensorboard=cfg.logging.tensorboard)
    return Trainer(cfg=cfg, info=info, data=data, sampler=sampler, engine=engine, logger=logger,
                   pad_id=pad_id, eos=eos_id(tokenizer), total_steps=int(total_steps))


def train_loop(tr: Trainer, *, on_step=None) -> dict[str, float]:
    """Optimizer steps until ``total_steps``; evaluates on schedule; returns throughput totals."""
    cfg, info = tr.cfg, tr.info
    progress = None
    if info.is_main and cfg.logging.progress and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=tr.total_steps, initial=tr.step, desc="train", unit="step", dynamic_ncols=True)
    report_every = max(1, tr.total_steps // 20)  # without a terminal: a progress line every 5%
    totals = {"pairs": 0, "real": 0, "computed": 0, "time": 0.0}
    while tr.step < tr.total_steps:
        epoch = tr.sampler.state_dict()["epoch"]
        for micro_idx in tr.sampler:
            t0 = time.perf_counter()
            batches = [collate_pairs(rows_at(tr.data.train, mb), pad_id=tr.pad_id, eos_id=tr.eos) for mb in micro_idx]
            stats = train_step(tr.engine, batches, cfg, world_size=info.world_size)
            dt = time.perf_counter() - t0
            tr.step += 1
            totals["pairs"] += stats.n_pairs
            totals["real"] += stats.real_tokens
            totals["computed"] += stats.computed_tokens
            totals["time"] += dt
            if on_step is not None:
                on_step(tr.step, stats)
            if tr.step % cfg.logging.log_every == 0 or tr.step == tr.total_steps:
                peak = dist.all_reduce_max(peak_rss_mib())
                tr.logger.log("train", tr.step, {
                    "loss": stats.loss, "accuracy": stats.accuracy, "margin": stats.margin, "lr": stats.lr,
                    "grad_norm": stats.grad_norm, "pairs_per_s": stats.n_pairs / dt,
                    "tokens_per_s": stats.real_tokens / dt,
                    "useful_token_ratio": stats.real_tokens / max(1, stats.computed_tokens),
                    "micro_steps": stats.micro_steps, "peak_mem_mib": peak, "epoch": epoch})
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{stats.loss:.4f}", acc=f"{stats.accuracy:.3f}")
            elif cfg.logging.progress and (tr.step % report_every == 0 or tr.step == tr.total_steps):
                log.info("step %d/%d  loss %.4f  accuracy %.3f  lr %.2e  %.1f pairs/s", tr.step, tr.total_steps,
                         stats.loss, stats.accuracy, stats.lr, stats.n_pairs / dt)
            if tr.data.eval is not None and cfg.eval.every_steps and tr.step % cfg.eval.every_steps == 0 \
                    and tr.step < tr.total_steps:
                m = evaluate_and_log(tr, tr.step)
                log.info("step %d eval: accuracy %.4f auc %.4f loss %.4f", tr.step, m["accuracy"], m["auc"], m["loss"])
            if tr.step >= tr.total_steps:
                break
        else:  # epoch finished
            tr.sampler.set_epoch(epoch + 1)
    if progress is not None:
        progress.close()
    return {"steps": tr.step, "pairs": totals["pairs"], "train_time_s": totals["time"],
            "pairs_per_s": totals["pairs"] / max(totals["time"], 1e-9),
            "tokens_per_s": totals["real"] / max(totals["time"], 1e-9),
            "useful_token_ratio": totals["real"] / max(1, totals["computed"]),
            "peak_mem_mib": dist.all_reduce_max(peak_rss_mib())}


def run(cfg: Config) -> dict[str, float]:
    info = dist.init()
    logging.basicConfig(level=logging.INFO if info.is_main else logging.WARNING,
                        format=f"[rank{info.rank}] %(message)s")
    tr = setup(cfg, info)
    summary = train_loop(tr)
    eval_metrics: dict[str, float] = {}
    if tr.data.eval is not None:
        eval_metrics = evaluate_and_log(tr, tr.step)
    if info.is_main:
        print(format_summary(summary, eval_metrics), flush=True)
        tr.logger.write_json("summary.json", {"train": summary, "eval": eval_metrics})
    tr.logger.close()
    dist.barrier()
    return {**summary, **{f"eval_{k}": v for k, v in eval_metrics.items()}}


def format_summary(summary: dict, metrics: dict) -> str:
    lines = ["", "== rm_ds training finished ==",
             f"steps {summary['steps']}  pairs {summary['pairs']}  time {summary['train_time_s']:.1f}s  "
             f"{summary['pairs_per_s']:.1f} pairs/s  {summary['tokens_per_s']:.0f} tokens/s  "
             f"useful-token ratio {summary['useful_token_ratio']:.3f}  peak mem {summary['peak_mem_mib']:.0f} MiB"]
    if metrics:
        keys = ["n_pairs", "accuracy", "auc", "loss", "margin_mean", "ece", "ece_calibrated", "temperature",
                "brier", "nll"]
        lines.append("eval: " + "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics))
    return "\n".join(lines)


def main(cfg: Config) -> None:
    code = 0
    try:
        run(cfg)
    except BaseException:
        code = 1
        raise
    finally:
        if code == 0:
            dist.shutdown(0)
