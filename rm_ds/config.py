"""One typed config tree for rm_ds: dataclasses, loaded from YAML, overridden as ``key.sub=value``.

Usage::

    cfg = load_config("rm_ds/configs/default.yaml", ["train.lr=1e-5", "deepspeed.config=zero3"])
    cfg.train.lr              # 1e-05, typed and validated
    save_config(cfg, run_dir / "config.yaml")   # the resolved tree, written with the run

Every field has a one-line docstring under it. Validation happens on load and names the key
(``train.lr: expected a float, got 'fast'``). Derived numbers (the DeepSpeed JSON with its batch
and accumulation figures) are computed here, not in the training loop.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rm_ds.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIGS_DIR = PACKAGE_DIR / "configs"
# ds_configs/ sits at the repo root (fixed layout); an installed wheel carries a copy in the package.
DS_CONFIGS_DIRS = (PACKAGE_DIR.parent / "ds_configs", PACKAGE_DIR / "ds_configs")


@dataclass
class ModelConfig:
    name_or_path: str = "builtin:minilm"
    """Backbone: a local HF folder, a hub name (online only) or builtin:minilm|smollm2|tiny-llama."""
    dtype: Literal["fp32", "bf16", "bf16-mixed"] = "fp32"
    """Training precision. bf16: DeepSpeed's bf16 path (bf16 weights and activations, fp32 master weights).
    bf16-mixed: fp32 weights, training forwards under torch.autocast(bf16) (matmuls in bf16, norms and softmax
    in fp32), evaluation in fp32 so the exported model reproduces the eval scores."""
    attn_implementation: str = "sdpa"
    """transformers attention implementation (sdpa, eager, ...)."""
    pad_token: str | None = None
    """Override the tokenizer's pad token (must exist in the vocabulary and differ from eos)."""
    allow_pad_eq_eos: bool = False
    """Accept pad == eos on a last-token-pooling model although the pooled token is then ambiguous."""
    dropout: float | None = 0.0
    """Set every dropout probability in the backbone config to this value (None keeps the model's; 0 measured best)."""
    activation_checkpointing: bool = False
    """Recompute activations in backward (transformers' activation checkpointing, non-reentrant)."""
    objectives: tuple[str, ...] = ()
    """Names of several objectives (e.g. [helpful, harmless]): a head with one output each; () = one reward."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model folder or hub repo (transformers' trust_remote_code); off by default."""


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters (PEFT) instead of all weights; the reward head is always fully trainable."""
    r: int = 8
    """LoRA rank."""
    alpha: float = 16.0
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: tuple[str, ...] | None = None
    """Module names to adapt; None picks them by model family (Llama: q/k/v/o and gate/up/down)."""
    head_lr: float | None = None
    """Learning rate of the reward head (None: train.lr)."""
    export: Literal["merged", "adapter"] = "merged"
    """Export LoRA merged into the base weights (loads with plain transformers) or as a PEFT adapter."""


@dataclass
class DataConfig:
    train_path: str = "builtin:wordnet/train"
    """Training pairs: .jsonl/.json/.parquet file, hub dataset name, or builtin:wordnet/train."""
    eval_path: str | None = "builtin:wordnet/eval"
    """Held-out pairs, same forms as train_path; None disables evaluation."""
    train_split: str = "train"
    """Split name for hub datasets (ignored for local files)."""
    eval_split: str = "test"
    """Split name for hub datasets (ignored for local files)."""
    prompt_field: str = "prompt"
    """Column holding the prompt (string or message list); may be absent for chat data."""
    chosen_field: str = "chosen"
    """Column holding the preferred response (string or message list)."""
    rejected_field: str = "rejected"
    """Column holding the dispreferred response (string or message list)."""
    id_field: str | None = "id"
    """Column with a stable pair id (rows are numbered when absent)."""
    margin_field: str | None = None
    """Column with a per-pair margin subtracted inside the sigmoid."""
    weight_field: str | None = None
    """Column with a per-pair loss weight."""
    source_field: str | None = "source"
    """Column naming the pair's source/domain, for per-source metrics."""
    skip_invalid: bool = False
    """Drop and count invalid rows instead of stopping with an error."""
    max_train_pairs: int | None = None
    """Keep only the first N valid training pairs."""
    max_eval_pairs: int | None = None
    """Keep only the first N valid eval pairs."""
    max_length: int = 256
    """Token cap per sequence (prompt + response); the prompt is cut from the left first."""
    overlong: Literal["truncate", "drop"] = "truncate"
    """When the response alone exceeds max_length: cut it (keeping eos last) or drop the pair."""
    chat_template: bool = False
    """Render text pairs through the tokenizer's chat template (chat-format data always is)."""
    response_separator: str = "\n"
    """Text placed before the response when no chat template is used."""
    num_proc: int = 1
    """Worker processes for tokenisation (datasets.map)."""
    cache_dir: str | None = None
    """Folder for the tokenised-data cache (None: <rm_ds_home>/cache/tokenized)."""
    prefix_sharing: bool = False
    """Score each pair as one row [prompt|chosen|rejected] with a block mask (last-token decoder models only)."""
    packing: bool = False
    """Pack several pairs into one row with no padding; train.token_budget then caps the row's real tokens."""
    format: Literal["auto", "pairs", "hh", "shp", "ultrafeedback", "helpsteer", "scored"] = "auto"
    """Input shape (rm_ds/data/formats.py): auto detects it from the columns; the choice is logged and kept."""
    pref_field: str | None = None
    """pairs: column with a preference probability p in [0, 1] (1 = chosen preferred, 0.5 = tie)."""
    objectives_field: str = "objectives"
    """With model.objectives: column {objective: p in [0, 1] or null}; a missing objective is unlabelled."""
    ties: Literal["skip", "train"] = "skip"
    """Tied pairs (equal ratings/rewards): skip them (counted) or train on them with p = 0.5."""
    tie_eps: float = 0.0
    """Two ratings or rewards within this distance are a tie."""
    pairing: Literal["best_vs_worst", "best_vs_random", "all_pairs"] = "best_vs_worst"
    """Pairs from several rated responses per prompt (UltraFeedback raw, HelpSteer ratings, scored)."""
    pairing_seed: int = 0
    """Seed of best_vs_random's draw (per prompt, independent of row order)."""
    min_score_ratio: float | None = None
    """SHP: drop pairs whose score ratio is below this (counted); the SHP authors train on >= 2."""
    ultrafeedback_score: Literal["overall", "fine_grained"] = "overall"
    """UltraFeedback raw: rank completions by overall_score or fine-grained_score (mean rating)."""
    helpsteer_attribute: str = "helpfulness"
    """HelpSteer per-response ratings: the attribute whose rating orders responses to one prompt."""
    strength: Literal["hard", "p", "margin"] = "p"
    """HelpSteer preference strength s of max S: hard (p = 1), p (p = 0.5 + s / 2S) or margin (margin = s)."""


