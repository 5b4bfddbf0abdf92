"""Config tree: every shipped YAML and DeepSpeed JSON loads; overrides and errors name the key."""

from __future__ import annotations

import json

import pytest

from rm_ds.errors import ConfigError
from rm_ds.train.ds_config import build_ds_config
from rm_ds.config import (CONFIGS_DIR, DS_CONFIGS_DIRS, Config, load_config,
                          parse_overrides, save_config)

SHIPPED_YAML = sorted(CONFIGS_DIR.glob("*.yaml"))
SHIPPED_JSON = sorted(DS_CONFIGS_DIRS[0].glob("*.json"))


def test_something_is_shipped():
    assert {p.stem for p in SHIPPED_YAML} >= {"default", "smollm2", "tiny"}
    assert {p.stem for p in SHIPPED_JSON} >= {"zero0", "zero2", "zero3", "zero3_offload"}


@pytest.mark.parametrize("path", SHIPPED_YAML, ids=lambda p: p.name)
def test_every_shipped_yaml_loads_and_starts_with_its_command(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), f"{path.name} must start with the command that runs it"
    assert "rm_ds" in path.read_text().split("\n\n")[0] or "rm-ds" in path.read_text().split("\n\n")[0]


@pytest.mark.parametrize("path", SHIPPED_JSON, ids=lambda p: p.name)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_every_ds_json_resolves_without_auto(path, dtype):
    cfg = load_config(None, [f"deepspeed.config={path.stem}", f"model.dtype={dtype}", "train.global_batch_pairs=12"])
    ds = build_ds_config(cfg, world_size=3, max_micro_steps=2)
    text = json.dumps(ds)
    assert '"auto"' not in text
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 3
    assert ds["gradient_accumulation_steps"] == 2
    assert ds["bf16"]["enabled"] is (dtype == "bf16")
    rm_ds_clips = ds["zero_optimization"]["stage"] == 0 and dtype == "fp32"  # engine.clips_itself
    assert ds["gradient_clipping"] == (0.0 if rm_ds_clips else cfg.train.max_grad_norm)


def test_overrides_are_typed_and_nested():
    cfg = load_config("default", ["train.lr=1e-5", "data.eval_path=null", "train.adam_betas=[0.8,0.9]",
                                  "model.activation_checkpointing=true", "eval.thresholds=[0, 1.5]"])
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert cfg.data.eval_path is None
    assert cfg.train.adam_betas == (0.8, 0.9)
    assert cfg.model.activation_checkpointing is True
    assert cfg.eval.thresholds == (0.0, 1.5)
    assert parse_overrides(["a.b.c=3"]) == {"a": {"b": {"c": 3}}}


@pytest.mark.parametrize("override,fragment", [
    (["train.lr=fast"], "train.lr: expected a number"),
    (["train.lr=-1"], "train.lr: must be > 0"),
    (["train.epochs=1.5"], "train.epochs: expected an integer"),
    (["train.lrr=1"], "train.lrr: unknown key"),
    (["nope.x=1"], "nope: unknown key"),
    (["model.dtype=fp16"], "model.dtype: expected one of ['fp32', 'bf16', 'bf16-mixed']"),
    (["train.token_budget=16", "data.max_length=64"], "train.token_budget: 16 is smaller than data.max_length=64"),
    (["deepspeed.config=zero9"], "deepspeed.config: 'zero9'"),
    (["train.adam_betas=[0.9]"], "train.adam_betas: expected 2 items"),
    (["loss.label_smoothing=0.7"], "loss.label_smoothing"),
    (["trainlr"], "expected key.sub=value"),
])
def test_errors_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config("default", override)
    assert fragment in str(e.value)


