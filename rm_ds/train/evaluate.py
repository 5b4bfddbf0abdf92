"""ZeRO-aware evaluation: every rank scores its shard, per-pair scores are gathered, metrics once.

Each rank scores the pairs ``eval_shards`` gives it (every pair exactly once over all ranks, uneven
shards allowed, the same number of forwards on every rank so ZeRO-3's parameter gathers line up).
The per-pair records ``(pair index, r_chosen, r_rejected)`` are gathered
to every rank with a size exchange (gloo needs equal sizes), de-duplicated and ordered by pair
index, checked to cover the eval set exactly once, and only then turned into metrics — the same
numbers whatever the world size, never a mean of per-rank means.

``evaluate`` turns the gathered scores into the eval metrics (fitted temperature included),
``calibration_record`` is what an export carries to calibrate rewards, and ``save_eval_artifacts``
writes the per-eval files and plots (rank 0).
"""

from __future__ import annotations

import numpy as np
import torch

from rm_ds.cluster import dist
from rm_ds.config import Config, eval_token_budget
from rm_ds.eval.metrics import both_orientations, fit_temperature
from rm_ds.errors import ConfigError
from rm_ds.eval.scores import EvalScores, compute_metrics, merge_records
from rm_ds.train.checkpoint_files import eval_subdir
from rm_ds.train.engine import score_batches
from rm_ds.train.tracking import RunLogger
from rm_ds.data.packing import pair_lengths, sampler_cost
from rm_ds.data.sampler import eval_shards


def shard_batches(ds, *, rank: int, world_size: int, collate, token_budget: int, prefix_sharing: bool,
                  packing: bool) -> list[tuple[list[int], dict]]:
    """This rank's eval micro-batches: (pair indices, collated batch); ``[]`` marks a filler forward."""
    layout = dict(prefix_sharing=prefix_sharing, packing=packing)
    shards = eval_shards(pair_lengths(ds, **layout), world_size=world_size, token_budget=token_budget,
                         pairs_per_micro=None, cost=sampler_cost(packing=packing))
    return [(list(idx), collate([ds[int(i)] for i in idx])) for idx in shards[rank]]


def gather_scores(engine, ds, *, rank: int, world_size: int, collate, token_budget: int, prefix_sharing: bool,
                  packing: bool) -> EvalScores:
    """Every rank scores its shard; the per-pair records are gathered and merged on every rank."""
    batches = shard_batches(ds, rank=rank, world_size=world_size, collate=collate, token_budget=token_budget,
                            prefix_sharing=prefix_sharing, packing=packing)
    scored = score_batches(engine, [b for _, b in batches])
    local = []
    k = scored[0][0].shape[1] if scored and scored[0][0].dim() == 2 else 1  # rewards per response (objectives)
    for (idx, _batch), (c, r) in zip(batches, scored):
        if not idx:  # filler forward: nothing to record
            continue
        local.append(torch.cat([torch.tensor(idx, dtype=torch.float64)[:, None], c.double().cpu().reshape(len(idx), k),
                                r.double().cpu().reshape(len(idx), k)], dim=1))
    mine = torch.cat(local) if local else torch.zeros((0, 1 + 2 * k), dtype=torch.float64)
    allrows = dist.gather_rows(mine).numpy()
    return merge_records(allrows, n_expected=len(ds))


def evaluate(engine, ds, cfg: Config, *, rank: int, world_size: int, collate) -> tuple[EvalScores, dict[str, float]]:
    """Score every eval pair once over all ranks; the metrics (fitted temperature included)."""
    scores = gather_scores(engine, ds, rank=rank, world_size=world_size, collate=collate,
                           token_budget=eval_token_budget(cfg),
                           prefix_sharing=cfg.data.prefix_sharing, packing=cfg.data.packing)
    objectives = cfg.model.objectives
    if objectives:  # one temperature per objective over its labelled pairs, and one over all labelled entries
        prefs = np.asarray(list(ds["prefs"]), dtype=np.float64)[scores.index]
        d, lab = scores.chosen - scores.rejected, ~np.isnan(prefs)
        temps = [fit_temperature(d[lab[:, j], j], beta=cfg.loss.beta, pref=prefs[lab[:, j], j]) if lab[:, j].any()
                 else 1.0 for j in range(len(objectives))]
        temperature = fit_temperature(d[lab], beta=cfg.loss.beta, pref=prefs[lab])
        metrics = compute_metrics(scores, ds, loss=cfg.loss, n_bins=cfg.eval.ece_bins,
                                  thresholds=cfg.eval.thresholds, objectives=objectives, temperatures=temps)
        metrics.update({f"{o}/temperature": t for o, t in zip(objectives, temps)})
        metrics["temperature"] = temperature
        return scores, metrics
    pref = np.asarray(ds["pref"], dtype=np.float64)[scores.index] if "pref" in ds.column_names else None
    temperature = fit_temperature(scores.chosen - scores.rejected, beta=cfg.loss.beta, pref=pref)
    metrics = compute_metrics(scores, ds, loss=cfg.loss, n_bins=cfg.eval.ece_bins, thresholds=cfg.eval.thresholds,
                              temperature=temperature)
    metrics["temperature"] = temperature
    return scores, metrics


