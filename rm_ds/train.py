"""The training recipe: pairs -> tokenize -> sampler/collate -> engine -> loss -> eval -> logging.

Run it through the console script under any launcher, e.g. 2 CPU ranks::

    deepspeed --num_gpus 2 --master_addr 127.0.0.1 --module rm_ds.cli train --config default

Reads top to bottom: set up, build data, build model and engine, loop over optimizer steps, evaluate,
shut down. All rank logic is in ``rm_ds.dist``; every rank runs the same code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rm_ds import checkpoint, dist, faults
from rm_ds.builtin import rm_ds_home
from rm_ds.collate import make_collate
from rm_ds.config import Config, ConfigError, build_ds_config, check_train_plan, save_config
from rm_ds.data import DataError, load_pairs
from rm_ds.engine import build_engine, model_build_context, train_step
from rm_ds.evaluate import compute_metrics, gather_scores
from rm_ds.metrics import fit_temperature
from rm_ds.model import (build_reward_model, head_name, load_model_config, load_tokenizer, param_counts,
                          pools_last_token, require_last_token_pooling, resolve_pad_token)
from rm_ds.packing import pair_lengths, sampler_cost
from rm_ds.sampler import PairSampler, SamplerConfig
from rm_ds.selection import EarlyStopping
from rm_ds.tokenize import TokenizeOptions, cache_key, eos_id, tokenize_pairs
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
        raise ConfigError(f"data path {path!r}: unknown builtin (known: builtin:wordnet/train, builtin:wordnet/eval)")
    from rm_ds.wordnet import build_wordnet_pairs

    out = rm_ds_home() / "data" / "wordnet"
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


def load_split(cfg: Config, tokenizer, path: str, *, split: str, max_pairs: int | None):
    d = cfg.data
    ds, report = load_pairs(resolve_data_path(path), split=split, prompt_field=d.prompt_field,
                            chosen_field=d.chosen_field, rejected_field=d.rejected_field, id_field=d.id_field,
                            margin_field=d.margin_field, weight_field=d.weight_field, source_field=d.source_field,
                            skip_invalid=d.skip_invalid, max_pairs=max_pairs)
    opts = TokenizeOptions(max_length=d.max_length, overlong=d.overlong, chat_template=d.chat_template,
                           response_separator=d.response_separator)
    key = cache_key(source_digest(resolve_data_path(path), split=split, skip_invalid=d.skip_invalid,
                                  content=report.fingerprint,  # every file a glob/dir resolves to; hub fingerprint
                                  max_pairs=max_pairs, fields=(d.prompt_field, d.chosen_field, d.rejected_field,
                                                               d.id_field, d.margin_field, d.weight_field,
                                                               d.source_field)), tokenizer, opts)
    tok, treport = tokenize_pairs(ds, tokenizer, opts, num_proc=d.num_proc,
                                  cache_file=str(rm_ds_home() / "cache" / "tokenized" / f"{key}.arrow"))
    skipped = sum(report.skipped.values())
    note = f"{path}: {report.n_loaded} valid of {report.n_rows} rows" + (
        f" ({skipped} skipped: {dict(report.skipped)})" if skipped else "") + f"; tokenized {treport.summary()}"
    if len(tok) == 0:
        raise DataError(f"{path}: no pairs left after tokenization ({treport.summary()}); raise data.max_length "
                        f"or check the data")
    return tok, note


def prepare_data(cfg: Config, tokenizer, info: dist.DistInfo, *, training: bool = True) -> PreparedData:
    with dist.main_rank_first(info):  # rank 0 fills the datasets cache; the others read it
        train, notes = None, []
        if training:
            train, n1 = load_split(cfg, tokenizer, cfg.data.train_path, split=cfg.data.train_split,
                                   max_pairs=cfg.data.max_train_pairs)
            notes.append(n1)
        ev = None
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


def dataset_hash(ds) -> str:
    """sha256 over the pairs' ids and token ids: names exactly which eval set a calibration came from."""
    h = hashlib.sha256()
    for col in ("pair_id", "prompt_ids", "chosen_ids", "rejected_ids"):
        h.update(json.dumps(list(ds[col])).encode())
    return h.hexdigest()


