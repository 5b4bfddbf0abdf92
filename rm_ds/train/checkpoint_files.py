"""The on-disk layout of rm_ds checkpoints, and reading them without an engine or ranks.

One step-folder name for checkpoints and eval artefacts alike (``tag_for``): ``checkpoints/step_00000040``
and ``eval/step_00000040``. Eval folders of older runs, named with 6 digits, are still found.

``rm_ds.train.checkpoint`` writes and restores checkpoints through the DeepSpeed engine; this module only
names and reads them, so export and scoring need no engine (deepspeed's ``zero_to_fp32`` is imported
inside ``consolidated_state_dict``, only when a ZeRO-sharded checkpoint is consolidated).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
LATEST = "latest"
PARTIAL = ".partial-"
"""Prefix of the directory a checkpoint is written into before it is complete."""
OLD = ".replaced-"
"""Prefix a complete tag is renamed to for the moment its fresh copy takes its name."""


def tag_for(step: int) -> str:
    """The folder name of a step: ``step_00000040``."""
    return f"step_{step:08d}"


def eval_subdir(step: int) -> str:
    """Where a run directory keeps the eval artefacts of ``step``: ``eval/step_00000040``."""
    return f"eval/{tag_for(step)}"


def find_eval_dir(run_dir: str | Path, step: int) -> Path | None:
    """The eval folder of ``step`` in ``run_dir`` (or its older 6-digit name ``eval/step_000040``), or None."""
    for d in (Path(run_dir) / eval_subdir(step), Path(run_dir) / "eval" / f"step_{step:06d}"):
        if d.is_dir():
            return d
    return None


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_tags(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("step_*") if (p / COMPLETE).exists())


def read_state(root: Path, tag: str) -> dict:
    """The run state saved with a complete checkpoint (step, sampler, stopper, world size, config hash)."""
    return json.loads((Path(root) / tag / COMPLETE).read_text())


def find_resume(resume: str, run_dir: str | Path) -> tuple[Path, str] | None:
    """The checkpoint ``resume`` (none | auto | a checkpoint dir) asks for: (root, tag), or None to start fresh."""
    if resume == "none":
        return None
    if resume != "auto":
        p = Path(resume)
        if not (p / COMPLETE).exists():
            raise FileNotFoundError(f"resume: {p} is not a complete rm_ds checkpoint (no {COMPLETE} file)")
        return p.parent, p.name
    root = checkpoint_root(run_dir)
    tags = complete_tags(root) if root.is_dir() else []
    if not tags:
        return None
    latest = (root / LATEST).read_text().strip() if (root / LATEST).exists() else None
    if latest in tags:
        return root, latest
    log.warning("resume: %s names no complete checkpoint; using %s", root / LATEST, tags[-1])
    return root, tags[-1]


def consolidated_state_dict(ckpt_dir: str, tag: str) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a (possibly ZeRO-sharded) checkpoint, in one process, no ranks needed."""
    d = Path(ckpt_dir) / tag
    if any(d.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    else:  # ZeRO-0: the module states file holds the full weights
        files = sorted(d.glob("mp_rank_*_model_states.pt"))
        if not files:
            raise FileNotFoundError(f"{d}: no DeepSpeed model states file")
        sd = torch.load(files[0], map_location="cpu", weights_only=True)["module"]  # plain tensors and containers
    return {k: v.float() for k, v in sd.items()}
