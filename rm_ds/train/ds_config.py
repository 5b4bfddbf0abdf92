"""The DeepSpeed JSON of a run: ``ds_configs/<name>.json`` (``deepspeed.config``) plus the values rm_ds
derives from its own config (batch bookkeeping, clipping, bf16), with no ``auto`` left."""

from __future__ import annotations

import json
import math
from typing import Any

from rm_ds.config import Config, resolve_ds_config_path
from rm_ds.errors import ConfigError

__all__ = ["build_ds_config", "zero_stage"]


def build_ds_config(cfg: Config, *, world_size: int, max_micro_steps: int) -> dict:
    """The DeepSpeed JSON from ``ds_configs/<name>.json`` plus derived values, with no ``auto`` left.

    rm_ds drives accumulation itself (pair-count scaling, boundary set per micro-step), so the batch
    figures here are bookkeeping: ``gradient_accumulation_steps`` is the largest number of micro-steps
    any optimizer step uses (DeepSpeed's CPU-offload path keeps separate accumulation buffers only
    when it is > 1), and ``train_batch_size`` = micro x accumulation x world size as DeepSpeed asserts.
    """
    path = resolve_ds_config_path(cfg.deepspeed.config)
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    gas = max(1, int(max_micro_steps))
    micro = max(1, math.ceil(cfg.train.global_batch_pairs / (world_size * gas)))
    derived = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gas,
        "train_batch_size": micro * gas * world_size,
        "gradient_clipping": cfg.train.max_grad_norm,
    }
    for k, v in derived.items():
        if ds.get(k, "auto") != "auto":
            raise ConfigError(f"{path}: {k} is derived from the rm_ds config; set it to \"auto\" or leave it out")
        ds[k] = v
    bf16 = cfg.model.dtype == "bf16"
    ds.setdefault("bf16", {})
    if ds["bf16"].get("enabled", "auto") == "auto":
        ds["bf16"]["enabled"] = bf16
    if "fp16" in ds and ds["fp16"].get("enabled") not in (False, "auto"):
        raise ConfigError(f"{path}: fp16 is not supported (use model.dtype=bf16)")
    ds.pop("fp16", None)
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    left = _find_auto(ds)
    if left:
        raise ConfigError(f"{path}: unresolved \"auto\" at {', '.join(left)}")
    if zero_stage(ds) == 0 and not ds["bf16"]["enabled"]:
        # rm_ds clips this path itself (engine.train_step): one foreach norm that it keeps, where DeepSpeed's
        # clip would compute its own per-parameter norms again and report none
        ds["gradient_clipping"] = 0.0
    return ds


def _find_auto(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _find_auto(v, f"{prefix}.{key}" if prefix else key)]
    return [prefix] if node == "auto" else []


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))
