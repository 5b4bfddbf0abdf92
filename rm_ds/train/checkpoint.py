"""Checkpoints that resume exactly: DeepSpeed states plus the trainer's own state, written safely.

Layout under ``run_dir/checkpoints/``::

    step_00000040/            DeepSpeed shards (model, optimizer, scheduler) + trainer state
        rng_rank0.pt ...      each rank's RNG states (dropout streams differ per rank)
        COMPLETE              written last, after every rank has finished writing
    latest                    name of the newest COMPLETE checkpoint, replaced atomically

A checkpoint is written into a fresh ``.partial-step_*`` directory, marked complete, then renamed to
its tag, and only then does ``latest`` move: a run killed while saving leaves the previous good
checkpoint, and ``latest``, untouched, and a complete tag is never written into. rm_ds's own files
(``rng_rank*.pt``, ``COMPLETE``) load without unpickling (``weights_only=True``, JSON); DeepSpeed's
shards are pickles: load checkpoints only from run directories you trust. Retention keeps the last
``train.keep_checkpoints`` plus the best step's checkpoint.

Run state (``rm_ds.train.run_state.RunState``): step, sampler position (epoch, step in epoch),
early-stopping state (best metric and counter) and RNG; plus the world size (a resume on another
world size would change the global batches, so it is refused) and a hash of the training-relevant
config. The layout and the engine-free readers are in ``rm_ds.train.checkpoint_files``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import torch

from rm_ds.cluster import dist
from rm_ds.train.checkpoint_files import (
    COMPLETE,
    LATEST,
    OLD,
    PARTIAL,
    checkpoint_root,
    complete_tags,
    file_manifest,
    find_resume,
    read_state,
    tag_for,
)
from rm_ds.config import config_to_dict, flatten
from rm_ds.errors import ConfigError
from rm_ds.train.engine import load_checkpoint, save_checkpoint
from rm_ds.train import faults
from rm_ds.train.run_state import RunState

__all__ = ["COMPLETE", "LATEST", "check_resume", "checkpoint_root", "complete_tags", "config_hash", "find_resume",
           "prune", "restore", "save", "tag_for", "train_data_record"]

log = logging.getLogger(__name__)
# Sections that may change between a run and its resume without changing what is trained.
_RESUME_FREE = ("logging", "resume", "eval")
TRAJECTORY_FREE = ("logging.", "resume", "resume_override", "dist.", "eval.every_steps", "eval.token_budget",
                   "eval.thresholds", "eval.ece_bins", "eval.save_scores", "data.eval_path", "data.eval_split",
                   "data.max_eval_pairs", "data.num_proc", "data.cache_dir", "train.save_every_steps",
                   "train.keep_checkpoints", "train.export")
"""Config keys (or prefixes ending in '.') that a resume may change: they cannot alter the weights' trajectory."""
OVERRIDES_LOG = "resume_overrides.jsonl"


def config_hash(cfg) -> str:
    d = {k: v for k, v in config_to_dict(cfg).items() if k not in _RESUME_FREE}
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("max_steps", "save_every_steps",
                                                                    "keep_checkpoints", "export")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def save(engine, state: RunState, *, run_dir: str | Path, rank: int, world_size: int, cfg_hash: str,
         keep_last: int, config: dict | None = None, data: dict | None = None) -> Path:
    """Checkpoint ``engine`` and ``state`` at ``state.step`` on every rank; rank 0 marks it complete and
    prunes to the last ``keep_last`` plus the best step's checkpoint. ``config``: the resolved config
    tree, saved so that a resume can name the keys that differ; ``data``: the training data's record
    (``train_data_record``), so that a resume onto other data is refused. ``COMPLETE`` also lists every
    file with its size, so that a file later missing or cut short is named on resume.

    Never writes into a tag that is already marked complete (a run resumed from its final checkpoint
    saves that step again): every rank writes into a fresh hidden directory, rank 0 marks it
    ``COMPLETE`` and only then renames it to the tag (the old copy moved aside first) and moves
    ``latest``. A kill at any point leaves the previous complete checkpoint intact.
    """
    root = checkpoint_root(run_dir)
    tag = tag_for(state.step)
    staging = f"{PARTIAL}{tag}"
    full = state.state_dict()
    rng = full.pop("rng")
    saved = {**full, "world_size": world_size, "config_hash": cfg_hash, "config": config, "data": data}
    if rank == 0 and (root / staging).exists():
        shutil.rmtree(root / staging)  # left by a run killed while saving
    dist.barrier()
    save_checkpoint(engine, str(root), staging, {"rm_ds": saved})
    torch.save(rng, root / staging / f"rng_rank{rank}.pt")
    dist.barrier()
    faults.fault("in_save", state.step)
    if rank == 0:
        marked = {**saved, "files": file_manifest(root / staging)}  # every rank's files are written by now
        (root / staging / COMPLETE).write_text(json.dumps(marked) + "\n")
        old = root / f"{OLD}{tag}"
        if (root / tag).exists():
            os.replace(root / tag, old)
        os.replace(root / staging, root / tag)
        tmp = root / f".{LATEST}.tmp"
        tmp.write_text(tag + "\n")
        os.replace(tmp, root / LATEST)
        shutil.rmtree(old, ignore_errors=True)
        best = state.best_step
        prune(root, keep_last=keep_last, keep={tag_for(best)} if best else set())
    dist.wait_for_all()  # rank 0 marked and pruned alone
    log.info("checkpoint %s saved", root / tag)
    return root / tag


