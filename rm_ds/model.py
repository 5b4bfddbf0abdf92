"""Tokenizer and reward model: AutoModelForSequenceClassification with one output (the reward).

The reward of a sequence is the model's logit at its pooled token. Decoder models (Llama, Qwen,
SmolLM2, ...) pool at the rightmost token that is not ``pad_token_id``; rm_ds ends every response
with eos, so that token is eos only if pad != eos. ``resolve_pad_token`` enforces this at start-up.
Encoder models (BERT/MiniLM) pool at [CLS] and are unaffected.

This module does not touch deepspeed: for ZeRO-3 the caller builds the model inside its
``HfDeepSpeedConfig`` so transformers creates it partitioned.
"""

from __future__ import annotations

import logging

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from rm_ds.builtin import resolve_model
from rm_ds.config import ModelConfig
from rm_ds.errors import ConfigError

log = logging.getLogger(__name__)


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    """The tokenizer; code shipped with the model runs only with ``trust_remote_code`` (model.trust_remote_code)."""
    return AutoTokenizer.from_pretrained(resolve_model(name_or_path), trust_remote_code=trust_remote_code)


def pools_last_token(model_or_config) -> bool:
    """True for heads that read the last non-pad token (decoder-style ``score`` heads)."""
    cfg = getattr(model_or_config, "config", model_or_config)
    arch = " ".join(getattr(cfg, "architectures", None) or [])
    encoder_types = {"bert", "roberta", "xlm-roberta", "deberta", "deberta-v2", "electra", "distilbert",
                     "albert", "mpnet", "modernbert", "camembert"}
    return getattr(cfg, "model_type", "") not in encoder_types and "Bert" not in arch


def resolve_pad_token(tokenizer, cfg: ModelConfig, *, last_token_pooling: bool) -> int:
    """Set and return the pad id, refusing setups where the pooled token would be ambiguous."""
    from rm_ds.data.tokenize import eos_id

    eos = eos_id(tokenizer)
    if cfg.pad_token is not None:
        pid = tokenizer.convert_tokens_to_ids(cfg.pad_token)
        if pid is None or pid == tokenizer.unk_token_id and cfg.pad_token != tokenizer.unk_token:
            raise ConfigError(f"model.pad_token: {cfg.pad_token!r} is not in the tokenizer's vocabulary")
        tokenizer.pad_token = cfg.pad_token
    elif tokenizer.pad_token_id is None:
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id != eos:
            log.warning("tokenizer has no pad token: using unk %r as pad", tokenizer.unk_token)
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise ConfigError("tokenizer has no pad token and no unk token distinct from eos: "
                             "set model.pad_token to a vocabulary token that differs from eos")
    pad = int(tokenizer.pad_token_id)
    if pad == eos and last_token_pooling:
        msg = (f"pad token {tokenizer.pad_token!r} equals the eos/score token (id {eos}): the reward head reads the "
               f"last non-pad token, so it would skip every response's final eos (and eos also occurs inside chat "
               f"templates). Set model.pad_token to a distinct token")
        if not cfg.allow_pad_eq_eos:
            raise ConfigError(msg + ", or model.allow_pad_eq_eos=true to accept pooling at the token before eos.")
        log.warning("%s; continuing because model.allow_pad_eq_eos=true.", msg)
    return pad


def config_pools_last_token(cfg: ModelConfig) -> bool:
    """``pools_last_token`` of the configured backbone, read from its config (no weights loaded)."""
    return pools_last_token(load_model_config(cfg, pad_token_id=0))


def pad_token_for(tokenizer, cfg: ModelConfig) -> int:
    """The pad id for the configured model's tokenizer: ``resolve_pad_token`` with the backbone's
    pooling probed from its config (the tokenizer's pad token is set)."""
    return resolve_pad_token(tokenizer, cfg, last_token_pooling=config_pools_last_token(cfg))


def load_model_config(cfg: ModelConfig, *, pad_token_id: int):
    path = resolve_model(cfg.name_or_path)
    if cfg.objectives:  # one head output per objective, named in the saved config
        mc = AutoConfig.from_pretrained(path, id2label=dict(enumerate(cfg.objectives)),
                                        label2id={o: k for k, o in enumerate(cfg.objectives)},
                                        trust_remote_code=cfg.trust_remote_code)
    else:
        mc = AutoConfig.from_pretrained(path, num_labels=1, trust_remote_code=cfg.trust_remote_code)
    mc.pad_token_id = pad_token_id
    if cfg.dropout is not None:
        for key, value in list(mc.to_dict().items()):
            if "dropout" in key and isinstance(value, float):
                setattr(mc, key, cfg.dropout)
        if hasattr(mc, "classifier_dropout"):
            mc.classifier_dropout = cfg.dropout
    return mc


def build_reward_model(cfg: ModelConfig, *, pad_token_id: int, lora=None):
    """Load the backbone with a fresh 1-output head (fp32 weights; DeepSpeed casts for bf16).

    With ``lora.enabled`` the backbone is frozen behind LoRA adapters and the head stays trainable.
    """
    mc = load_model_config(cfg, pad_token_id=pad_token_id)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model(cfg.name_or_path), config=mc, dtype=torch.float32, attn_implementation=cfg.attn_implementation,
        ignore_mismatched_sizes=bool(cfg.objectives),
        trust_remote_code=cfg.trust_remote_code)  # a K-output head replaces a saved 1-output one
    model.config.use_cache = False
    if cfg.activation_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    if lora is not None and lora.enabled:
        model = apply_lora(model, lora)
    return model


