"""Collate tokenised pairs (one micro-batch from the sampler) into model inputs.

Layout for B pairs, right-padded to the longest of the 2B sequences::

    >>> import torch
    >>> rows = [dict(prompt_ids=[1, 5], chosen_ids=[7, 2], rejected_ids=[8, 9, 2], margin=0.0, weight=1.0),
    ...         dict(prompt_ids=[1], chosen_ids=[6, 2], rejected_ids=[2], margin=0.5, weight=2.0)]
    >>> b = collate_pairs(rows, pad_id=0, eos_id=2)
    >>> b["input_ids"]          # rows 0..B-1 are chosen, rows B..2B-1 rejected, pair i at i and B+i
    tensor([[1, 5, 7, 2, 0],
            [1, 6, 2, 0, 0],
            [1, 5, 8, 9, 2],
            [1, 2, 0, 0, 0]])
    >>> b["attention_mask"].sum(1).tolist(), b["pair_mask"].tolist(), b["n_pairs"]
    ([4, 3, 5, 2], [1.0, 1.0], 2)

An empty micro-batch (a filler the sampler hands a rank with nothing left, so every rank still takes
part in each forward, as ZeRO-3 needs) becomes one dummy pair ``[eos]`` vs ``[eos]`` with
``pair_mask = 0``: it runs the model and contributes exactly zero to loss and gradients.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from rm_ds.data.packing import collate_layout, filler_rows, pair_columns


def collate_pairs(rows: Sequence[dict], *, pad_id: int, eos_id: int) -> dict:
    """Pack pairs into ``input_ids``/``attention_mask`` of shape (2B, T) plus per-pair tensors (B,);
    ``layout`` is ``"padded"`` (``rm_ds.data.packing`` batches say ``"rows"`` or ``"packed"``)."""
    real = bool(rows)
    rows = rows if real else filler_rows(eos_id)
    seqs = [r["prompt_ids"] + r["chosen_ids"] for r in rows] + [r["prompt_ids"] + r["rejected_ids"] for r in rows]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    return {
        "layout": "padded",
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        **pair_columns(rows, real=real),
        "real_tokens": int(attention_mask.sum().item()) if real else 0,
        "computed_tokens": int(input_ids.numel()),
    }


def make_collate(*, prefix_sharing: bool, packing: bool, pad_id: int, eos_id: int,
                 row_tokens: int | None = None) -> Callable[[Sequence[dict]], dict]:
    """rows -> batch for the configured layout (``data.prefix_sharing``, ``data.packing``).

    Neither: ``collate_pairs`` (2B padded rows) plus ``unshared_tokens`` (= its real tokens), so every
    layout reports the same counts. Otherwise ``rm_ds.data.packing.collate_layout``: one ``[P|C|R]`` row
    per pair, or pairs packed into rows (``row_tokens`` caps a row; default twice the micro-batch's
    longest pair), with a 4-D block mask and per-pair position ids. ``rm_ds.model.rewards`` reads either.
    """
    if not prefix_sharing and not packing:
        def padded(rows: Sequence[dict]) -> dict:
            batch = collate_pairs(rows, pad_id=pad_id, eos_id=eos_id)
            batch["unshared_tokens"] = batch["real_tokens"]
            return batch
        return padded

    def collate(rows: Sequence[dict]) -> dict:
        return collate_layout(rows, prefix_sharing=prefix_sharing, packing=packing, pad_id=pad_id,
                              eos_id=eos_id, row_tokens=row_tokens)
    return collate