def test_yaml_errors_name_the_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  global_batch_pairs: many\n")
    with pytest.raises(ConfigError, match="train.global_batch_pairs: expected an integer"):
        load_config(p)
    with pytest.raises(ConfigError, match="no file 'missing.yaml'"):
        load_config("missing.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("default", ["train.lr=2e-5", "eval.thresholds=[0.5]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


def test_ds_json_with_a_hand_set_batch_field_is_refused(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({"train_batch_size": 64, "zero_optimization": {"stage": 2}}))
    cfg = load_config(None, [f"deepspeed.config={p}"])
    with pytest.raises(ConfigError, match="train_batch_size is derived"):
        build_ds_config(cfg, world_size=2, max_micro_steps=1)
    p.write_text(json.dumps({"zero_optimization": {"stage": "auto"}}))
    with pytest.raises(ConfigError, match='unresolved "auto" at zero_optimization.stage'):
        build_ds_config(load_config(None, [f"deepspeed.config={p}"]), world_size=2, max_micro_steps=1)


@pytest.mark.parametrize(("overrides", "needle"), [
    # the eval budget defaults to train.token_budget even when fixed micro-batching ignores it for training
    (["train.micro_batching=fixed", "data.max_length=8192"],
     "eval.token_budget: the eval budget 4096 (eval.token_budget is unset, so it is train.token_budget = 4096"),
    (["train.micro_batching=fixed", "data.max_length=8192"], "train.pairs_per_micro x 8192 = 65536"),
    # prefix-shared rows hold both responses: the eval budget must hold 2 x max_length
    (["train.micro_batching=fixed", "data.prefix_sharing=true", "data.max_length=512", "train.token_budget=1000"],
     "eval.token_budget: the eval budget 1000"),
    (["data.packing=true", "data.max_length=512", "train.token_budget=2048", "eval.token_budget=1000"],
     "up to 2 x data.max_length = 1024 tokens"),
    (["data.packing=true", "data.max_length=512", "train.token_budget=1000"], "train.token_budget: 1000 is too small"),
    (["eval.token_budget=0"], "eval.token_budget: the eval budget 0 is too small"),
])
def test_every_budget_is_checked_at_load(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value)


def test_budgets_that_fit_load():
    load_config(None, ["train.micro_batching=fixed", "data.max_length=8192", "data.eval_path=null"])
    load_config(None, ["train.micro_batching=fixed", "data.max_length=8192", "eval.token_budget=65536"])
    load_config(None, ["data.prefix_sharing=true", "data.max_length=512", "train.token_budget=1024"])


def test_drop_last_with_fewer_pairs_than_a_global_batch_names_the_keys():
    from rm_ds.config import check_train_plan

    cfg = load_config(None, ["train.drop_last=true", "train.global_batch_pairs=32", "data.max_train_pairs=5"])
    check_train_plan(cfg, n_train_pairs=32)
    with pytest.raises(ConfigError) as e:
        check_train_plan(cfg, n_train_pairs=5)
    msg = str(e.value)
    assert msg.startswith("train.drop_last: ") and "train.global_batch_pairs=32" in msg and "5 training pairs" in msg
    check_train_plan(load_config(None, ["train.global_batch_pairs=32"]), n_train_pairs=5)  # drop_last=false keeps them


@pytest.mark.parametrize(("overrides", "needle"), [
    (["data.max_train_pairs=0"], "data.max_train_pairs: must be >= 1 or null"),
    (["data.max_train_pairs=-5"], "data.max_train_pairs: must be >= 1 or null"),
    (["data.max_eval_pairs=0"], "data.max_eval_pairs: must be >= 1 or null"),
    (["resume=bogus"], "resume: 'bogus' is neither none, auto nor an existing checkpoint folder"),
    (["resume="], "resume: is empty"),
    (["train.seed=-1"], "train.seed: must be in [0, 2**32 - 1], got -1"),
    (["train.seed=4294967296"], "train.seed: must be in [0, 2**32 - 1]"),
    (["eval.metric=bogus"], "eval.metric: 'bogus' is not an eval metric (known: accuracy, auc, loss"),
    (["eval.metric=tpr@0.5"], "eval.metric: 'tpr@0.5' is not an eval metric"),  # eval.thresholds is [0.0]
    (["eval.metric=helpful/auc"], "eval.metric: 'helpful/auc' is not an eval metric"),  # no such objective
    (["eval.patience=2", "data.eval_path=null"], "eval.patience: 2 asks for early stopping, which needs eval data"),
    (["eval.patience=2", "eval.every_steps=0"], "eval.patience: 2 asks for early stopping, but eval.every_steps=0"),
    (["train.weight_decay=-1"], "train.weight_decay: must be >= 0, got -1.0"),
    (["logging.run_dir="], "logging.run_dir: is empty (an unset variable?)"),
    (['logging.run_dir=" "'], "logging.run_dir: is empty"),
    (["data.eval_path="], "data.eval_path: is empty (an unset variable?)"),
    (["data.train_path="], "data.train_path: is empty"),
    (["model.name_or_path="], "model.name_or_path: is empty"),
    (["train.adam_betas=[0.9,1.0]"], "train.adam_betas[1]: must be in [0, 1), got 1.0"),
    (["train.adam_eps=0"], "train.adam_eps: must be > 0"),
    (["eval.min_delta=-0.1"], "eval.min_delta: must be >= 0"),
    (["lora.alpha=0"], "lora.alpha: must be > 0"),
    (["lora.dropout=1"], "lora.dropout: must be in [0, 1)"),
    (["lora.target_modules=[]"], "lora.target_modules: is an empty list"),
])
def test_every_value_is_checked_at_load(overrides, needle):
    """Values that used to pass and then crash (or do nothing) later, each refused at load naming its key."""
    with pytest.raises(ConfigError) as e:
        load_config("tiny", overrides)
    assert str(e.value).startswith(needle.split(":")[0] + ":") and needle in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_values_at_the_edges_of_their_ranges_load(tmp_path):
    cfg = load_config("tiny", ["data.max_train_pairs=1", "train.seed=0", "train.weight_decay=0", "eval.metric=tpr@0",
                               "eval.metric=accuracy/web", "eval.patience=1", "eval.every_steps=2"])
    assert cfg.eval.metric == "accuracy/web"  # a per-source name: its source is checked once the data is loaded
    cfg = load_config("tiny", ["model.objectives=[helpful,harmless]", "eval.metric=harmless/ece_calibrated",
                               "eval.thresholds=[0.5]", "eval.metric=helpful/fnr@0.5"])
    assert cfg.eval.metric == "helpful/fnr@0.5"
    ckpt = tmp_path / "step_00000004"
    ckpt.mkdir()
    with pytest.raises(ConfigError, match="no COMPLETE file"):
        load_config("tiny", [f"resume={ckpt}"])
    (ckpt / "COMPLETE").write_text("{}\n")
    assert load_config("tiny", [f"resume={ckpt}"]).resume == str(ckpt)


def test_the_metric_names_checked_at_load_cover_every_metric_the_evaluator_writes():
    """EVAL_METRICS is a list kept by hand: every key pairwise_metrics can produce (all options on) must pass."""
    import numpy as np

    from rm_ds.config import eval_metric_problem
    from rm_ds.eval.metrics import pairwise_metrics

    n = 6
    m = pairwise_metrics(np.arange(n, dtype=float), np.zeros(n), thresholds=[0.0, 1.5], temperature=2.0,
                         sources=np.array(["a", "b"] * 3, dtype=object), pref=np.array([1, 0.5, 0.8, 1, 0.2, 1.0]),
                         chosen_len=np.arange(n, dtype=float), rejected_len=np.ones(n))
    for key in [*m, "temperature"]:
        assert eval_metric_problem(key, thresholds=(0.0, 1.5), objectives=()) is None, key
        assert eval_metric_problem(f"helpful/{key}", thresholds=(0.0, 1.5), objectives=("helpful", "x")) is None, key