@dataclass
class TrainConfig:
    seed: int = 42
    """Seed for model init, sampler order and dropout."""
    epochs: int = 1
    """Passes over the training pairs (max_steps wins if set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps."""
    global_batch_pairs: int = 32
    """Preference pairs per optimizer step, over all ranks and micro-steps."""
    micro_batching: Literal["token_budget", "fixed"] = "token_budget"
    """token_budget: pack pairs while pairs x padded length <= token_budget; fixed: pairs_per_micro."""
    token_budget: int = 4096
    """Per micro-batch budget in pair-tokens (pairs x padded length); must be >= data.max_length."""
    pairs_per_micro: int = 8
    """Pairs per micro-batch in fixed mode."""
    length_grouping: bool = True
    """Group pairs of similar length into the same global batch to cut padding."""
    drop_last: bool = False
    """Drop the final partial global batch of each epoch (default keeps every pair)."""
    lr: float = 5e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Schedule after warmup (transformers.get_scheduler)."""
    warmup_ratio: float = 0.05
    """Fraction of total steps spent in linear warmup."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    save_every_steps: int = 0
    """Write a DeepSpeed checkpoint every N optimizer steps (0: only the final one)."""
    keep_checkpoints: int = 2
    """Checkpoints kept besides the best one (older ones are deleted)."""
    export: bool = True
    """At the end, export the final and the best step as Hugging Face folders under run_dir/export/."""


LABEL_SMOOTHING_MAX = 0.5
"""Label smoothing is a flip probability below 1/2 (at 1/2 a label says nothing; above it, the opposite)."""