def evaluate_and_log(tr: "Trainer", step: int) -> dict[str, float]:
    """Score every eval pair once over all ranks, fit a temperature, log and save on rank 0."""
    cfg, ds = tr.cfg, tr.data.eval
    scores = gather_scores(tr.engine, ds, cfg, rank=tr.info.rank, world_size=tr.info.world_size,
                           collate=tr.collate)
    margins = scores.chosen - scores.rejected
    temperature = fit_temperature(margins, beta=cfg.loss.beta)
    metrics = compute_metrics(scores, ds, cfg, temperature=temperature)
    metrics["temperature"] = temperature
    improved = tr.stopper.update(step, metrics)
    metrics["best_step"] = float(tr.stopper.best_step)
    tr.logger.log("eval", step, metrics)
    calibration = {"temperature": temperature, "reward_mean": metrics["reward_mean"],
                   "reward_std": metrics["reward_std"], "beta": cfg.loss.beta, "ece_before": metrics["ece"],
                   "ece_after": metrics.get("ece_calibrated"), "eval_set_sha256": tr.eval_hash,
                   "eval_pairs": int(metrics["n_pairs"]), "eval_path": cfg.data.eval_path, "step": step}
    if tr.info.is_main and cfg.eval.save_scores:
        save_eval_artifacts(tr.logger, step, scores, ds, metrics, calibration, beta=cfg.loss.beta,
                            n_bins=cfg.eval.ece_bins)
    tr.last_eval = (step, metrics)
    if improved:
        tr.logger.write_json("best.json", {"step": step, "metric": cfg.eval.metric, "value": metrics[cfg.eval.metric],
                                           "metrics": metrics, "calibration": calibration})
    return metrics


def save_eval_artifacts(logger: RunLogger, step: int, scores, ds, metrics: dict, calibration: dict, *,
                        beta: float, n_bins: int) -> None:
    """Per-eval files under ``run_dir/eval/step_NNNNNN/`` and the same plots as TensorBoard images."""
    from rm_ds.metrics import reliability_bins
    from rm_ds.plots import reliability_diagram_png, reward_histogram_png

    sub = f"eval/step_{step:06d}"
    ids = list(ds["pair_id"])
    sources = list(ds["source"]) if "source" in ds.column_names else [""] * len(ids)
    logger.write_json(f"{sub}/reward_distributions.json", {
        "step": step, "pair_id": [ids[i] for i in scores.index], "source": [sources[i] for i in scores.index],
        "chosen": scores.chosen.tolist(), "rejected": scores.rejected.tolist()})
    logger.write_json(f"{sub}/calibration.json", calibration)
    logger.write_json(f"{sub}/metrics.json", metrics)
    margins = scores.chosen - scores.rejected
    both_p = 1.0 / (1.0 + np.exp(-beta * np.concatenate([margins, -margins])))
    labels = np.concatenate([np.ones_like(margins), np.zeros_like(margins)])
    t = calibration["temperature"]
    both_pt = 1.0 / (1.0 + np.exp(-beta * np.concatenate([margins, -margins]) / t))
    logger.image("eval/reward_histogram", reward_histogram_png(scores.chosen, scores.rejected,
                                                               title=f"rewards at step {step}"),
                 step, filename=f"{sub}/reward_histogram.png")
    logger.image("eval/reliability", reliability_diagram_png(
        reliability_bins(both_p, labels, n_bins=n_bins), reliability_bins(both_pt, labels, n_bins=n_bins),
        title=f"reliability at step {step} (T={t:.3g})"), step, filename=f"{sub}/reliability.png")
    logger.histogram("eval/chosen_reward", scores.chosen, step)
    logger.histogram("eval/rejected_reward", scores.rejected, step)


@dataclass
class Trainer:
    """Everything a run holds after set-up; ``train_loop`` drives it."""

    cfg: Config
    info: dist.DistInfo
    data: PreparedData
    sampler: PairSampler
    engine: object
    logger: RunLogger
    collate: Callable
    """rows -> batch for the configured layout (padded, prefix-shared, packed)."""
    pad_id: int
    eos: int
    total_steps: int
    stopper: EarlyStopping
    eval_hash: str | None = None
    step: int = 0
    last_eval: tuple[int, dict] | None = None
    """(step, metrics) of the latest evaluation."""
    trainable_params: int = 0
    total_params: int = 0
    last_save: int = -1
    """Step of the newest checkpoint written by this process."""
    stopped_early: bool = False
    """Early stopping ended this run (persisted in its checkpoints: a relaunch does not train on)."""