def rewards(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward a collated batch; returns (chosen, rejected) rewards, each (B,) in fp32 ((B, K) for a
    head with K > 1 outputs: one reward per objective).

    ``model`` may be the DeepSpeed engine (the forward goes through it, so ZeRO-3's hooks run).
    Padded batches (``collate_pairs``: rows 0..B-1 chosen, B..2B-1 rejected) use the head's own
    pooling. Shared/packed batches (``rm_ds.data.packing``) carry a block mask, position ids and the flat
    positions of the score tokens: the reward head's per-position output is captured by a forward
    hook and read there.
    """
    if batch["layout"] == "padded":
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        r = out.logits.float()
        r = r.squeeze(-1) if r.shape[-1] == 1 else r
        b = r.shape[0] // 2
        return r[:b], r[b:]
    return _rewards_at_positions(model, batch)


def require_last_token_pooling(model_or_config) -> None:
    """Refuse shared/packed layouts for models that do not score the last token (encoders pool [CLS])."""
    cfg = getattr(model_or_config, "config", model_or_config)
    if not pools_last_token(cfg):
        raise ConfigError(f"data.prefix_sharing / data.packing need a decoder reward model that scores each sequence's "
                         f"last token (a 'score' head); {getattr(cfg, 'model_type', '?')!r} pools its first ([CLS]) "
                         f"token, which a shared or packed row does not have per response. Turn both off for it")


def reward_head(model) -> torch.nn.Module:
    """The per-position reward head (``score`` on HF decoders; see ``HEAD_NAMES``) of a last-token-pooling
    model, also inside a DeepSpeed engine or a PEFT wrapper (the outermost module of that name)."""
    root = getattr(model, "module", model)
    require_last_token_pooling(root)
    for name, module in root.named_modules():
        if name.rsplit(".", 1)[-1] in HEAD_NAMES:
            return module
    raise ConfigError(f"data.prefix_sharing / data.packing read rewards from the reward head's per-position "
                     f"output; {type(root).__name__} has no module named {' or '.join(HEAD_NAMES)}")


def _rewards_at_positions(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    from rm_ds.data.packing import attention_mask_for

    head = reward_head(model)
    root = getattr(model, "module", model)
    dtype = next(root.parameters()).dtype
    mask = attention_mask_for(batch["attention_mask"], root.config._attn_implementation, dtype)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, _inp, out: captured.append(out))
    try:
        model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"], use_cache=False)
    finally:
        hook.remove()
    out = captured[-1]
    per_token = out.reshape(-1, out.shape[-1]).float()  # (rows * T, K): the head's output at every position
    if per_token.shape[1] == 1:
        per_token = per_token[:, 0]
    return per_token[batch["chosen_index"]], per_token[batch["rejected_index"]]


# ---------------------------------------------------------------------------------------------- LoRA

LORA_TARGETS = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen3": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gemma": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gemma2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "bert": ("query", "key", "value", "dense"),
    "roberta": ("query", "key", "value", "dense"),
}
HEAD_NAMES = ("score", "classifier", "v_head", "value_head", "reward_head")


def head_name(model) -> str:
    """The reward head's attribute name on a (not yet PEFT-wrapped) sequence-classification model."""
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name
    raise ValueError(f"{type(model).__name__}: no reward head found (looked for {', '.join(HEAD_NAMES)})")


def lora_targets(lora, model_type: str) -> list[str]:
    if lora.target_modules:
        return list(lora.target_modules)
    if model_type not in LORA_TARGETS:
        raise ConfigError(f"lora.target_modules: no default for model type {model_type!r}; list the module names "
                         f"to adapt (defaults exist for {', '.join(sorted(LORA_TARGETS))})")
    return list(LORA_TARGETS[model_type])


def apply_lora(model, lora):
    """Wrap in PEFT LoRA adapters and unfreeze the whole reward head, whatever its name.

    The head is unfrozen in place rather than listed in ``modules_to_save`` (which deep-copies the
    module: under ZeRO-3 that copies partitioned placeholders, the root of LoRA heads that stay
    random or cannot be exported).
    """
    from peft import LoraConfig, get_peft_model

    head = head_name(model)
    peft_model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                  target_modules=lora_targets(lora, model.config.model_type),
                                                  bias="none"))
    for p in getattr(peft_model.get_base_model(), head).parameters():
        p.requires_grad_(True)
    if getattr(peft_model.get_base_model(), "is_gradient_checkpointing", False):
        peft_model.get_base_model().enable_input_require_grads()
    return peft_model


def is_head_param(name: str, head: str) -> bool:
    return f".{head}." in f".{name}" and "lora_" not in name


def param_counts(model) -> tuple[int, int]:
    """(trainable, total) parameter counts, ZeRO-3 partitions counted at full size."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", p.numel())
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
