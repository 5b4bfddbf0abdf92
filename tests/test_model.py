"""Reward model: pooled token is the response's eos, pad==eos is refused, checkpointing is exact."""

from __future__ import annotations

import pytest
import torch

from rm_ds.data.collate import collate_pairs
from rm_ds.config import ModelConfig
from rm_ds.train.loss import bt_loss
from rm_ds.model import build_reward_model, load_tokenizer, pools_last_token, resolve_pad_token, rewards


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return str(tiny_llama(seed=1))


ROWS = [dict(prompt_ids=[101, 2054, 2003], chosen_ids=[1037, 3899, 102], rejected_ids=[1037, 102]),
        dict(prompt_ids=[101, 2054], chosen_ids=[2204, 2204, 2204, 2204, 102], rejected_ids=[5255, 102])]


def test_padded_batch_reward_equals_unpadded_sequence(tiny):
    """Right padding must not move the pooled token: each row's reward equals scoring it alone."""
    tok = load_tokenizer(tiny)
    cfg = ModelConfig(name_or_path=tiny)
    pad = resolve_pad_token(tok, cfg, last_token_pooling=True)
    model = build_reward_model(cfg, pad_token_id=pad).eval()
    with torch.no_grad():
        c, r = rewards(model, collate_pairs(ROWS, pad_id=pad, eos_id=102))
        for i, row in enumerate(ROWS):
            alone = collate_pairs([row], pad_id=pad, eos_id=102)
            c1, r1 = rewards(model, alone)
            torch.testing.assert_close(c[i], c1[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(r[i], r1[0], rtol=1e-5, atol=1e-6)


def test_pad_equal_to_eos_is_refused_unless_allowed(tiny):
    tok = load_tokenizer(tiny)
    cfg = ModelConfig(name_or_path=tiny, pad_token=tok.eos_token)
    with pytest.raises(ValueError, match="equals the eos/score token"):
        resolve_pad_token(tok, cfg, last_token_pooling=True)
    tok = load_tokenizer(tiny)
    assert resolve_pad_token(tok, ModelConfig(name_or_path=tiny, pad_token=tok.eos_token, allow_pad_eq_eos=True),
                             last_token_pooling=True) == tok.eos_token_id
    # encoders pool [CLS]: pad == eos is harmless there
    tok = load_tokenizer(tiny)
    resolve_pad_token(tok, ModelConfig(name_or_path=tiny, pad_token=tok.eos_token), last_token_pooling=False)
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        resolve_pad_token(load_tokenizer(tiny), ModelConfig(name_or_path=tiny, pad_token="<nope>"),
                          last_token_pooling=True)


def test_smollm2_defaults_are_unambiguous():
    tok = load_tokenizer("builtin:smollm2")
    pad = resolve_pad_token(tok, ModelConfig(name_or_path="builtin:smollm2"), last_token_pooling=True)
    assert tok.convert_ids_to_tokens(pad) == "<|endoftext|>" and tok.eos_token == "<|im_end|>"


def test_pooling_kind_detection(tiny):
    from transformers import AutoConfig

    from rm_ds.builtin import resolve_model

    assert pools_last_token(AutoConfig.from_pretrained(tiny))
    assert not pools_last_token(AutoConfig.from_pretrained(resolve_model("builtin:minilm")))


def test_activation_checkpointing_gives_the_same_gradients(tiny):
    tok = load_tokenizer(tiny)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        cfg = ModelConfig(name_or_path=tiny, activation_checkpointing=ckpt)
        model = build_reward_model(cfg, pad_token_id=resolve_pad_token(tok, cfg, last_token_pooling=True)).train()
        assert model.is_gradient_checkpointing is ckpt
        c, r = rewards(model, collate_pairs(ROWS, pad_id=tok.pad_token_id, eos_id=102))
        bt_loss(c, r).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)