def setup(cfg: Config, info: dist.DistInfo, *, training: bool = True) -> Trainer:
    """Tokenizer, data, sampler, model and engine, in that order (``training=False``: eval data only)."""
    set_threads(info)
    seed_everything(cfg.train.seed)
    run_dir = Path(cfg.logging.run_dir)
    if info.is_main:
        save_config(cfg, run_dir / "config.yaml")

    tokenizer = load_tokenizer(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    probe = load_model_config(cfg.model, pad_token_id=0)
    pad_id = resolve_pad_token(tokenizer, cfg.model, last_token_pooling=pools_last_token(probe))
    data = prepare_data(cfg, tokenizer, info, training=training)
    for n in data.notes:
        log.info(n)

    # every rank computes the same plan and takes its part
    t = cfg.train
    if training:
        check_train_plan(cfg, n_train_pairs=len(data.train))
    layout = dict(prefix_sharing=cfg.data.prefix_sharing, packing=cfg.data.packing)
    sampler = None if not training else PairSampler(pair_lengths(data.train, **layout), SamplerConfig(
        global_batch_pairs=t.global_batch_pairs, mode=t.micro_batching,
        token_budget=t.token_budget if t.micro_batching == "token_budget" else None,
        pairs_per_micro=t.pairs_per_micro if t.micro_batching == "fixed" else None,
        length_grouping=t.length_grouping, drop_last=t.drop_last, cost=sampler_cost(packing=cfg.data.packing)),
        world_size=info.world_size, rank=info.rank, seed=t.seed)
    steps_per_epoch = sampler.steps_per_epoch() if training else 0
    total_steps = min(t.max_steps or math.inf, steps_per_epoch * t.epochs) if training else 0
    max_micro = max(len(step[0]) for step in sampler.plan_epoch(0)) if training else 1

    ds_config = build_ds_config(cfg, world_size=info.world_size, max_micro_steps=max_micro)
    with model_build_context(ds_config):
        model = build_reward_model(cfg.model, pad_token_id=pad_id, lora=cfg.lora)
    head = head_name(model.get_base_model() if cfg.lora.enabled else model)
    engine = build_engine(model, cfg, ds_config, total_steps=max(1, total_steps), head=head)
    trainable, total = param_counts(model)
    log.info("model %s%s: %.2fM of %.1fM parameters trainable, ZeRO stage %d, %s, world size %d; "
             "%d steps (%d per epoch), %d pairs per step", cfg.model.name_or_path,
             f" + LoRA r={cfg.lora.r}" if cfg.lora.enabled else "", trainable / 1e6, total / 1e6,
             ds_config["zero_optimization"]["stage"], cfg.model.dtype, info.world_size, total_steps,
             steps_per_epoch, t.global_batch_pairs)
    logger = RunLogger(run_dir, enabled=info.is_main, tensorboard=cfg.logging.tensorboard)
    stopper = EarlyStopping(metric=cfg.eval.metric, mode=cfg.eval.mode, patience=cfg.eval.patience,
                            min_delta=cfg.eval.min_delta)
    if cfg.data.prefix_sharing or cfg.data.packing:
        require_last_token_pooling(model.get_base_model() if cfg.lora.enabled else model)
    tr = Trainer(cfg=cfg, info=info, data=data, sampler=sampler, engine=engine, logger=logger,
                 collate=make_collate(**layout, pad_id=pad_id, eos_id=eos_id(tokenizer)),
                 pad_id=pad_id, eos=eos_id(tokenizer), total_steps=int(total_steps), stopper=stopper,
                 eval_hash=dataset_hash(data.eval) if data.eval is not None else None,
                 trainable_params=trainable, total_params=total)
    found = checkpoint.find_resume(cfg) if training else None
    if found is not None:
        checkpoint.restore(tr, *found)
    return tr


def step_scalars(tr: Trainer, stats, dt: float, epoch: int) -> dict[str, float]:
    """What TensorBoard and metrics.jsonl get for one optimizer step (peak memory of every rank)."""
    peaks = dist.gather_rows(torch.tensor([[peak_rss_mib()]]))[:, 0].tolist()
    return {"loss": stats.loss, "accuracy": stats.accuracy, "margin": stats.margin, "lr": stats.lr,
            "grad_norm": stats.grad_norm, "n_pairs": stats.n_pairs, "pairs_per_s": stats.n_pairs / dt,
            "tokens_per_s": stats.real_tokens / dt,
            "useful_token_ratio": stats.real_tokens / max(1, stats.computed_tokens),
            "prompt_reuse_share": 1.0 - stats.real_tokens / max(1, stats.unshared_tokens),
            "micro_steps": stats.micro_steps, "epoch": epoch, "peak_mem_mib": max(peaks),
            **{f"peak_mem_mib/rank{r}": v for r, v in enumerate(peaks)},
            "trainable_params": tr.trainable_params, "total_params": tr.total_params}


def evaluate_and_checkpoint_on_schedule(tr: Trainer) -> None:
    """Mid-run eval (``eval.every_steps``; may stop early) and checkpoints (periodic, and every new best
    step so that it can be exported). The final step's eval and checkpoint happen in ``run``."""
    cfg, t = tr.cfg, tr.cfg.train
    if tr.data.eval is not None and cfg.eval.every_steps and tr.step % cfg.eval.every_steps == 0 \
            and tr.step < tr.total_steps:
        m = evaluate_and_log(tr, tr.step)
        log.info("step %d eval: accuracy %.4f auc %.4f loss %.4f (best %s %.4f at step %d)", tr.step,
                 m["accuracy"], m["auc"], m["loss"], cfg.eval.metric, tr.stopper.best_value, tr.stopper.best_step)
        if tr.stopper.should_stop:
            log.info("early stopping at step %d: eval %s has not improved for %d evals", tr.step,
                     cfg.eval.metric, tr.stopper.bad_evals)
            tr.total_steps = tr.step
            tr.stopped_early = True
    new_best = tr.last_eval is not None and tr.last_eval[0] == tr.step == tr.stopper.best_step
    periodic = t.save_every_steps and tr.step % t.save_every_steps == 0
    if (periodic or (new_best and t.export)) and tr.step < tr.total_steps:
        checkpoint.save(tr, best_step=tr.stopper.best_step)
        tr.last_save = tr.step


def train_loop(tr: Trainer, *, on_step=None) -> dict[str, float]:
    """Optimizer steps until ``total_steps``; evaluates on schedule; returns throughput totals."""
    cfg, info = tr.cfg, tr.info
    progress = None
    if info.is_main and cfg.logging.progress and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=tr.total_steps, initial=tr.step, desc="train", unit="step", dynamic_ncols=True)
    report_every = max(1, tr.total_steps // 20)  # without a terminal: a progress line every 5%
    totals = {"pairs": 0, "real": 0, "computed": 0, "unshared": 0, "time": 0.0}
    while tr.step < tr.total_steps:
        epoch = tr.sampler.state_dict()["epoch"]
        for micro_idx in tr.sampler:
            t0 = time.perf_counter()
            batches = [tr.collate(rows_at(tr.data.train, mb)) for mb in micro_idx]
            stats = train_step(tr.engine, batches, cfg, world_size=info.world_size)
            dt = time.perf_counter() - t0
            tr.step += 1
            if not faults.step_is_finite(stats.loss, stats.grad_norm):  # the same verdict on every rank
                ids = tr.data.train["pair_id"]
                found = checkpoint.find_resume(dataclasses.replace(cfg, resume="auto"))
                raise faults.diagnose(step=tr.step, loss=stats.loss, grad_norm=stats.grad_norm, rank=info.rank,
                                      local_micro=stats.nonfinite_micro,
                                      micro_pair_ids=[[ids[int(i)] for i in mb] for mb in micro_idx],
                                      last_good=None if found is None else found[0] / found[1])
            totals["pairs"] += stats.n_pairs
            totals["real"] += stats.real_tokens
            totals["computed"] += stats.computed_tokens
            totals["unshared"] += stats.unshared_tokens
            totals["time"] += dt
            if on_step is not None:
                on_step(tr.step, stats)
            if tr.step % cfg.logging.log_every == 0 or tr.step == tr.total_steps:
                tr.logger.log("train", tr.step, step_scalars(tr, stats, dt, epoch))
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{stats.loss:.4f}", acc=f"{stats.accuracy:.3f}")
            elif cfg.logging.progress and (tr.step % report_every == 0 or tr.step == tr.total_steps):
                log.info("step %d/%d  loss %.4f  accuracy %.3f  lr %.2e  %.1f pairs/s", tr.step, tr.total_steps,
                         stats.loss, stats.accuracy, stats.lr, stats.n_pairs / dt)
            evaluate_and_checkpoint_on_schedule(tr)
            checkpoint.fault("after_step", tr.step)
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
            "prompt_reuse_share": 1.0 - totals["real"] / max(1, totals["unshared"]),
            "peak_mem_mib": dist.all_reduce_max(peak_rss_mib()), "trainable_params": tr.trainable_params,
            "total_params": tr.total_params}


