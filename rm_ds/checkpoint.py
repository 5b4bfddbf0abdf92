"""Checkpoints that resume exactly: DeepSpeed states plus the trainer's own state, written safely.

Layout under ``run_dir/checkpoints/``::

    step_00000040/            DeepSpeed shards (model, optimizer, scheduler) + trainer state
        rng_rank0.pt ...      each rank's RNG states (dropout streams differ per rank)
        COMPLETE              written last, after every rank has finished writing
    latest                    name of the newest COMPLETE checkpoint, replaced atomically
    .partial-step_00000050/   a checkpoint being written (renamed to its tag once complete)

A checkpoint is written into a fresh ``.partial-`` directory, marked complete, then renamed to its
tag, and only then does ``latest`` move: a run killed while saving leaves the previous good
checkpoint, and ``latest``, untouched, and a complete tag is never written into. Retention keeps the last
``train.keep_checkpoints`` plus the best step's checkpoint.

rm_ds's own files (``rng_rank*.pt``, ``COMPLETE``) load without unpickling (``weights_only=True``,
JSON). DeepSpeed's shards are pickles: load checkpoints only from run directories you trust.

Trainer state: step, sampler position (epoch, step in epoch), early-stopping state (best metric and
counter), world size (a resume on another world size would change the global batches, so it is
refused), and a hash of the training-relevant config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import torch

from rm_ds import dist
from rm_ds.config import ConfigError, config_to_dict, flatten
from rm_ds.engine import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
LATEST = "latest"
PARTIAL = ".partial-"
"""Prefix of the directory a checkpoint is written into before it is complete."""
OLD = ".replaced-"
"""Prefix a complete tag is renamed to for the moment its fresh copy takes its name."""
# Sections that may change between a run and its resume without changing what is trained.
_RESUME_FREE = ("logging", "resume", "eval")
TRAJECTORY_FREE = ("logging.", "resume", "resume_override", "dist.", "eval.every_steps", "eval.token_budget",
                   "eval.thresholds", "eval.ece_bins", "eval.save_scores", "data.eval_path", "data.eval_split",
                   "data.max_eval_pairs", "data.num_proc", "train.save_every_steps", "train.keep_checkpoints",
                   "train.export")
"""Config keys (or prefixes ending in '.') that a resume may change: they cannot alter the weights' trajectory."""
OVERRIDES_LOG = "resume_overrides.jsonl"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def config_hash(cfg) -> str:
    d = {k: v for k, v in config_to_dict(cfg).items() if k not in _RESUME_FREE}
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("max_steps", "save_every_steps",
                                                                    "keep_checkpoints", "export")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def fault(point: str, step: int) -> None:
    """Test hook: ``RM_DS_FAULT=<point>:<step>`` makes every rank SIGKILL itself there.

    Points: ``after_step`` (after step N and its checkpoint, if any), ``in_save`` (during the save at
    step N, after the shards are written but before the checkpoint is marked complete).
    """
    spec = os.environ.get("RM_DS_FAULT", "")
    if spec and spec == f"{point}:{step}":
        dist.barrier()
        log.warning("RM_DS_FAULT: killing rank at %s of step %d", point, step)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def save(tr, *, best_step: int | None) -> Path:
    """Checkpoint the trainer at ``tr.step`` on every rank; rank 0 marks it complete and prunes.

    Never writes into a tag that is already marked complete (a run resumed from its final checkpoint
    saves that step again): every rank writes into a fresh hidden directory, rank 0 marks it
    ``COMPLETE`` and only then renames it to the tag (the old copy moved aside first) and moves
    ``latest``. A kill at any point leaves the previous complete checkpoint intact.
    """
    root = checkpoint_root(tr.cfg.logging.run_dir)
    tag = tag_for(tr.step)
    staging = f"{PARTIAL}{tag}"
    state = {"step": tr.step, "sampler": tr.sampler.state_dict(), "stopper": tr.stopper.state_dict(),
             "world_size": tr.info.world_size, "config_hash": config_hash(tr.cfg),
             "early_stopped": bool(getattr(tr, "stopped_early", False)), "config": config_to_dict(tr.cfg)}
    if tr.info.is_main and (root / staging).exists():
        shutil.rmtree(root / staging)  # left by a run killed while saving
    dist.barrier()
    save_checkpoint(tr.engine, str(root), staging, {"rm_ds": state})
    torch.save(rng_state(), root / staging / f"rng_rank{tr.info.rank}.pt")
    dist.barrier()
    fault("in_save", tr.step)
    if tr.info.is_main:
        (root / staging / COMPLETE).write_text(json.dumps(state) + "\n")
        old = root / f"{OLD}{tag}"
        if (root / tag).exists():
            os.replace(root / tag, old)
        os.replace(root / staging, root / tag)
        tmp = root / f".{LATEST}.tmp"
        tmp.write_text(tag + "\n")
        os.replace(tmp, root / LATEST)
        shutil.rmtree(old, ignore_errors=True)
        prune(root, keep_last=tr.cfg.train.keep_checkpoints, keep={tag_for(best_step)} if best_step else set())
    dist.wait_for_all()  # rank 0 marked and pruned alone
    log.info("checkpoint %s saved", root / tag)
    return root / tag


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as tensors, ints and tuples only, so that the file loads with
    ``torch.load(weights_only=True)`` (no pickled objects: rm_ds's own files never need a trusted source)."""
    version, keys, gauss = random.getstate()
    name, mt, pos, has_gauss, cached = np.random.get_state()
    return {"python": {"version": version, "state": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
            "numpy": {"name": name, "keys": torch.from_numpy(mt.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state()}


def set_rng_state(rng: dict) -> None:
    """Inverse of ``rng_state``."""
    py = rng["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = rng["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(rng["torch"])


def complete_tags(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("step_*") if (p / COMPLETE).exists())


def prune(root: Path, *, keep_last: int, keep: set[str]) -> None:
    for p in [*root.glob(f"{PARTIAL}*"), *root.glob(f"{OLD}*")]:  # debris of runs killed while saving
        shutil.rmtree(p, ignore_errors=True)
    tags = complete_tags(root)
    keep = set(keep) | set(tags[-keep_last:])
    for p in root.glob("step_*"):
        complete = (p / COMPLETE).exists()
        if (complete and p.name not in keep) or (not complete and p.name < tags[-1]):
            shutil.rmtree(p, ignore_errors=True)


def find_resume(cfg) -> tuple[Path, str] | None:
    """The checkpoint ``cfg.resume`` asks for: (root, tag), or None to start fresh."""
    if cfg.resume == "none":
        return None
    if cfg.resume != "auto":
        p = Path(cfg.resume)
        if not (p / COMPLETE).exists():
            raise FileNotFoundError(f"resume: {p} is not a complete rm_ds checkpoint (no {COMPLETE} file)")
        return p.parent, p.name
    root = checkpoint_root(cfg.logging.run_dir)
    tags = complete_tags(root) if root.is_dir() else []
    if not tags:
        return None
    latest = (root / LATEST).read_text().strip() if (root / LATEST).exists() else None
    if latest in tags:
        return root, latest
    log.warning("resume: %s names no complete checkpoint; using %s", root / LATEST, tags[-1])
    return root, tags[-1]


def _free(key: str) -> bool:
    return any(key.startswith(k) if k.endswith(".") else key == k for k in TRAJECTORY_FREE)


def check_resume_config(tr, state: dict, where: Path) -> None:
    """Refuse to resume a checkpoint into a run whose config differs in a key that changes training,
    unless ``resume_override`` lists every such key (the override is then recorded in run_dir)."""
    cfg = tr.cfg
    if "config" not in state:  # written before checkpoints carried their config
        if state["config_hash"] != config_hash(cfg) and not cfg.resume_override:
            raise ConfigError(f"resume: the training config differs from the one {where} was written with (that "
                              f"checkpoint does not record which keys); start a new run, or list the keys you "
                              f"changed in resume_override")
        return
    old, new = flatten(state["config"]), flatten(config_to_dict(cfg))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and not _free(k))
    unapproved = [k for k in changed if k not in cfg.resume_override]
    if unapproved:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in unapproved)
        raise ConfigError(f"resume: {where} was written by a run with other settings ({diffs}); resuming would "
                          f"silently mix two runs. Restore those values, start a new logging.run_dir, or accept "
                          f"the change with resume_override=[{','.join(unapproved)}] (recorded in the run)")
    if changed and tr.info.is_main:
        record = {"step": state["step"], "checkpoint": str(where),
                  "overrides": {k: [old.get(k), new.get(k)] for k in changed}}
        with open(Path(cfg.logging.run_dir) / OVERRIDES_LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
        log.warning("resume: overriding %s as resume_override allows (recorded in %s)",
                    ", ".join(f"{k}={new.get(k)!r}" for k in changed), OVERRIDES_LOG)


def restore(tr, root: Path, tag: str) -> None:
    """Load DeepSpeed states and the trainer state saved at ``tag`` into ``tr``."""
    state = json.loads((root / tag / COMPLETE).read_text())
    if state["world_size"] != tr.info.world_size:
        raise ConfigError(f"resume: {root / tag} was written by {state['world_size']} ranks and this run has "
                           f"{tr.info.world_size}; the global batches would differ, so an exact resume is "
                           f"impossible. Resume with {state['world_size']} ranks, or start a new run.")
    check_resume_config(tr, state, root / tag)
    load_checkpoint(tr.engine, str(root), tag)
    tr.step = state["step"]
    tr.sampler.load_state_dict(state["sampler"])
    tr.stopper.load_state_dict(state["stopper"])
    tr.stopped_early = bool(state.get("early_stopped", False))
    rng_file = root / tag / f"rng_rank{tr.info.rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
    log.info("resumed from %s at step %d (epoch %d, step %d in epoch)", root / tag, tr.step,
             state["sampler"]["epoch"], state["sampler"]["step"])
