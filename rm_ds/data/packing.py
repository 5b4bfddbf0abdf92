"""Prefix-shared and packed batch layouts: rows, block masks, position ids, and where to read rewards.

Why: the chosen and rejected sequences of a pair share their prompt. The padded layout
(``rm_ds.data.collate.collate_pairs``) computes the prompt twice and pads every row to the longest.
Prefix sharing computes one row ``[P|C|R]`` per pair; packing puts several pairs in one row with no
padding. Both give the same rewards as the padded layout (up to float rounding) because of the mask
and the position ids (arXiv 2410.20305):

- causal attention inside a pair, except that R's tokens do not attend to C's;
- positions restart per pair; R continues from the end of P (``P_len .. P_len+R_len-1``), as if C
  were not there;
- pairs in one row never attend to each other (block diagonal); pad tokens attend only to pad.

One pair ``P=[p0 p1]``, ``C=[c0 c1]``, ``R=[r0]`` shared, next to a padded second row::

    >>> rows = [dict(prompt_ids=[5, 6], chosen_ids=[7, 2], rejected_ids=[2], margin=0.0, weight=1.0),
    ...         dict(prompt_ids=[5], chosen_ids=[2], rejected_ids=[2], margin=0.0, weight=1.0)]
    >>> b = collate_layout(rows, prefix_sharing=True, packing=False, pad_id=0, eos_id=2)
    >>> b["input_ids"]                        # one row per pair: [P|C|R], right-padded
    tensor([[5, 6, 7, 2, 2],
            [5, 2, 2, 0, 0]])
    >>> b["position_ids"]                     # R (column 4 of row 0) continues from P, not from C
    tensor([[0, 1, 2, 3, 2],
            [0, 1, 1, 0, 0]])
    >>> b["attention_mask"][0, 0].int()       # row 0: r0 (last line) sees p0 p1, not c0 c1
    tensor([[1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 0, 0, 1]], dtype=torch.int32)
    >>> b["chosen_index"].tolist(), b["rejected_index"].tolist()   # flat indices into (rows * T)
    ([3, 6], [4, 7])
    >>> b["real_tokens"], b["computed_tokens"], b["unshared_tokens"]   # unshared: (2+2)+(2+1)+(1+1)+(1+1)
    (8, 10, 11)

The same two pairs packed into one row (no padding, positions restart per pair)::

    >>> b = collate_layout(rows, prefix_sharing=True, packing=True, pad_id=0, eos_id=2)
    >>> b["input_ids"], b["position_ids"]
    (tensor([[5, 6, 7, 2, 2, 5, 2, 2]]), tensor([[0, 1, 2, 3, 2, 0, 1, 1]]))
    >>> b["chosen_index"].tolist(), b["rejected_index"].tolist(), b["computed_tokens"]
    ([3, 6], [4, 7], 8)

Packing without sharing lays out ``[P|C][P|R]`` per pair. Every batch carries ``layout``
(``"rows"``: one row per pair, ``"packed"``: several pairs per row), ``input_ids``, ``position_ids``
(R, T), a bool ``attention_mask`` (R, 1, T, T), ``chosen_index``/``rejected_index`` (B,) into the
flattened (R*T) per-token outputs, the per-pair ``margin``/``weight``/``pref``/``pair_mask``, and the counts
``n_pairs``, ``real_tokens`` (non-pad tokens computed), ``computed_tokens`` (R*T) and
``unshared_tokens`` (what the padded layout would compute as real tokens: ``2P + C + R`` per pair).
``rm_ds.model.rewards`` turns the bool mask into the form the attention implementation needs
(``attention_mask_for``) and reads the rewards at the two indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

PROMPT, CHOSEN, REJECTED = 0, 1, 2
MASK_IMPLEMENTATIONS = ("sdpa", "eager")
"""Attention implementations that take the 4-D block mask (bool for sdpa, additive for eager)."""


def objective_columns(rows: Sequence[dict]) -> dict:
    """Several objectives: ``prefs`` (B, K) with 0 where unlabelled, ``labelled`` (B, K) 0/1 and
    ``n_terms`` (labelled entries: the loss's count); {} for single-objective rows or a filler batch.

    >>> objective_columns([{"prefs": [1.0, float("nan")]}, {"prefs": [0.5, 0.0]}])["labelled"].tolist()
    [[1.0, 0.0], [1.0, 1.0]]
    """
    if not rows or "prefs" not in rows[0]:
        return {}
    prefs = torch.tensor([r["prefs"] for r in rows], dtype=torch.float32)
    labelled = ~torch.isnan(prefs)
    return {"prefs": torch.nan_to_num(prefs, nan=0.0), "labelled": labelled.float(), "n_terms": int(labelled.sum())}


def filler_rows(eos_id: int) -> list[dict]:
    """What an empty micro-batch (a filler) is collated from, in every layout: one dummy pair ``[eos]``
    vs ``[eos]`` with zero weight; its batch has ``pair_mask = 0`` (see ``pair_columns``)."""
    return [dict(prompt_ids=[], chosen_ids=[eos_id], rejected_ids=[eos_id], margin=0.0, weight=0.0)]


def pair_columns(rows: Sequence[dict], *, real: bool) -> dict:
    """The per-pair part of a batch in every layout: ``margin``, ``weight``, ``pref`` (B,), the objective
    columns, ``pair_mask`` (1 per pair; 0 for a filler, ``real=False``) and ``n_pairs``."""
    pair_mask = torch.full((len(rows),), 1.0 if real else 0.0)
    return {
        "margin": torch.tensor([float(r.get("margin", 0.0)) for r in rows]),
        "weight": torch.tensor([float(r.get("weight", 1.0)) for r in rows]),
        "pref": torch.tensor([float(r.get("pref", 1.0)) for r in rows]),
        **(objective_columns(rows) if real else {}),
        "pair_mask": pair_mask,
        "n_pairs": int(pair_mask.sum().item()),
    }


def pair_lengths(ds, *, prefix_sharing: bool, packing: bool) -> np.ndarray:
    """Per-pair sampler cost for a tokenized dataset (``rm_ds.data.tokenize`` columns).

    padded: ``pair_len`` = P + max(C, R) (the sampler charges ``n * max``, and the batch computes
    twice that); shared: the row length P + C + R; packed: P + C + P + R; shared_packed: P + C + R.
    Packed layouts need ``SamplerConfig(cost="sum")``, the others ``cost="padded"``.
    """
    if not prefix_sharing and not packing:
        return np.asarray(ds["pair_len"], dtype=np.int64)
    chosen = np.asarray(ds["chosen_len"], dtype=np.int64)
    rejected = np.asarray(ds["rejected_len"], dtype=np.int64)
    if not prefix_sharing:
        return chosen + rejected
    return chosen + rejected - _prompt_lengths(ds)


def sampler_cost(*, packing: bool) -> str:
    """The ``SamplerConfig.cost`` / ``eval_shards(cost=)`` that matches the layout."""
    return "sum" if packing else "padded"


def _prompt_lengths(ds) -> np.ndarray:
    if hasattr(ds, "with_format"):  # a datasets.Dataset: list lengths straight from arrow (20k rows: 2 ms)
        import pyarrow.compute as pc

        col = ds.with_format("arrow")["prompt_ids"]
        return np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.asarray([len(p) for p in ds["prompt_ids"]], dtype=np.int64)


# --------------------------------------------------------------------------- rows and masks


def _segments(row: dict, *, prefix_sharing: bool) -> list[tuple[list[int], list[int], list[int], dict]]:
    """One pair as segments ``(ids, positions, parts, score offsets)``; a segment is one attention block.

    The score offsets map "chosen"/"rejected" to the offset of that response's last token (its eos)
    inside the segment.
    """
    p, c, r = row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]
    np_, nc, nr = len(p), len(c), len(r)
    if prefix_sharing:
        return [(p + c + r, [*range(np_ + nc), *range(np_, np_ + nr)],
                 [PROMPT] * np_ + [CHOSEN] * nc + [REJECTED] * nr,
                 {"chosen": np_ + nc - 1, "rejected": np_ + nc + nr - 1})]
    return [(p + c, [*range(np_ + nc)], [PROMPT] * np_ + [CHOSEN] * nc, {"chosen": np_ + nc - 1}),
            (p + r, [*range(np_ + nr)], [PROMPT] * np_ + [REJECTED] * nr, {"rejected": np_ + nr - 1})]


def block_mask(segment_ids: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """Bool mask (R, 1, T, T), True = query may attend to key, from per-token ids of shape (R, T).

    Query q sees key k when both lie in the same segment, k <= q, and not (q in R, k in C).
    Pad tokens (segment -1) see earlier pad tokens and themselves, so no query row is empty
    (an all-masked row turns into NaN under eager attention with -inf).
    """
    t = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool).tril_()
    r_sees_c = (parts[:, :, None] == REJECTED) & (parts[:, None, :] == CHOSEN)
    return (same & causal & ~r_sees_c).unsqueeze(1)


def attention_mask_for(mask: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The bool block mask in the format the attention implementation reads.

    sdpa: bool as is. eager: additive float, 0 where allowed and the dtype's minimum elsewhere (eager
    adds the mask to the scores, so a bool mask there would silently add 0/1).
    """
    if attn_implementation == "sdpa":
        return mask
    if attn_implementation == "eager":
        return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)
    raise ValueError(f"prefix sharing / packing build a 4-D block mask, which attn_implementation "
                     f"{attn_implementation!r} does not take here; use one of {MASK_IMPLEMENTATIONS}")