def check_label_smoothing(value: float, *, key: str = "loss.label_smoothing") -> None:
    """The one bounds rule for label smoothing, shared by the config and ``train.loss``; ``eval.metrics`` (pure,
    calling nothing of the config) checks the same ``LABEL_SMOOTHING_MAX`` inline."""
    if not 0.0 <= value < LABEL_SMOOTHING_MAX:
        raise ConfigError(f"{key}: must be in [0, {LABEL_SMOOTHING_MAX}), got {value}")


@dataclass
class LossConfig:
    beta: float = 1.0
    """Scale on the reward difference inside the sigmoid."""
    label_smoothing: float = 0.0
    """Probability that a label is flipped (conservative BT loss)."""
    reward_l2: float = 0.0
    """Reward-magnitude regulariser lambda: adds lambda*(r_c^2 + r_r^2)/2 per pair."""


@dataclass
class DeepSpeedConfig:
    config: str = "zero2"
    """A name in ds_configs/ (zero0, zero2, zero3, zero3_offload) or a path to a JSON file."""


@dataclass
class EvalConfig:
    every_steps: int = 0
    """Evaluate every N optimizer steps (0: only at the end)."""
    token_budget: int | None = None
    """Eval micro-batch budget in pair-tokens (defaults to train.token_budget, in either micro_batching mode)."""
    thresholds: tuple[float, ...] = (0.0,)
    """Reward thresholds at which TPR/FPR/FNR are reported."""
    ece_bins: int = 10
    """Equal-width bins for ECE."""
    metric: str = "accuracy"
    """Eval metric that selects the best step and drives early stopping."""
    mode: Literal["min", "max"] = "max"
    """Whether larger (max) or smaller (min) values of eval.metric are better."""
    patience: int = 0
    """Stop training after this many evals without improvement (0: no early stopping)."""
    min_delta: float = 0.0
    """Smallest change of eval.metric that counts as an improvement."""
    save_scores: bool = True
    """Write per-pair scores, histograms, reliability diagram and calibration for every eval."""


@dataclass
class LoggingConfig:
    run_dir: str = "runs/default"
    """Directory for config.yaml, metrics.jsonl and TensorBoard events."""
    log_every: int = 1
    """Write training scalars every N optimizer steps."""
    tensorboard: bool = True
    """Write TensorBoard events under run_dir/tb."""
    progress: bool = True
    """Show a progress bar on rank 0."""


@dataclass
class DistSection:
    timeout_s: float = 600.0
    """Seconds a collective waits for the other ranks before the run fails saying a rank stopped responding."""
    wait_timeout_s: float = 14400.0
    """Seconds the other ranks wait while rank 0 works alone (filling the tokenised cache, exporting)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The reward model backbone."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (off by default: full fine-tuning)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Preference data and tokenisation."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Batching, optimizer and schedule."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Bradley-Terry loss options."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """DeepSpeed engine settings."""
    dist: DistSection = field(default_factory=DistSection)
    """Process-group timeouts (stuck or dead ranks)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation schedule and metrics."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Where and how often to log."""
    resume: str = "none"
    """none: fresh start; auto: the latest complete checkpoint in run_dir (fresh if none); or a checkpoint dir."""
    resume_override: tuple[str, ...] = ()
    """Keys (e.g. [train.lr]) that may differ from the checkpoint's run on resume; recorded in run_dir."""

    def __post_init__(self) -> None:
        validate(self)


# --------------------------------------------------------------------------- validation


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


SEED_MAX = 2**32 - 1
"""NumPy's legacy seeding (``np.random.seed``) takes 0 .. 2**32 - 1."""
EVAL_METRICS = ("accuracy", "auc", "loss", "n_pairs", "margin_mean", "margin_std", "margin_p5", "margin_p25",
                "margin_p50", "margin_p75", "margin_p95", "neg_margin_rate", "ece", "brier", "nll", "ece_calibrated",
                "brier_calibrated", "nll_calibrated", "reward_mean", "reward_std", "temperature", "tie_rate",
                "n_untied", "len_corr_chosen", "len_corr_all", "len_corr_margin")
"""The eval metric names (``rm_ds.eval.metrics.pairwise_metrics`` plus the fitted temperature); besides
these, ``tpr@T``/``fpr@T``/``fnr@T`` for T in eval.thresholds, ``accuracy/<source>``, ``n_pairs/<source>``
and, with model.objectives, ``<objective>/<name>``. Which of them an eval set yields (per source, soft
labels) is checked against the loaded eval data before training (``rm_ds.train.recipe``)."""


