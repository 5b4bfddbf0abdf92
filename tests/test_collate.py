"""Collate layout (doctest in the module) and the zero-weight filler."""

from __future__ import annotations

import doctest

import torch

import rm_ds.collate
from rm_ds.collate import collate_pairs
from rm_ds.loss import bt_loss


def test_docstring_layout():
    assert doctest.testmod(rm_ds.collate, raise_on_error=False).failed == 0


def test_filler_contributes_nothing():
    b = collate_pairs([], pad_id=0, eos_id=2)
    assert b["n_pairs"] == 0 and b["pair_mask"].tolist() == [0.0] and b["input_ids"].tolist() == [[2], [2]]
    c = torch.tensor([0.3], requires_grad=True)
    ((bt_loss(c, torch.tensor([0.1])) * b["pair_mask"]).sum()).backward()
    assert c.grad.abs().sum() == 0
