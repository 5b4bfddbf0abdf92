"""Checkpoints that resume exactly: DeepSpeed states plus the trainer's own state, written safely.

Layout under ``run_dir/checkpoints/``::

    step_00000040/            DeepSpeed shards (model, optimizer, scheduler) + trainer state
        rng_rank0.pt ...      each rank's RNG states (dropout streams differ per rank)
        COMPLETE              written last, after every rank has finished writing
    latest                    name of the newest COMPLETE checkpoint, replaced atomically

A run killed while saving leaves a directory without ``COMPLETE``; ``latest`` still names the previous
good checkpoint, and ``find_resume`` skips incomplete directories. Retention keeps the last
``train.keep_checkpoints`` plus the best step's checkpoint.

Run state (``rm_ds.run_state.RunState``): step, sampler position (epoch, step in epoch),
early-stopping state (best metric and counter) and RNG; plus the world size (a resume on another
world size would change the global batches, so it is refused) and a hash of the training-relevant
config. The layout and the engine-free readers are in ``rm_ds.checkpoint_files``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import torch

from rm_ds import dist
from rm_ds.checkpoint_files import COMPLETE, LATEST, checkpoint_root, complete_tags, find_resume, read_state, tag_for
from rm_ds.config import config_to_dict
from rm_ds.engine import load_checkpoint, save_checkpoint
from rm_ds.run_state import RunState

__all__ = ["COMPLETE", "LATEST", "checkpoint_root", "complete_tags", "config_hash", "fault", "find_resume", "prune",
           "restore", "save", "tag_for"]

log = logging.getLogger(__name__)
# Sections that may change between a run and its resume without changing what is trained.
_RESUME_FREE = ("logging", "resume", "eval")


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


def save(engine, state: RunState, *, run_dir: str | Path, rank: int, world_size: int, cfg_hash: str,
         keep_last: int) -> Path:
    """Checkpoint ``engine`` and ``state`` at ``state.step`` on every rank; rank 0 marks it complete and
    prunes to the last ``keep_last`` plus the best step's checkpoint."""
    root = checkpoint_root(run_dir)
    tag = tag_for(state.step)
    full = state.state_dict()
    rng = full.pop("rng")
    saved = {**full, "world_size": world_size, "config_hash": cfg_hash}
    save_checkpoint(engine, str(root), tag, {"rm_ds": saved})
    torch.save(rng, root / tag / f"rng_rank{rank}.pt")
    dist.barrier()
    fault("in_save", state.step)
    if rank == 0:
        (root / tag / COMPLETE).write_text(json.dumps(saved) + "\n")
        tmp = root / f".{LATEST}.tmp"
        tmp.write_text(tag + "\n")
        os.replace(tmp, root / LATEST)
        best = state.best_step
        prune(root, keep_last=keep_last, keep={tag_for(best)} if best else set())
    dist.barrier()
    log.info("checkpoint %s saved", root / tag)
    return root / tag


def prune(root: Path, *, keep_last: int, keep: set[str]) -> None:
    tags = complete_tags(root)
    keep = set(keep) | set(tags[-keep_last:])
    for p in root.glob("step_*"):
        complete = (p / COMPLETE).exists()
        if (complete and p.name not in keep) or (not complete and p.name < tags[-1]):
            shutil.rmtree(p, ignore_errors=True)


def restore(engine, state: RunState, root: Path, tag: str, *, rank: int, world_size: int, cfg_hash: str) -> None:
    """Load DeepSpeed states into ``engine`` and the run state saved at ``tag`` into ``state``."""
    saved = read_state(root, tag)
    if saved["world_size"] != world_size:
        raise RuntimeError(f"resume: {root / tag} was written by {saved['world_size']} ranks and this run has "
                           f"{world_size}; the global batches would differ, so an exact resume is "
                           f"impossible. Resume with {saved['world_size']} ranks, or start a new run.")
    if saved["config_hash"] != cfg_hash:
        log.warning("resume: the training config differs from the one %s was written with", tag)
    load_checkpoint(engine, str(root), tag)
    rng_file = root / tag / f"rng_rank{rank}.pt"
    rng = torch.load(rng_file, weights_only=False) if rng_file.exists() else None
    state.load_state_dict({**saved, "rng": rng})
    log.info("resumed from %s at step %d (epoch %d, step %d in epoch)", root / tag, state.step,
             saved["sampler"]["epoch"], saved["sampler"]["step"])
