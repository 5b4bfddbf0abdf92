"""The training recipe: pairs -> tokenize -> sampler/collate -> engine -> loss -> eval -> logging.

Run it through the console script under any launcher, e.g. 2 CPU ranks::

    deepspeed --num_gpus 2 --master_addr 127.0.0.1 --module rm_ds.cli train --config default

Reads top to bottom: set up, build data, build model and engine, loop over optimizer steps, evaluate,
shut down. All rank logic is in ``rm_ds.cluster.dist``; every rank runs the same code.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rm_ds.train import checkpoint
from rm_ds.cluster import dist
from rm_ds.train import faults
from rm_ds.builtin import rm_ds_home
from rm_ds.data.collate import make_collate
from rm_ds.errors import ConfigError
from rm_ds.config import (
    Config,
    check_train_plan,
    config_to_dict,
    save_config,
)
from rm_ds.data.dataset import (
    PreparedData,
    build_sampler,
    cache_dir_for,
    dataset_hash,
    prepare_data,
    rows_at,
)
from rm_ds.train.ds_config import build_ds_config
from rm_ds.train.engine import build_engine, cpu_has_bf16_matmul, model_build_context, train_step
from rm_ds.train.evaluate import calibration_record, check_eval_metric, evaluate, save_eval_artifacts
from rm_ds.train.loss import LossFn, make_loss_fn
from rm_ds.model import (
    build_reward_model,
    head_name,
    load_tokenizer,
    pad_token_for,
    param_counts,
    require_last_token_pooling,
)
from rm_ds.train.run_state import RunState
from rm_ds.train.selection import EarlyStopping
from rm_ds.data.tokenize import eos_id
from rm_ds.train.tracking import RunLogger, peak_rss_mib, throughput

log = logging.getLogger("rm_ds")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    """What ``setup`` wires together; ``train_loop`` drives it and ``state`` is what a checkpoint saves."""

    cfg: Config
    info: dist.DistInfo
    data: PreparedData
    engine: object
    logger: RunLogger
    collate: Callable
    """rows -> batch for the configured layout (padded, prefix-shared, packed)."""
    loss_fn: LossFn
    """Per-pair loss built once from cfg.loss."""
    state: RunState
    """Step, sampler, early stopping, RNG: saved with every checkpoint."""
    total_steps: int
    eval_hash: str | None = None
    trainable_params: int = 0
    total_params: int = 0


# ------------------------------------------------------------------------------------- evaluation


def evaluate_and_log(tr: Run, step: int) -> dict[str, float]:
    """Evaluate, update the best step and early stopping, log; rank 0 writes the artefacts."""
    cfg = tr.cfg
    scores, metrics = evaluate(tr.engine, tr.data.eval, cfg, rank=tr.info.rank, world_size=tr.info.world_size,
                               collate=tr.collate)
    improved = tr.state.stopper.update(step, metrics)
    metrics["best_step"] = float(tr.state.stopper.best_step)
    tr.logger.log("eval", step, metrics)
    calibration = calibration_record(cfg, step, metrics, eval_hash=tr.eval_hash)
    if tr.info.is_main and cfg.eval.save_scores:
        save_eval_artifacts(tr.logger, step, scores, tr.data.eval, metrics, calibration, beta=cfg.loss.beta,
                            n_bins=cfg.eval.ece_bins)
    tr.state.last_eval = (step, metrics)
    if improved:
        tr.logger.write_json("best.json", {"step": step, "metric": cfg.eval.metric, "value": metrics[cfg.eval.metric],
                                            "metrics": metrics, "calibration": calibration})
    return metrics


# ------------------------------------------------------------------------------------- set-up


def setup(cfg: Config, info: dist.DistInfo, *, training: bool = True) -> Run:
    """Tokenizer, data, sampler, model and engine, in that order (``training=False``: eval data only)."""
    dist.set_threads(info)
    seed_everything(cfg.train.seed)
    run_dir = Path(cfg.logging.run_dir)
    if info.is_main:
        save_config(cfg, run_dir / "config.yaml")

    tokenizer = load_tokenizer(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    pad_id = pad_token_for(tokenizer, cfg.model)
    home = rm_ds_home()
    with dist.main_rank_first(info):  # rank 0 of each node fills the tokenised cache; the others read it
        data = prepare_data(cfg.data, tokenizer, cache_dir=cache_dir_for(cfg.data, home=home),
                            builtin_dir=home / "data", training=training, objectives=cfg.model.objectives)
    for n in data.notes:
        log.info(n)
    if data.eval is not None:
        check_eval_metric(cfg, data.eval)
    # before data.json is rewritten: a checkpoint from before checkpoints held their data record is
    # compared with the data.json of the run that wrote it
    found = checkpoint.find_resume(cfg.resume, cfg.logging.run_dir) if training else None
    if found is not None:
        checkpoint.check_resume(*found, cfg, data=checkpoint.train_data_record(data.reports[0]), rank=info.rank,
                                world_size=info.world_size)
    if info.is_main:  # the formats load_pairs chose (data.format=auto) and every count, kept with the run
        (run_dir / "data.json").write_text(json.dumps(data.reports, indent=1, default=str))

    # every rank computes the same plan and takes its part
    t = cfg.train
    if training:
        check_train_plan(cfg, n_train_pairs=len(data.train))
    layout = dict(prefix_sharing=cfg.data.prefix_sharing, packing=cfg.data.packing)
    sampler = None if not training else build_sampler(data.train, t, **layout, world_size=info.world_size,
                                                      rank=info.rank)
    steps_per_epoch = sampler.steps_per_epoch() if training else 0
    total_steps = min(t.max_steps or math.inf, steps_per_epoch * t.epochs) if training else 0
    max_micro = max(len(step[0]) for step in sampler.plan_epoch(0)) if training else 1

    ds_config = build_ds_config(cfg, world_size=info.world_size, max_micro_steps=max_micro)
    with model_build_context(ds_config):
        model = build_reward_model(cfg.model, pad_token_id=pad_id, lora=cfg.lora)
    head = head_name(model.get_base_model() if cfg.lora.enabled else model)
    engine = build_engine(model, ds_config, t, total_steps=max(1, total_steps), head=head,
                          head_lr=cfg.lora.head_lr if cfg.lora.enabled else None)
    torch.manual_seed(t.seed + info.rank)  # dropout: a stream per rank (the weights are the same everywhere by now)
    trainable, total = param_counts(model)
    log.info("model %s%s: %.2fM of %.1fM parameters trainable, ZeRO stage %d, %s, world size %d; "
             "%d steps (%d per epoch), %d pairs per step", cfg.model.name_or_path,
             f" + LoRA r={cfg.lora.r}" if cfg.lora.enabled else "", trainable / 1e6, total / 1e6,
             ds_config["zero_optimization"]["stage"], cfg.model.dtype, info.world_size, total_steps,
             steps_per_epoch, t.global_batch_pairs)
    if cfg.model.dtype != "fp32" and engine.device.type == "cpu" and not cpu_has_bf16_matmul():
        log.warning("model.dtype=%s on a CPU without bf16 matrix instructions (no amx_bf16 or avx512_bf16 in "
                    "/proc/cpuinfo): bf16 may run slower than fp32 here; model.dtype=fp32 is the alternative",
                    cfg.model.dtype)
    logger = RunLogger(run_dir, enabled=info.is_main, tensorboard=cfg.logging.tensorboard)
    stopper = EarlyStopping(metric=cfg.eval.metric, mode=cfg.eval.mode, patience=cfg.eval.patience,
                            min_delta=cfg.eval.min_delta)
    if cfg.data.prefix_sharing or cfg.data.packing:
        require_last_token_pooling(model.get_base_model() if cfg.lora.enabled else model)
    tr = Run(cfg=cfg, info=info, data=data, engine=engine, logger=logger,
             collate=make_collate(**layout, pad_id=pad_id, eos_id=eos_id(tokenizer)),
             loss_fn=make_loss_fn(cfg.loss), state=RunState(sampler=sampler, stopper=stopper),
             total_steps=int(total_steps), eval_hash=dataset_hash(data.eval) if data.eval is not None else None,
             trainable_params=trainable, total_params=total)
    if found is not None:
        checkpoint.restore(engine, tr.state, *found, rank=info.rank, world_size=info.world_size,
                           cfg_hash=checkpoint.config_hash(cfg))
        if tr.state.step >= tr.total_steps and not tr.state.stopped_early:
            log.warning("resume: the checkpoint is at step %d and this run ends at step %d (train.max_steps=%s, "
                        "train.epochs=%d x %d steps per epoch over %d pairs): nothing is left to train",
                        tr.state.step, tr.total_steps, t.max_steps, t.epochs, steps_per_epoch, len(data.train))
    return tr


def save_checkpoint(tr: Run) -> None:
    """Checkpoint the engine and the run state at the current step."""
    checkpoint.save(tr.engine, tr.state, run_dir=tr.cfg.logging.run_dir, rank=tr.info.rank,
                    world_size=tr.info.world_size, cfg_hash=checkpoint.config_hash(tr.cfg),
                    keep_last=tr.cfg.train.keep_checkpoints, config=config_to_dict(tr.cfg),
                    data=checkpoint.train_data_record(tr.data.reports[0]))
    tr.state.last_save = tr.state.step


# ------------------------------------------------------------------------------------- the loop


def step_scalars(tr: Run, stats, dt: float, epoch: int) -> dict[str, float]:
    """What TensorBoard and metrics.jsonl get for one optimizer step (peak memory of every rank)."""
    peaks = dist.gather_rows(torch.tensor([[peak_rss_mib()]]))[:, 0].tolist()
    return {"loss": stats.loss, "accuracy": stats.accuracy, "margin": stats.margin, "lr": stats.lr,
            "grad_norm": stats.grad_norm, "n_pairs": stats.n_pairs,
            **throughput(pairs=stats.n_pairs, real=stats.real_tokens, computed=stats.computed_tokens,
                         unshared=stats.unshared_tokens, seconds=dt),
            "micro_steps": stats.micro_steps, "epoch": epoch, "peak_mem_mib": max(peaks),
            **{f"peak_mem_mib/rank{r}": v for r, v in enumerate(peaks)},
            "trainable_params": tr.trainable_params, "total_params": tr.total_params}


def evaluate_and_checkpoint_on_schedule(tr: Run) -> bool:
    """Mid-run eval (``eval.every_steps``) and checkpoints (periodic, and every new best step so that
    it can be exported). Returns True when early stopping says to stop here; the final step's eval
    and checkpoint (and a stopped run's) happen in ``run``."""
    cfg, t, st = tr.cfg, tr.cfg.train, tr.state
    stop = False
    if tr.data.eval is not None and cfg.eval.every_steps and st.step % cfg.eval.every_steps == 0 \
            and st.step < tr.total_steps:
        m = evaluate_and_log(tr, st.step)
        log.info("step %d eval: accuracy %.4f auc %.4f loss %.4f (best %s %.4f at step %d)", st.step,
                 m["accuracy"], m["auc"], m["loss"], cfg.eval.metric, st.stopper.best_value, st.stopper.best_step)
        if st.stopper.should_stop:
            log.info("early stopping at step %d: eval %s has not improved for %d evals", st.step,
                     cfg.eval.metric, st.stopper.bad_evals)
            stop = True
            st.stopped_early = True  # saved with the final checkpoint: a relaunch does not train on
    new_best = st.last_eval is not None and st.last_eval[0] == st.step == st.stopper.best_step
    periodic = t.save_every_steps and st.step % t.save_every_steps == 0
    if (periodic or (new_best and t.export)) and st.step < tr.total_steps and not stop:
        save_checkpoint(tr)
    return stop


def train_loop(tr: Run, *, on_step=None) -> dict[str, float]:
    """Optimizer steps until ``total_steps`` or early stopping; evaluates on schedule; returns throughput totals."""
    cfg, info, st = tr.cfg, tr.info, tr.state
    progress = None
    if info.is_main and cfg.logging.progress and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=tr.total_steps, initial=st.step, desc="train", unit="step", dynamic_ncols=True)
    report_every = max(1, tr.total_steps // 20)  # without a terminal: a progress line every 5%
    totals = {"pairs": 0, "real": 0, "computed": 0, "unshared": 0, "time": 0.0}
    stop = False
    while st.step < tr.total_steps and not stop:
        epoch = st.sampler.state_dict()["epoch"]
        for micro_idx in st.sampler:
            t0 = time.perf_counter()
            batches = [tr.collate(rows_at(tr.data.train, mb)) for mb in micro_idx]
            stats = train_step(tr.engine, batches, loss_fn=tr.loss_fn, world_size=info.world_size,
                               autocast=torch.bfloat16 if cfg.model.dtype == "bf16-mixed" else None,
                               max_grad_norm=cfg.train.max_grad_norm)
            dt = time.perf_counter() - t0
            st.step += 1
            if not faults.step_is_finite(stats.loss, stats.grad_norm):  # the same verdict on every rank
                ids = tr.data.train["pair_id"]
                try:
                    found = checkpoint.find_resume("auto", cfg.logging.run_dir)
                except ConfigError:  # no checkpoint that loads: the diagnosis names none
                    found = None
                raise faults.diagnose(step=st.step, loss=stats.loss, grad_norm=stats.grad_norm, rank=info.rank,
                                      local_micro=stats.nonfinite_micro,
                                      micro_pair_ids=[[ids[int(i)] for i in mb] for mb in micro_idx],
                                      last_good=None if found is None else found[0] / found[1])
            totals["pairs"] += stats.n_pairs
            totals["real"] += stats.real_tokens
            totals["computed"] += stats.computed_tokens
            totals["unshared"] += stats.unshared_tokens
            totals["time"] += dt
            if on_step is not None:
                on_step(st.step, stats)
            if st.step % cfg.logging.log_every == 0 or st.step == tr.total_steps:
                tr.logger.log("train", st.step, step_scalars(tr, stats, dt, epoch))
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{stats.loss:.4f}", acc=f"{stats.accuracy:.3f}")
            elif cfg.logging.progress and (st.step % report_every == 0 or st.step == tr.total_steps):
                log.info("step %d/%d  loss %.4f  accuracy %.3f  lr %.2e  %.1f pairs/s", st.step, tr.total_steps,
                         stats.loss, stats.accuracy, stats.lr, stats.n_pairs / dt)
            stop = evaluate_and_checkpoint_on_schedule(tr)
            faults.fault("after_step", st.step)
            if stop or st.step >= tr.total_steps:
                break
        else:  # epoch finished
            st.sampler.set_epoch(epoch + 1)
    if progress is not None:
        progress.close()
    return {"steps": st.step, "pairs": totals["pairs"], "train_time_s": totals["time"],
            **throughput(pairs=totals["pairs"], real=totals["real"], computed=totals["computed"],
                         unshared=totals["unshared"], seconds=totals["time"]),
            "peak_mem_mib": dist.all_reduce_max(peak_rss_mib()), "trainable_params": tr.trainable_params,
            "total_params": tr.total_params}


def start(cfg: Config) -> dist.DistInfo:
    """Join the ranks (``cfg.dist`` timeouts) and log INFO on rank 0 (WARNING on the others), each line
    tagged with its rank."""
    info = dist.init(timeout_s=cfg.dist.timeout_s, wait_timeout_s=cfg.dist.wait_timeout_s)
    logging.basicConfig(level=logging.INFO if info.is_main else logging.WARNING,
                        format=f"[rank{info.rank}] %(message)s")
    return info


def run(cfg: Config) -> dict[str, float]:
    """Train, evaluate at the end (unless the last step was just evaluated), print the summary."""
    info = start(cfg)
    tr = setup(cfg, info)
    st = tr.state
    if st.stopped_early:  # a relaunch of a run that early stopping ended: nothing left to do
        if info.is_main:
            print(f"rm-ds: {cfg.logging.run_dir} stopped early at step {st.step} (eval {cfg.eval.metric} did not "
                  f"improve for {st.stopper.bad_evals} evals; best step {st.stopper.best_step}, "
                  f"{st.stopper.best_value}); not training on. Start a new run directory to train further.",
                  flush=True)
        tr.logger.close()
        dist.barrier()
        return {"steps": st.step, "stopped_early": 1.0}
    summary = train_loop(tr)
    eval_metrics: dict[str, float] = {}
    if tr.data.eval is not None:
        eval_metrics = st.last_eval[1] if st.last_eval and st.last_eval[0] == st.step else evaluate_and_log(tr, st.step)
    if st.last_save != st.step:
        save_checkpoint(tr)
    if info.is_main and cfg.train.export:
        from rm_ds.train.export import export_run

        export_run(cfg.logging.run_dir, step="final")
        if st.stopper.best_step is not None:
            export_run(cfg.logging.run_dir, step="best")
    dist.wait_for_all()  # rank 0 exported alone: a long wait, not dist.timeout_s
    if info.is_main:
        print(format_summary(summary, eval_metrics), flush=True)
        if eval_metrics:
            print(f"best step {st.stopper.best_step} by eval {cfg.eval.metric} = {st.stopper.best_value:.4g}",
                  flush=True)
        tr.logger.write_json("summary.json", {"train": summary, "eval": eval_metrics,
                                              "best": {"step": st.stopper.best_step, "metric": cfg.eval.metric,
                                                       "value": st.stopper.best_value}})
    tr.logger.close()
    dist.barrier()
    return {**summary, **{f"eval_{k}": v for k, v in eval_metrics.items()}}


def run_eval(cfg: Config) -> dict[str, float]:
    """``rm-ds eval``: score ``data.eval_path`` with ``model.name_or_path`` on any number of ranks."""
    info = start(cfg)
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
             f"useful-token ratio {summary['useful_token_ratio']:.3f}  "
             f"prompt reuse {summary['prompt_reuse_share']:.3f}  "
             f"peak mem {summary['peak_mem_mib']:.0f} MiB"]
    if metrics:
        keys = ["n_pairs", "accuracy", "auc", "loss", "margin_mean", "ece", "ece_calibrated", "temperature",
                "brier", "nll"]
        lines.append("eval: " + "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics))
    return "\n".join(lines)


def main(cfg: Config, *, command: str = "train") -> None:
    run(cfg) if command == "train" else run_eval(cfg)
    dist.shutdown(0)  # only on success: an exception propagates with its traceback