def eval_metric_problem(metric: str, *, thresholds: tuple[float, ...], objectives: tuple[str, ...]) -> str | None:
    """Why ``metric`` names no eval metric (None when it can): the rule ``eval.metric`` is checked with at load."""
    name = metric
    head, sep, tail = metric.partition("/")
    if sep and head in objectives:
        name = tail
        head, sep, tail = name.partition("/")
    if sep and head in ("accuracy", "n_pairs") and tail:
        return None  # per source: whether that source exists is known once the eval data is loaded
    rates = {f"{k}@{t:g}" for k in ("tpr", "fpr", "fnr") for t in thresholds}
    if name in EVAL_METRICS or name in rates:
        return None
    known = [*EVAL_METRICS, *sorted(rates), "accuracy/<source>", "n_pairs/<source>",
             *([f"<objective>/<metric> for objective in {list(objectives)}"] if objectives else [])]
    return f"{metric!r} is not an eval metric (known: {', '.join(known)})"


def _check_resume(cfg: Config) -> None:
    """``resume`` is none, auto, or a complete checkpoint folder that exists now (not at the end of set-up)."""
    r = cfg.resume
    if r in ("none", "auto"):
        return
    _check(r.strip() != "", "resume", "is empty; give none, auto or a checkpoint folder (checkpoints/step_NNNNNNNN)")
    p = Path(r)
    _check(p.is_dir(), "resume", f"{r!r} is neither none, auto nor an existing checkpoint folder "
                                 f"(e.g. runs/x/checkpoints/step_00000040)")
    _check((p / "COMPLETE").is_file(), "resume",
           f"{r!r} is not a complete rm_ds checkpoint (no COMPLETE file: a save cut short, or not a checkpoint "
           f"folder); give a checkpoints/step_NNNNNNNN folder, or resume=auto")