def prune(root: Path, *, keep_last: int, keep: set[str]) -> None:
    for p in [*root.glob(f"{PARTIAL}*"), *root.glob(f"{OLD}*")]:  # debris of runs killed while saving
        shutil.rmtree(p, ignore_errors=True)
    tags = complete_tags(root)
    keep = set(keep) | set(tags[-keep_last:])
    for p in root.glob("step_*"):
        complete = (p / COMPLETE).exists()
        if (complete and p.name not in keep) or (not complete and p.name < tags[-1]):
            shutil.rmtree(p, ignore_errors=True)


def _free(key: str) -> bool:
    return any(key.startswith(k) if k.endswith(".") else key == k for k in TRAJECTORY_FREE)


def train_data_record(report: dict) -> dict:
    """What a checkpoint keeps of the training data (from the train split's entry in ``data.json``):
    the path, the content fingerprint (every resolved file's name, size and bytes, or a hub dataset's
    ``datasets`` fingerprint) and the counts."""
    return {"train_path": report.get("path"), "split": report.get("split"), "fingerprint": report.get("fingerprint"),
            "n_rows": report.get("n_rows"), "n_loaded": report.get("n_loaded"), "format": report.get("format")}


def _saved_data_record(root: Path, tag: str, saved: dict) -> dict | None:
    """The training-data record of the run that wrote ``root/tag``: from ``COMPLETE``, or, for a checkpoint
    written before it held one, the train entry of ``data.json`` in that run's directory."""
    if saved.get("data") is not None:
        return saved["data"]
    data_json = Path(root).parent / "data.json"
    old_cfg = (saved.get("config") or {}).get("data", {})
    try:
        reports = json.loads(data_json.read_text())
    except (OSError, ValueError):
        return None
    for r in reports if isinstance(reports, list) else []:
        if isinstance(r, dict) and r.get("path") == old_cfg.get("train_path", r.get("path")) \
                and r.get("split") == old_cfg.get("train_split", r.get("split")):
            return train_data_record(r)
    return None


def _config_changes(saved: dict, cfg, where: Path) -> dict[str, list]:
    """The training keys whose values differ from those ``where`` was written with ({key: [old, new]});
    a ``ConfigError`` naming them unless ``cfg.resume_override`` lists every one."""
    if saved.get("config") is None:  # written before checkpoints carried their config
        if saved["config_hash"] != config_hash(cfg) and not cfg.resume_override:
            raise ConfigError(f"resume: the training config differs from the one {where} was written with (that "
                              f"checkpoint does not record which keys); start a new run, or list the keys you "
                              f"changed in resume_override")
        return {}
    old, new = flatten(saved["config"]), flatten(config_to_dict(cfg))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and not _free(k))
    unapproved = [k for k in changed if k not in cfg.resume_override]
    if unapproved:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in unapproved)
        raise ConfigError(f"resume: {where} was written by a run with other settings ({diffs}); resuming would "
                          f"silently mix two runs. Restore those values, start a new logging.run_dir, or accept "
                          f"the change with resume_override=[{','.join(unapproved)}] (recorded in the run)")
    return {k: [old.get(k), new.get(k)] for k in changed}


def _data_change(root: Path, tag: str, saved: dict, cfg, current: dict) -> dict | None:
    """None when the training data has the content ``root/tag`` was trained on (or the checkpoint does not
    say); else {field: [old, new]}, or a ``ConfigError`` naming data.train_path unless ``resume_override``
    lists it. The same path with other bytes (rows flipped, cut, appended) counts as other data."""
    old = _saved_data_record(root, tag, saved)
    if old is None or not old.get("fingerprint") or old.get("fingerprint") == current.get("fingerprint"):
        return None
    counts = (f"{old.get('n_loaded')} pairs from {old.get('n_rows')} rows then, {current.get('n_loaded')} pairs from "
              f"{current.get('n_rows')} rows now")
    if "data.train_path" not in cfg.resume_override:
        raise ConfigError(f"data.train_path: the training data {cfg.data.train_path!r} is not the data "
                          f"{Path(root) / tag} was trained on (content fingerprint {old['fingerprint'][:12]} then, "
                          f"{str(current.get('fingerprint'))[:12]} now; {counts}); resuming would silently continue "
                          f"on other pairs. Restore the file, start a new logging.run_dir, or accept the change "
                          f"with resume_override=[data.train_path] (recorded in the run)")
    log.warning("resume: the training data changed (%s); resume_override lists data.train_path, so training goes "
                "on", counts)
    return {k: [old.get(k), current.get(k)] for k in ("train_path", "fingerprint", "n_rows", "n_loaded", "format")}


