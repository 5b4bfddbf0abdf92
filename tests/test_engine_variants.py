"""Engine variants the parity matrix does not cover train end to end on 2 ranks: bf16 (ZeRO-2, and
LoRA under ZeRO-3, where adapters created after zero.Init must share ZeRO's dtype) and ZeRO-3 with
optimizer and parameter offload to CPU through a client AdamW."""

from __future__ import annotations

import math

import pytest

from tests.harness import run_distributed


pytestmark = [pytest.mark.slow, pytest.mark.cluster]  # every test here runs 2 ranks


def run_worker(ovr: list[str]) -> dict:
    from rm_ds.config import load_config
    from rm_ds.train.recipe import run

    return run(load_config("tiny", ovr))


VARIANTS = {
    "bf16-zero2": ["model.dtype=bf16", "deepspeed.config=zero2"],
    "bf16-lora-zero3": ["model.dtype=bf16", "deepspeed.config=zero3", "lora.enabled=true", "lora.r=4",
                        "lora.head_lr=1e-2"],
    "fp32-zero3-offload": ["deepspeed.config=zero3_offload"],
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains_and_evaluates(tmp_path, name):
    ovr = [*VARIANTS[name], f"logging.run_dir={tmp_path / name}", "train.max_steps=4", "eval.every_steps=0",
           "train.export=false"]
    out = run_distributed(run_worker, world_size=2, args=(ovr,))
    assert out[0]["steps"] == 4 and out[0]["pairs"] == 64
    assert math.isfinite(out[0]["eval_loss"]) and out[0]["eval_n_pairs"] == 101
    if "lora" in name:
        assert out[0]["trainable_params"] < out[0]["total_params"] / 20