def validate(cfg: Config) -> None:
    """Cross-field checks; each failure names the key."""
    t, d = cfg.train, cfg.data
    _check(d.train_path.strip() != "", "data.train_path", "is empty")
    _check(d.eval_path is None or d.eval_path.strip() != "", "data.eval_path",
           "is empty (an unset variable?); give a path, or null to train without evaluation")
    _check(cfg.model.name_or_path.strip() != "", "model.name_or_path", "is empty")
    _check(cfg.logging.run_dir.strip() != "", "logging.run_dir",
           "is empty (an unset variable?): the run would write into the current directory; give a folder")
    _check(d.max_train_pairs is None or d.max_train_pairs >= 1, "data.max_train_pairs",
           f"must be >= 1 or null (null: every pair), got {d.max_train_pairs}")
    _check(d.max_eval_pairs is None or d.max_eval_pairs >= 1, "data.max_eval_pairs",
           f"must be >= 1 or null (null: every pair), got {d.max_eval_pairs}")
    _check(0 <= t.seed <= SEED_MAX, "train.seed", f"must be in [0, 2**32 - 1], got {t.seed}")
    _check(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    for i, b in enumerate(t.adam_betas):
        _check(0 <= b < 1, f"train.adam_betas[{i}]", f"must be in [0, 1), got {b}")
    _check(t.adam_eps > 0, "train.adam_eps", f"must be > 0, got {t.adam_eps}")
    _check(cfg.eval.min_delta >= 0, "eval.min_delta", f"must be >= 0, got {cfg.eval.min_delta}")
    _check(cfg.lora.alpha > 0, "lora.alpha", f"must be > 0, got {cfg.lora.alpha}")
    _check(0 <= cfg.lora.dropout < 1, "lora.dropout", f"must be in [0, 1), got {cfg.lora.dropout}")
    _check(cfg.lora.target_modules is None or len(cfg.lora.target_modules) >= 1, "lora.target_modules",
           "is an empty list; give module names, or null to pick them by model family")
    problem = eval_metric_problem(cfg.eval.metric, thresholds=cfg.eval.thresholds, objectives=cfg.model.objectives)
    _check(problem is None, "eval.metric", problem or "")
    if cfg.eval.patience > 0:
        _check(d.eval_path is not None, "eval.patience",
               f"{cfg.eval.patience} asks for early stopping, which needs eval data, and data.eval_path is null; "
               f"set data.eval_path, or eval.patience=0")
        _check(cfg.eval.every_steps > 0, "eval.patience",
               f"{cfg.eval.patience} asks for early stopping, but eval.every_steps=0 evaluates only at the end; "
               f"set eval.every_steps, or eval.patience=0")
    _check_resume(cfg)
    _check(t.global_batch_pairs >= 1, "train.global_batch_pairs", "must be >= 1")
    _check(t.epochs >= 1, "train.epochs", "must be >= 1")
    _check(t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be >= 1 or null")
    _check(d.max_length >= 8, "data.max_length", "must be >= 8")
    if t.micro_batching == "token_budget":
        _check(t.token_budget >= d.max_length, "train.token_budget",
               f"{t.token_budget} is smaller than data.max_length={d.max_length}: a single pair would not fit")
    _check(t.pairs_per_micro >= 1, "train.pairs_per_micro", "must be >= 1")
    _check(t.lr > 0, "train.lr", "must be > 0")
    _check(0 <= t.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)")
    _check(t.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0")
    _check(cfg.loss.beta > 0, "loss.beta", "must be > 0")
    check_label_smoothing(cfg.loss.label_smoothing)
    _check(cfg.loss.reward_l2 >= 0, "loss.reward_l2", "must be >= 0")
    _check(cfg.model.dropout is None or 0 <= cfg.model.dropout < 1, "model.dropout", "must be in [0, 1) or null")
    _check(cfg.eval.every_steps >= 0, "eval.every_steps", "must be >= 0")
    _check(cfg.eval.ece_bins >= 1, "eval.ece_bins", "must be >= 1")
    _check(cfg.eval.patience >= 0, "eval.patience", "must be >= 0")
    _check(cfg.logging.log_every >= 1, "logging.log_every", "must be >= 1")
    _check(cfg.dist.timeout_s > 0, "dist.timeout_s", "must be > 0")
    _check(cfg.dist.wait_timeout_s >= cfg.dist.timeout_s, "dist.wait_timeout_s", "must be >= dist.timeout_s")
    _check(t.save_every_steps >= 0, "train.save_every_steps", "must be >= 0")
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
    _check(cfg.lora.r >= 1, "lora.r", "must be >= 1")
    _check(cfg.lora.head_lr is None or cfg.lora.head_lr > 0, "lora.head_lr", "must be > 0 or null")
    _check(d.num_proc >= 1, "data.num_proc", "must be >= 1")
    _check(d.tie_eps >= 0, "data.tie_eps", "must be >= 0")
    objs = cfg.model.objectives
    _check(all(isinstance(o, str) and o.strip() and "/" not in o for o in objs), "model.objectives",
           "names must be non-empty strings without '/'")
    _check(len(set(objs)) == len(objs), "model.objectives", f"names must be unique, got {list(objs)}")
    _check(len(objs) != 1, "model.objectives", "give two or more names, or none for a single reward")
    _check(d.min_score_ratio is None or d.min_score_ratio >= 1, "data.min_score_ratio", "must be >= 1 or null")
    if d.prefix_sharing or d.packing:  # rows hold both responses of a pair: up to 2 x max_length real tokens
        _check(cfg.model.attn_implementation in ("sdpa", "eager"), "model.attn_implementation",
               "data.prefix_sharing/packing pass a 4-D block mask, which needs sdpa or eager")
    _check_budgets(cfg)
    for i, key in enumerate(cfg.resume_override):
        _check(key in flat_keys(cfg), f"resume_override[{i}]", f"{key!r} is not a config key")
    resolve_ds_config_path(cfg.deepspeed.config)  # raises ConfigError naming deepspeed.config


def pair_token_cap(cfg: Config) -> int:
    """The most budget tokens one pair can cost: data.max_length, or twice that when a pair's two
    responses share one row (data.prefix_sharing / data.packing)."""
    return (2 if cfg.data.prefix_sharing or cfg.data.packing else 1) * cfg.data.max_length


def eval_token_budget(cfg: Config) -> int:
    """The eval micro-batch budget in pair-tokens: eval.token_budget, else train.token_budget (in
    either train.micro_batching mode)."""
    return cfg.eval.token_budget if cfg.eval.token_budget is not None else cfg.train.token_budget


def _check_budgets(cfg: Config) -> None:
    """Every per-micro-batch budget the run will use must hold its longest possible pair, so that a
    wrong budget fails here and not at the first eval, hours in."""
    t, d, cap = cfg.train, cfg.data, pair_token_cap(cfg)
    rows = (f"with data.prefix_sharing/packing a pair's row holds both responses: up to 2 x data.max_length = "
            f"{cap} tokens" if cap != d.max_length else f"a pair can be data.max_length = {cap} tokens long")
    if t.micro_batching == "token_budget":
        _check(t.token_budget >= cap, "train.token_budget",
               f"{t.token_budget} is too small: {rows}, so a single pair would not fit; raise train.token_budget "
               f"to >= {cap} or lower data.max_length")
    if d.eval_path is not None:
        budget = eval_token_budget(cfg)
        origin = ("" if cfg.eval.token_budget is not None else
                  f" (eval.token_budget is unset, so it is train.token_budget = {budget}, which "
                  f"train.micro_batching={t.micro_batching} {'does not use' if t.micro_batching == 'fixed' else 'uses'}"
                  f" for training)")
        hint = f"set eval.token_budget >= {cap}"
        if t.micro_batching == "fixed":
            hint += f", e.g. train.pairs_per_micro x {cap} = {t.pairs_per_micro * cap} to match training"
        _check(budget >= cap, "eval.token_budget",
               f"the eval budget {budget}{origin} is too small: {rows}, so evaluation would fail on the first "
               f"long pair; {hint}, or lower data.max_length")


def check_train_plan(cfg: Config, *, n_train_pairs: int) -> None:
    """Checks that need the number of training pairs (known once the data is loaded); names the keys."""
    t = cfg.train
    if t.drop_last and n_train_pairs < t.global_batch_pairs:
        raise ConfigError(
            f"train.drop_last: true drops the final partial global batch, and the {n_train_pairs} training pairs "
            f"(data.train_path={cfg.data.train_path!r}, data.max_train_pairs={cfg.data.max_train_pairs}) are fewer "
            f"than one global batch (train.global_batch_pairs={t.global_batch_pairs}), so an epoch would have no "
            f"steps; set train.drop_last=false, lower train.global_batch_pairs, or add pairs")


# --------------------------------------------------------------------------- typed construction


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        _check(value in choices, key, f"expected one of {list(choices)}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        _check(isinstance(value, (list, tuple)), key, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        _check(len(value) == len(args), key, f"expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), key, f"expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if tp is bool:
        _check(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"expected a number, got {value!r}")
        _check(math.isfinite(value), key, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"{key}: unknown key (valid: {', '.join(sorted(names))})")
        kwargs[k] = _coerce(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """``["train.lr=1e-5", "data.eval_path=null"]`` -> nested dict; values are parsed as YAML scalars."""
    tree: dict = {}
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key.sub=value")
        key, raw = ov.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"override {ov!r}: empty key")
        _set_dotted(tree, key, yaml.safe_load(raw) if raw != "" else "")
    return tree


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a shipped config (``default``, ``smollm2``, ``tiny``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = CONFIGS_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"config: no file {str(name_or_path)!r} and no shipped config of that name "
                      f"(shipped: {', '.join(sorted(q.stem for q in CONFIGS_DIR.glob('*.yaml')))})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML (or defaults when ``path`` is None), apply overrides, validate, return the tree."""
    data: dict = {}
    if path is not None:
        p = resolve_config_path(path)
        with open(p) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        data = loaded
    data = _merge(data, parse_overrides(overrides or []))
    return _build(Config, data)


def config_to_dict(cfg: Config) -> dict:
    def conv(x: Any) -> Any:
        if isinstance(x, tuple):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        return x
    return conv(dataclasses.asdict(cfg))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-5}}`` -> ``{"train.lr": 1e-5}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def flat_keys(cfg: Config) -> set[str]:
    return set(flatten(config_to_dict(cfg)))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)


# --------------------------------------------------------------------------- DeepSpeed JSON


def resolve_ds_config_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".json" and p.is_file():
        return p
    for d in DS_CONFIGS_DIRS:
        q = d / f"{name_or_path}.json"
        if q.is_file():
            return q
    shipped = sorted({q.stem for d in DS_CONFIGS_DIRS if d.is_dir() for q in d.glob("*.json")})
    raise ConfigError(f"deepspeed.config: {name_or_path!r} is neither a JSON file nor one of {shipped}")