def check_resume(root: Path, tag: str, cfg, *, data: dict | None, rank: int, world_size: int) -> None:
    """Every reason to refuse resuming ``root/tag`` into this run, checked before a model is built: another
    world size; training keys that differ (``_config_changes``); training data with other content
    (``_data_change``; ``data``: this run's ``train_data_record``). What ``cfg.resume_override`` lets
    through is logged and recorded (rank 0) in ``run_dir/resume_overrides.jsonl``, once all checks pass."""
    saved = read_state(root, tag)
    where = Path(root) / tag
    if saved["world_size"] != world_size:
        raise ConfigError(f"resume: {where} was written by {saved['world_size']} ranks and this run has "
                          f"{world_size}; the global batches would differ, so an exact resume is "
                          f"impossible. Resume with {saved['world_size']} ranks, or start a new run.")
    changed = _config_changes(saved, cfg, where)
    data_changed = _data_change(root, tag, saved, cfg, data) if data is not None else None
    if (changed or data_changed) and rank == 0:
        record = {"step": saved["step"], "checkpoint": str(where), "overrides": changed,
                  **({"data": data_changed} if data_changed else {})}
        with open(Path(cfg.logging.run_dir) / OVERRIDES_LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
        if changed:
            log.warning("resume: overriding %s as resume_override allows (recorded in %s)",
                        ", ".join(f"{k}={v[1]!r}" for k, v in changed.items()), OVERRIDES_LOG)


def _fit_sampler_position(saved: dict, state: RunState, where: Path) -> dict:
    """The saved sampler position, or the start of the next epoch when it lies past the end of this run's
    epoch (possible only after an override changed the data or the batching): said in a warning."""
    pos = saved.get("sampler")
    if pos is None or state.sampler is None or pos["step"] <= state.sampler.steps_per_epoch():
        return saved
    log.warning("resume: %s stopped at step %d of epoch %d, but an epoch now has %d steps (the data or batching "
                "changed under resume_override); going on at the start of epoch %d", where, pos["step"],
                pos["epoch"], state.sampler.steps_per_epoch(), pos["epoch"] + 1)
    return {**saved, "sampler": {"epoch": pos["epoch"] + 1, "step": 0}}


def restore(engine, state: RunState, root: Path, tag: str, *, rank: int, world_size: int, cfg_hash: str) -> None:
    """Load DeepSpeed states into ``engine`` and the run state saved at ``tag`` into ``state`` (after
    ``check_resume`` accepted it). A load that fails (a shard damaged in a way ``checkpoint_problem``
    does not see) is a ``ConfigError`` naming the checkpoint."""
    saved = read_state(root, tag)
    if saved["world_size"] != world_size:
        raise ConfigError(f"resume: {root / tag} was written by {saved['world_size']} ranks and this run has "
                           f"{world_size}; the global batches would differ, so an exact resume is "
                           f"impossible. Resume with {saved['world_size']} ranks, or start a new run.")
    if saved["config_hash"] != cfg_hash:
        log.info("resume: the training config differs from the one %s was written with (as resume_override "
                 "allows)", tag)
    try:
        load_checkpoint(engine, str(root), tag)
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        if dist.peer_failure(e) is not None:  # a rank died while loading: exit 4, not a damaged checkpoint
            raise
        lines = str(e).strip().splitlines()
        raise ConfigError(f"resume: checkpoint {root / tag} cannot be loaded ({type(e).__name__}: "
                          f"{lines[0] if lines else ''}); it is damaged: resume from an older checkpoint folder, "
                          f"or move this one aside and use resume=auto") from e
    rng_file = root / tag / f"rng_rank{rank}.pt"
    rng = torch.load(rng_file, weights_only=True) if rng_file.exists() else None
    state.load_state_dict({**_fit_sampler_position(saved, state, root / tag), "rng": rng})
    log.info("resumed from %s at step %d (epoch %d, step %d in epoch)", root / tag, state.step,
             saved["sampler"]["epoch"], saved["sampler"]["step"])
