"""Export a checkpoint as a Hugging Face folder that loads without rm_ds.

    rm-ds export --run-dir runs/default [--step final|best|latest|step_00000040] [--out DIR] [--adapter]

The weights are consolidated from the DeepSpeed checkpoint in one process (ZeRO-2/3 shards are
merged by DeepSpeed's zero_to_fp32), rebuilt on CPU as an ``AutoModelForSequenceClassification``
with one label, LoRA merged into the base weights (or kept as a PEFT adapter that also carries the
reward head), and saved as safetensors with the tokenizer (pad token and chat template included).
The config gains ``rm_ds_calibration``: reward mean/std and the fitted temperature, with the eval
set's sha256, pair count and step they came from::

    cfg = AutoConfig.from_pretrained(folder)
    r = (model(**batch).logits[:, 0] - cfg.rm_ds_calibration["reward_mean"]) / cfg.rm_ds_calibration["reward_std"]
    p_chosen_better = sigmoid(beta * (r_c - r_r) / cfg.rm_ds_calibration["temperature"])   # raw rewards
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from rm_ds.train.checkpoint_files import (checkpoint_root, complete_tags, consolidated_state_dict, find_eval_dir,
                                          read_state, tag_for)
from rm_ds.config import Config, load_config
from rm_ds.model import apply_lora, head_name, load_model_config, load_tokenizer, pad_token_for
from rm_ds.input_recipe import write_recipe
from rm_ds.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_step(run_dir: Path, step: str) -> str:
    """``final``/``latest`` -> newest complete checkpoint, ``best`` -> best.json's step, or a tag."""
    root = checkpoint_root(run_dir)
    tags = complete_tags(root) if root.is_dir() else []
    if not tags:
        raise ConfigError(f"--run-dir {root}: no complete checkpoint to export")
    if step in ("final", "latest"):
        return tags[-1]
    if step == "best":
        best = run_dir / "best.json"
        if not best.exists():
            raise ConfigError(f"--step best: {best}: no best step recorded (was evaluation enabled?)")
        tag = tag_for(json.loads(best.read_text())["step"])
    else:
        tag = step
    if tag not in tags:
        raise ConfigError(f"--step: {root / tag}: no complete checkpoint (have: {', '.join(tags)})")
    return tag


def calibration_for(run_dir: Path, step: int) -> dict | None:
    d = find_eval_dir(run_dir, step)
    p = d / "calibration.json" if d is not None else None
    return json.loads(p.read_text()) if p is not None and p.exists() else None