def run(cfg: Config) -> dict[str, float]:
    """Train, evaluate at the end (unless the last step was just evaluated), print the summary."""
    info = dist.init(timeout_s=cfg.dist.timeout_s, wait_timeout_s=cfg.dist.wait_timeout_s)
    logging.basicConfig(level=logging.INFO if info.is_main else logging.WARNING,
                        format=f"[rank{info.rank}] %(message)s")
    tr = setup(cfg, info)
    if tr.stopped_early:  # a relaunch of a run that early stopping ended: nothing left to do
        if info.is_main:
            print(f"rm-ds: {cfg.logging.run_dir} stopped early at step {tr.step} (eval {cfg.eval.metric} did not "
                  f"improve for {tr.stopper.bad_evals} evals; best step {tr.stopper.best_step}, "
                  f"{tr.stopper.best_value}); not training on. Start a new run directory to train further.",
                  flush=True)
        tr.logger.close()
        dist.barrier()
        return {"steps": tr.step, "stopped_early": 1.0}
    summary = train_loop(tr)
    eval_metrics: dict[str, float] = {}
    if tr.data.eval is not None:
        eval_metrics = tr.last_eval[1] if tr.last_eval and tr.last_eval[0] == tr.step else evaluate_and_log(tr, tr.step)
    if tr.last_save != tr.step:
        checkpoint.save(tr, best_step=tr.stopper.best_step)
    if info.is_main and cfg.train.export:
        from rm_ds.export import export_run

        export_run(cfg.logging.run_dir, step="final")
        if tr.stopper.best_step is not None:
            export_run(cfg.logging.run_dir, step="best")
    dist.wait_for_all()  # rank 0 exported alone: a long wait, not dist.timeout_s
    if info.is_main:
        print(format_summary(summary, eval_metrics), flush=True)
        if eval_metrics:
            print(f"best step {tr.stopper.best_step} by eval {cfg.eval.metric} = {tr.stopper.best_value:.4g}",
                  flush=True)
        tr.logger.write_json("summary.json", {"train": summary, "eval": eval_metrics,
                                              "best": {"step": tr.stopper.best_step, "metric": cfg.eval.metric,
                                                       "value": tr.stopper.best_value}})
    tr.logger.close()
    dist.barrier()
    return {**summary, **{f"eval_{k}": v for k, v in eval_metrics.items()}}