def calibration_record(cfg: Config, step: int, metrics: dict[str, float], *, eval_hash: str | None) -> dict:
    """What an exported model carries to turn rewards into calibrated probabilities."""
    return {"temperature": metrics["temperature"], "reward_mean": metrics["reward_mean"],
            "reward_std": metrics["reward_std"], "beta": cfg.loss.beta, "ece_before": metrics["ece"],
            "ece_after": metrics.get("ece_calibrated"), "eval_set_sha256": eval_hash,
            "eval_pairs": int(metrics["n_pairs"]), "eval_path": cfg.data.eval_path, "step": step,
            **({"objectives": {o: {k: metrics.get(f"{o}/{k}") for k in ("temperature", "reward_mean", "reward_std",
                                                                          "ece", "ece_calibrated", "n_pairs")}
                               for o in cfg.model.objectives}} if cfg.model.objectives else {})}


def save_eval_artifacts(logger: RunLogger, step: int, scores, ds, metrics: dict, calibration: dict, *,
                        beta: float, n_bins: int) -> None:
    """Per-eval files under ``run_dir/eval/step_NNNNNNNN/`` and the same plots as TensorBoard images."""
    from rm_ds.eval.metrics import reliability_bins
    from rm_ds.eval.plots import reliability_diagram_png, reward_histogram_png

    sub = eval_subdir(step)
    ids = list(ds["pair_id"])
    sources = list(ds["source"]) if "source" in ds.column_names else [""] * len(ids)
    where = {c: list(ds[c]) for c in ("file", "row", "pref") if c in ds.column_names}  # provenance of each pair
    logger.write_json(f"{sub}/reward_distributions.json", {
        "step": step, "pair_id": [ids[i] for i in scores.index], "source": [sources[i] for i in scores.index],
        **{c: [v[i] for i in scores.index] for c, v in where.items()},
        "chosen": scores.chosen.tolist(), "rejected": scores.rejected.tolist()})
    logger.write_json(f"{sub}/calibration.json", calibration)
    logger.write_json(f"{sub}/metrics.json", metrics)
    chosen, rejected = scores.chosen, scores.rejected
    if chosen.ndim == 2:  # several objectives: the plots show every labelled (pair, objective) entry
        lab = ~np.isnan(np.asarray(list(ds["prefs"]), dtype=np.float64)[scores.index])
        chosen, rejected = chosen[lab], rejected[lab]
    margins = chosen - rejected
    t = calibration["temperature"]
    both_p, labels = both_orientations(beta * margins)
    both_pt, _ = both_orientations(beta * margins / t)
    logger.image("eval/reward_histogram", reward_histogram_png(chosen, rejected,
                                                               title=f"rewards at step {step}"),
                 step, filename=f"{sub}/reward_histogram.png")
    logger.image("eval/reliability", reliability_diagram_png(
        reliability_bins(both_p, labels, n_bins=n_bins), reliability_bins(both_pt, labels, n_bins=n_bins),
        title=f"reliability at step {step} (T={t:.3g})"), step, filename=f"{sub}/reliability.png")
    logger.histogram("eval/chosen_reward", chosen, step)
    logger.histogram("eval/rejected_reward", rejected, step)


def check_eval_metric(cfg: Config, eval_ds) -> None:
    """``eval.metric`` must be a figure this eval set yields (per-source accuracy needs that source, soft
    labels add tie_rate, ...): checked once the eval data is loaded, before any training step, with the
    metric code itself on placeholder scores, so a typo never costs the run at its final eval."""
    n, objectives = len(eval_ds), cfg.model.objectives
    zeros = np.zeros((n, len(objectives)) if objectives else n)
    names = set(compute_metrics(EvalScores(index=np.arange(n), chosen=zeros, rejected=zeros), eval_ds, loss=cfg.loss,
                                n_bins=cfg.eval.ece_bins, thresholds=cfg.eval.thresholds, temperature=1.0,
                                objectives=objectives, temperatures=[1.0] * len(objectives) if objectives else None))
    names |= {"temperature", *(f"{o}/temperature" for o in objectives)}
    if cfg.eval.metric not in names:
        raise ConfigError(f"eval.metric: {cfg.eval.metric!r} is not among the metrics of the eval set "
                          f"{cfg.data.eval_path!r} (it yields: {', '.join(sorted(names))})")