def build_cpu_model(cfg: Config, state_dict: dict[str, torch.Tensor], tokenizer):
    """The trained model on CPU (PEFT-wrapped when LoRA was used), weights loaded strictly."""
    pad = pad_token_for(tokenizer, cfg.model)
    mc = load_model_config(cfg.model, pad_token_id=pad)
    model = AutoModelForSequenceClassification.from_config(mc, dtype=torch.float32)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    # tied weights (e.g. an lm_head tied to embeddings) may be absent from the checkpoint
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def export_run(run_dir: str | Path, *, step: str = "final", out: str | Path | None = None,
               adapter: bool | None = None) -> Path:
    run_dir = Path(run_dir)
    # where the run resumed from does not matter here (and may have been pruned since)
    cfg = load_config(run_dir / "config.yaml", ["resume=none"])
    tag = resolve_step(run_dir, step)
    out = Path(out) if out else run_dir / "export" / step
    adapter = (cfg.lora.export == "adapter") if adapter is None else adapter
    if _link_existing_export(run_dir / "export", tag, out, adapter=bool(cfg.lora.enabled and adapter)):
        log.info("exported %s (%s) to %s: the same checkpoint as an earlier export, files hard-linked", run_dir, tag,
                 out)
        return out
    state = read_state(checkpoint_root(run_dir), tag)
    sd = consolidated_state_dict(str(checkpoint_root(run_dir)), tag)
    tokenizer = load_tokenizer(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    model = build_cpu_model(cfg, sd, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    calibration = calibration_for(run_dir, state["step"])
    meta = {"source_run": str(run_dir.resolve()), "checkpoint": tag, "step": state["step"]}
    if cfg.lora.enabled and adapter:
        save_adapter_with_head(model, out)
        base_cfg = model.get_base_model().config
    else:
        if cfg.lora.enabled:
            model = model.merge_and_unload()
        model.config.rm_ds_calibration = {**(calibration or {}), **meta}
        model.save_pretrained(out, safe_serialization=True)
        base_cfg = model.config
    tokenizer.save_pretrained(out)
    write_recipe(out, cfg, tokenizer)  # how the trainer built inputs (input_recipe), read back by serve.scorer
    (out / "rm_ds_export.json").write_text(json.dumps({**meta, "calibration": calibration,
                                                       "adapter": bool(cfg.lora.enabled and adapter),
                                                       "base_model": cfg.model.name_or_path,
                                                       "model_type": base_cfg.model_type}, indent=1))
    log.info("exported %s (%s) to %s", run_dir, tag, out)
    return out


def _link_existing_export(export_root: Path, tag: str, out: Path, *, adapter: bool) -> bool:
    """When another folder under ``export_root`` already holds the same kind of export (``adapter`` or
    merged) of checkpoint ``tag`` (the best step is often the final one), hard-link its files into ``out``
    (copy where links fail) instead of consolidating the checkpoint again. Returns whether it did."""
    import shutil

    if not export_root.is_dir():
        return False
    for other in sorted(export_root.iterdir()):
        meta = other / "rm_ds_export.json"
        if other.resolve() == out.resolve() or not meta.is_file():
            continue
        done = json.loads(meta.read_text())
        if done.get("checkpoint") != tag or bool(done.get("adapter")) != adapter:
            continue
        out.mkdir(parents=True, exist_ok=True)
        for f in other.iterdir():
            if f.is_file():
                target = out / f.name
                target.unlink(missing_ok=True)
                try:
                    os.link(f, target)
                except OSError:
                    shutil.copy2(f, target)
        return True
    return False


def save_adapter_with_head(peft_model, out: Path) -> None:
    """A PEFT adapter folder whose ``modules_to_save`` carries the trained reward head.

    Load with ``PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base,
    num_labels=1), out)``. The head is copied into a fresh CPU wrapper here (no ZeRO involved).
    """
    from peft import LoraConfig, get_peft_model

    base = peft_model.get_base_model()
    head = head_name(base)
    head_state = {k: v.detach().clone() for k, v in getattr(base, head).state_dict().items()}
    lora_state = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
    old = peft_model.peft_config["default"]
    fresh = peft_model.unload()  # the base model without adapters (weights untouched)
    wrapped = get_peft_model(fresh, LoraConfig(r=old.r, lora_alpha=old.lora_alpha, lora_dropout=old.lora_dropout,
                                               target_modules=old.target_modules, bias="none",
                                               modules_to_save=[head]))
    _, unexpected = wrapped.load_state_dict(lora_state, strict=False)
    if unexpected:
        raise RuntimeError(f"adapter export: LoRA weights without a place in the adapter: {unexpected[:5]}")
    getattr(wrapped.get_base_model(), head).modules_to_save["default"].load_state_dict(head_state)
    wrapped.save_pretrained(out, safe_serialization=True)


@dataclass(frozen=True)
class ExportOptions:
    """``rm-ds export``'s command line (``rm_ds.cli``)."""

    run_dir: str
    step: str = "final"
    out: str | None = None
    adapter: bool = False


def main(opts: ExportOptions) -> int:
    """The ``rm-ds export`` entry: prints the exported folder."""
    print(export_run(opts.run_dir, step=opts.step, out=opts.out, adapter=True if opts.adapter else None))
    return 0
