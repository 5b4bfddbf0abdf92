"""Collate layout (doctest in the module) and the zero-weight filler."""

from __future__ import annotations

import doctest

import torch

import rm_ds.data.collate
from rm_ds.data.collate import collate_pairs
from rm_ds.train.loss import bt_loss


def test_docstring_layout():
    assert doctest.testmod(rm_ds.data.collate, raise_on_error=False).failed == 0


def test_filler_contributes_nothing():
    b = collate_pairs([], pad_id=0, eos_id=2)
    assert b["n_pairs"] == 0 and b["pair_mask"].tolist() == [0.0] and b["input_ids"].tolist() == [[2], [2]]
    c = torch.tensor([0.3], requires_grad=True)
    ((bt_loss(c, torch.tensor([0.1])) * b["pair_mask"]).sum()).backward()
    assert c.grad.abs().sum() == 0


def test_every_layout_names_itself_and_shares_the_per_pair_columns():
    """The padded layout says so (``rewards`` does not infer it from a missing key), and every layout
    carries the same per-pair columns and the same filler (one zero-weight [eos] vs [eos] pair)."""
    from rm_ds.data.collate import make_collate

    rows = [dict(prompt_ids=[1, 5], chosen_ids=[7, 2], rejected_ids=[8, 9, 2], margin=0.5, weight=2.0, pref=0.75),
            dict(prompt_ids=[1], chosen_ids=[6, 2], rejected_ids=[2])]
    layouts = {"padded": (False, False), "rows": (True, False), "packed": (True, True)}
    per_pair = ("margin", "weight", "pref", "pair_mask")
    for name, (ps, pk) in layouts.items():
        collate = make_collate(prefix_sharing=ps, packing=pk, pad_id=0, eos_id=2)
        b, filler = collate(rows), collate([])
        assert b["layout"] == filler["layout"] == name
        assert {k: b[k].tolist() for k in per_pair} == {"margin": [0.5, 0.0], "weight": [2.0, 1.0],
                                                        "pref": [0.75, 1.0], "pair_mask": [1.0, 1.0]}
        assert {k: filler[k].tolist() for k in per_pair} == {"margin": [0.0], "weight": [0.0], "pref": [1.0],
                                                             "pair_mask": [0.0]}
        assert b["n_pairs"] == 2 and filler["n_pairs"] == filler["real_tokens"] == filler["unshared_tokens"] == 0
        assert b["unshared_tokens"] == 2 * 2 + 2 + 3 + 2 * 1 + 2 + 1