def run_eval(cfg: Config) -> dict[str, float]:
    """``rm-ds eval``: score ``data.eval_path`` with ``model.name_or_path`` on any number of ranks."""
    info = dist.init(timeout_s=cfg.dist.timeout_s, wait_timeout_s=cfg.dist.wait_timeout_s)
    logging.basicConfig(level=logging.INFO if info.is_main else logging.WARNING,
                        format=f"[rank{info.rank}] %(message)s")
    if not cfg.data.eval_path:
        raise ConfigError("data.eval_path: rm-ds eval needs an eval dataset")
    tr = setup(cfg, info, training=False)
    metrics = evaluate_and_log(tr, 0)
    if info.is_main:
        print(format_metrics_table(metrics), flush=True)
        tr.logger.write_json("eval_results.json", {"model": cfg.model.name_or_path, "data": cfg.data.eval_path,
                                                    "world_size": info.world_size, "metrics": metrics})
    tr.logger.close()
    dist.barrier()
    return metrics


def format_metrics_table(metrics: dict[str, float]) -> str:
    width = max(len(k) for k in metrics)
    return "\n".join(["== rm_ds eval =="] + [f"{k:<{width}}  {v:.6g}" for k, v in metrics.items()])


def format_summary(summary: dict, metrics: dict) -> str:
    lines = ["", "== rm_ds training finished ==",
             f"steps {summary['steps']}  pairs {summary['pairs']}  time {summary['train_time_s']:.1f}s  "
             f"{summary['pairs_per_s']:.1f} pairs/s  {summary['tokens_per_s']:.0f} tokens/s  "
             f"useful-token ratio {summary['useful_token_ratio']:.3f}  prompt reuse {summary['prompt_reuse_share']:.3f}  "
             f"peak mem {summary['peak_mem_mib']:.0f} MiB"]
    if metrics:
        keys = ["n_pairs", "accuracy", "auc", "loss", "margin_mean", "ece", "ece_calibrated", "temperature",
                "brier", "nll"]
        lines.append("eval: " + "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics))
    return "\n".join(lines)


def main(cfg: Config, *, command: str = "train") -> None:
    code = 0
    try:
        run(cfg) if command == "train" else run_eval(cfg)
    except BaseException:
        code = 1
        raise
    finally:
        if code == 0:
            dist.shutdown(0)