def balanced_rows(sizes: Sequence[int], width: int) -> list[list[int]]:
    """Indices of ``sizes`` grouped into the fewest rows of at most ``width`` that a balanced deal finds.

    Rows are padded to the longest, so k rows are filled evenly (longest first, each to the
    least-loaded row) rather than first-fit (full rows and a short last one); k starts at
    ``ceil(sum / width)`` and grows until no row exceeds ``width``.

    >>> balanced_rows([40, 40, 40, 40, 30, 30], 128)   # 220 tokens: 2 rows of 110, not 120 + 100
    [[0, 2, 4], [1, 3, 5]]
    """
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    k = max(1, -(-sum(sizes) // width))
    while True:
        rows: list[list[int]] = [[] for _ in range(k)]
        load = [0] * k
        for i in order:
            r = min(range(k), key=lambda j: (load[j], j))
            rows[r].append(i)
            load[r] += sizes[i]
        if max(load) <= width or k >= len(sizes):
            return [sorted(r) for r in rows if r]
        k += 1


def collate_layout(rows: Sequence[dict], *, prefix_sharing: bool, packing: bool, pad_id: int, eos_id: int,
                   row_tokens: int | None = None) -> dict:
    """Rows of pairs -> a shared and/or packed batch (layout in the module docstring).

    ``packing`` deals the pairs into evenly filled rows (``balanced_rows``; a pair never spans two
    rows) of at most ``row_tokens`` tokens, by default twice the micro-batch's longest pair; rows are
    then padded to the longest. Why not one row: with a dense 4-D mask (sdpa/eager) attention costs
    T^2 per row whatever the blocks, so one long row spends more on attention than it saves on
    padding; rows of up to two of the longest pairs keep the padding near zero after length grouping
    (0.98-0.99 useful tokens on the bundled data) at about twice the per-token attention of one pair
    per row. ``row_tokens`` >= the micro-batch's total gives one row. Without packing each pair is
    its own row (only with ``prefix_sharing``).
    """
    if not prefix_sharing and not packing:
        raise ValueError("the padded layout is rm_ds.data.collate.collate_pairs")
    real = bool(rows)
    rows = rows if real else filler_rows(eos_id)
    pairs = [_segments(r, prefix_sharing=prefix_sharing) for r in rows]
    sizes = [sum(len(s[0]) for s in segs) for segs in pairs]
    if not packing:
        layout_rows = [[i] for i in range(len(pairs))]
    else:
        cap = 2 * max(sizes) if row_tokens is None else max(row_tokens, max(sizes))
        layout_rows = balanced_rows(sizes, cap)
    width = max(sum(sizes[i] for i in lr) for lr in layout_rows)
    ids, pos, seg, part = [], [], [], []  # per row, as flat lists: one tensor each at the end
    score = {"chosen": [0] * len(pairs), "rejected": [0] * len(pairs)}
    for r, members in enumerate(layout_rows):
        row_ids, row_pos, row_seg, row_part = [], [], [], []
        for i in members:
            for seg_ids, seg_pos, seg_part, ends in pairs[i]:
                for kind, off in ends.items():
                    score[kind][i] = r * width + len(row_ids) + off
                row_seg += [len(row_ids)] * len(seg_ids)  # a segment's id: its start column (unique in the row)
                row_ids += seg_ids
                row_pos += seg_pos
                row_part += seg_part
        pad = width - len(row_ids)
        ids.append(row_ids + [pad_id] * pad)
        pos.append(row_pos + [0] * pad)
        seg.append(row_seg + [-1] * pad)
        part.append(row_part + [PROMPT] * pad)
    input_ids = torch.tensor(ids, dtype=torch.long)
    p_lens = [len(r["prompt_ids"]) for r in rows]
    unshared = sum(2 * p + len(r["chosen_ids"]) + len(r["rejected_ids"]) for p, r in zip(p_lens, rows))
    return {
        "layout": "packed" if packing else "rows",
        "input_ids": input_ids,
        "position_ids": torch.tensor(pos, dtype=torch.long),
        "attention_mask": block_mask(torch.tensor(seg, dtype=torch.long), torch.tensor(part, dtype=torch.long)),
        "chosen_index": torch.tensor(score["chosen"], dtype=torch.long),
        "rejected_index": torch.tensor(score["rejected"], dtype=torch.long),
        **pair_columns(rows, real=real),
        "real_tokens": sum(sizes) if real else 0,
        "computed_tokens": int(input_ids.numel()),
        "unshared_tokens": unshared if real else 0,
    }
