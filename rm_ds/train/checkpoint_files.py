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
import zipfile
from pathlib import Path

import torch

from rm_ds.errors import ConfigError

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


def file_manifest(ckpt: Path) -> dict[str, int]:
    """Every file of a checkpoint folder (relative name -> size in bytes), ``COMPLETE`` left out: written
    into ``COMPLETE`` so that a file that later goes missing or is cut short is named on resume."""
    return {str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*"))
            if p.is_file() and p.name != COMPLETE}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def checkpoint_problem(root: Path, tag: str) -> str | None:
    """What makes the complete checkpoint ``root/tag`` unloadable, in one line naming the file; None if
    nothing does. Cheap: sizes against the manifest in ``COMPLETE``, each ``*.pt`` opened as the zip
    archive ``torch.save`` writes (a truncated or overwritten file has no readable central directory),
    and every ``rng_rank*.pt`` loaded in full (``weights_only=True``). Flipped bits inside a large shard
    are not looked for: DeepSpeed's load then fails, and ``restore`` names the checkpoint."""
    ckpt = Path(root) / tag
    try:
        saved = read_state(root, tag)
        world_size = int(saved["world_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{ckpt / COMPLETE}: unreadable ({_first_line(e)})"
    manifest = saved.get("files")  # None: written before checkpoints listed their files
    if manifest is not None:
        for name, size in manifest.items():
            f = ckpt / name
            if not f.is_file():
                return f"{f}: missing"
            if f.stat().st_size != size:
                return f"{f}: {f.stat().st_size} bytes, but {size} were written (cut short or overwritten)"
    else:
        if not any(ckpt.glob("*model_states.pt")):
            return f"{ckpt}: no DeepSpeed model states file (mp_rank_00_model_states.pt) (missing)"
    for r in range(world_size):
        if manifest is not None and not (ckpt / f"rng_rank{r}.pt").is_file():
            return f"{ckpt / f'rng_rank{r}.pt'}: missing"
    for f in sorted(ckpt.glob("*.pt")):
        try:
            with zipfile.ZipFile(f) as z:
                z.namelist()
            if f.name.startswith("rng_rank"):
                rng = torch.load(f, map_location="cpu", weights_only=True)
                if not (isinstance(rng, dict) and {"python", "numpy", "torch"} <= set(rng)):
                    return f"{f}: not an rm_ds RNG state (keys {sorted(rng) if isinstance(rng, dict) else type(rng)})"
        except Exception as e:  # any failure to read the file means the checkpoint is damaged
            return f"{f}: unreadable ({_first_line(e)})"
    return None


def _step_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("step_*") if p.is_dir())


def find_resume(resume: str, run_dir: str | Path) -> tuple[Path, str] | None:
    """The checkpoint ``resume`` (none | auto | a checkpoint dir) asks for: (root, tag), or None to start fresh.

    ``auto`` takes the newest complete checkpoint that ``checkpoint_problem`` finds whole: a damaged one
    is named in one warning and the next older one tried; when checkpoints exist but none can be
    loaded, a ``ConfigError`` says why for each (starting afresh would silently throw the run away).
    An explicit checkpoint that is damaged is refused, naming the file."""
    if resume == "none":
        return None
    if resume != "auto":
        p = Path(resume)
        if not (p / COMPLETE).exists():
            raise ConfigError(f"resume: {p} is not a complete rm_ds checkpoint (no {COMPLETE} file); give a "
                              f"checkpoints/step_NNNNNNNN folder, or resume=auto")
        problem = checkpoint_problem(p.parent, p.name)
        if problem is not None:
            raise ConfigError(f"resume: checkpoint {p} is damaged: {problem}; resume from an older checkpoint "
                              f"folder, or resume=auto to take the newest whole one")
        return p.parent, p.name
    root = checkpoint_root(run_dir)
    dirs = _step_dirs(root) if root.is_dir() else []
    tags = [t for t in dirs if (root / t / COMPLETE).exists()]
    if not tags:
        if dirs:  # step folders but none marked complete: not a checkpoint rm_ds wrote whole
            log.warning("resume: %s holds no complete checkpoint (%s have no %s file); starting afresh", root,
                        ", ".join(dirs), COMPLETE)
        return None
    latest = (root / LATEST).read_text().strip() if (root / LATEST).exists() else None
    if latest is not None and latest not in tags:
        log.warning("resume: %s names no complete checkpoint; using the newest complete one", root / LATEST)
    # ``latest`` first (the newest complete one unless a save was cut short between renaming and moving it)
    order = ([latest] if latest in tags else []) + [t for t in reversed(tags) if t != latest]
    problems = [f"{t} has no {COMPLETE} file (a save cut short, or not written by rm_ds)"
                for t in dirs if t > order[0] and t not in tags]
    for tag in order:
        problem = checkpoint_problem(root, tag)
        if problem is None:
            if problems:
                log.warning("resume=auto: %s is the newest complete checkpoint that loads; resuming from it "
                            "(skipped: %s)", root / tag, "; ".join(problems))
            return root, tag
        log.warning("resume=auto: checkpoint %s is damaged: %s", root / tag, problem)
        problems.append(f"{tag}: {problem}")
    raise ConfigError(f"resume=auto: no checkpoint in {root} can be loaded ({'; '.join(problems)}); restore the "
                      f"files, or start afresh in a new logging.run_dir (or with resume=none)")


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
