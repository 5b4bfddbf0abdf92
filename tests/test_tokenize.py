"""Tokenisation: one token boundary between prompt and responses, eos last, truncation policy."""

from __future__ import annotations

import datasets
import pytest

from rm_ds.model import load_tokenizer
from rm_ds.data.tokenize import TokenizeOptions, eos_id, fit_to_length, tokenize_pairs


@pytest.fixture(scope="module")
def minilm():
    return load_tokenizer("builtin:minilm")


@pytest.fixture(scope="module")
def smollm2():
    return load_tokenizer("builtin:smollm2")


def text_ds(*rows):
    return datasets.Dataset.from_list([dict(pair_id=str(i), format="text", prompt=p, chosen=c, rejected=r, margin=0.0,
                                            weight=1.0, source="", row=i) for i, (p, c, r) in enumerate(rows)])


def test_text_pairs_with_bert_tokenizer(minilm):
    ds, rep = tokenize_pairs(text_ds(("what is a dog?", "a domestic animal", "a large rock")), minilm,
                             TokenizeOptions(max_length=64))
    row = ds[0]
    cls, sep = minilm.cls_token_id, minilm.sep_token_id
    assert row["prompt_ids"][0] == cls and row["prompt_ids"][-1] == sep
    assert row["chosen_ids"][-1] == eos_id(minilm) == sep and row["rejected_ids"][-1] == sep
    assert minilm.decode(row["chosen_ids"], skip_special_tokens=True) == "a domestic animal"
    assert row["chosen_len"] == len(row["prompt_ids"]) + len(row["chosen_ids"])
    assert row["pair_len"] == max(row["chosen_len"], row["rejected_len"])
    assert rep.counts == {"ok": 1} and rep.n_kept == 1


def test_chat_template_split_ends_on_eos(smollm2):
    msgs = datasets.Dataset.from_list([dict(
        pair_id="0", format="chat", prompt=[{"role": "user", "content": "Define dog."}],
        chosen=[{"role": "assistant", "content": "A domestic canine."}],
        rejected=[{"role": "assistant", "content": "A kind of stone."}], margin=0.0, weight=1.0, source="", row=0)])
    ds, _ = tokenize_pairs(msgs, smollm2, TokenizeOptions(max_length=128))
    row = ds[0]
    im_end = smollm2.convert_tokens_to_ids("<|im_end|>")
    assert eos_id(smollm2) == im_end
    assert row["chosen_ids"][-1] == im_end and row["rejected_ids"][-1] == im_end  # score token, no trailing "\n"
    assert smollm2.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert smollm2.decode(row["chosen_ids"]) == "A domestic canine.<|im_end|>"
    # text data through the template gives the same ids as the equivalent chat data
    tds, _ = tokenize_pairs(text_ds(("Define dog.", "A domestic canine.", "A kind of stone.")), smollm2,
                            TokenizeOptions(max_length=128, chat_template=True))
    assert tds[0]["prompt_ids"] == row["prompt_ids"] and tds[0]["chosen_ids"] == row["chosen_ids"]


def test_prompt_is_cut_from_the_left_first():
    """prompt [CLS] 1 2 3 4 5, responses of 3 and 2 tokens, cap 6: the prompt keeps [CLS] + its
    last 2 tokens (6 - 3 = 3 slots), responses untouched."""
    p, c, r, status = fit_to_length([101, 1, 2, 3, 4, 5], [7, 8, 102], [9, 102], max_length=6, overlong="truncate",
                                    lead={101}, eos=102)
    assert (p, c, r, status) == ([101, 4, 5], [7, 8, 102], [9, 102], "prompt_truncated")


def test_response_cut_only_when_it_alone_is_too_long():
    """cap 5, response of 6: prompt keeps [CLS] and its last token, responses cut to 3 with eos last."""
    p, c, r, status = fit_to_length([101, 1, 2, 102], [7, 8, 9, 10, 11, 102], [9, 102], max_length=5,
                                    overlong="truncate", lead={101}, eos=102)
    assert (p, c, r, status) == ([101, 102], [7, 8, 102], [9, 102], "response_truncated")
    *_, status = fit_to_length([101, 1, 2, 102], [7, 8, 9, 10, 11, 102], [9, 102], max_length=5, overlong="drop",
                               lead={101}, eos=102)
    assert status == "dropped_overlong"


def test_truncation_counts_and_drops(minilm):
    long = " ".join(["word"] * 40)
    ds, rep = tokenize_pairs(text_ds(("short prompt", "yes", "no"), (long, "yes", "no"), ("p", long, "no")),
                             minilm, TokenizeOptions(max_length=16, overlong="drop"))
    assert rep.counts == {"ok": 1, "prompt_truncated": 1, "dropped_overlong": 1}
    assert len(ds) == 2 and all(n <= 16 for n in ds["pair_len"])
    assert "2/3 pairs kept" in rep.summary()


def test_tokenisation_is_cached_by_content(minilm, tmp_path):
    from rm_ds.data.tokenize import cache_key

    ds = text_ds(("what is a dog?", "a domestic animal", "a large rock"), ("p", "yes", "no"))
    opts = TokenizeOptions(max_length=64)
    key = cache_key("digest-of-the-source", minilm, opts)
    assert key == cache_key("digest-of-the-source", minilm, opts)
    assert key != cache_key("another-source", minilm, opts)
    assert key != cache_key("digest-of-the-source", minilm, TokenizeOptions(max_length=65))
    path = tmp_path / f"{key}.arrow"
    first, _ = tokenize_pairs(ds, minilm, opts, cache_file=str(path))
    stamp = path.stat().st_mtime_ns
    second, rep = tokenize_pairs(ds, minilm, opts, cache_file=str(path))
    assert path.stat().st_mtime_ns == stamp  # read back, not rewritten
    assert second["chosen_ids"] == first["chosen_ids"] and rep.counts == {"ok": 2}


def test_token_columns_match_what_tokenize_pairs_writes():
    """Rows tokenised elsewhere (bench, tests) get the same length columns as a tokenised dataset."""
    from rm_ds.data.tokenize import length_columns, token_columns

    rows = [{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 9], "rejected_ids": [5, 6, 7, 9]},
            {"prompt_ids": [], "chosen_ids": [9], "rejected_ids": [9]}]
    cols = token_columns(rows)
    assert cols["chosen_len"] == [5, 1] and cols["rejected_len"] == [7, 1] and cols["pair_len"] == [7, 1]
    assert cols["prompt_ids"] == [[1, 2, 3], []]
    assert length_columns([1], [2, 3], [4]) == {"chosen_len": 3, "rejected_len": 2, "pair_len": 3}


def test_pairs_identical_after_truncation_are_dropped_and_counted(minilm):
    """Responses that share their first 20 words and differ after: at max_length 16 both are cut to the
    same tokens, so the pair carries no preference and must go (the other pair stays); BERT lowercases,
    so "Dog" / "dog" are identical token for token even before truncation."""
    shared = " ".join(["word"] * 20)
    ds, rep = tokenize_pairs(text_ds(("q", shared + " good", shared + " bad"), ("q", "a cat", "a rock"),
                                     ("q", "Dog", "dog")), minilm,
                             TokenizeOptions(max_length=16, overlong="truncate"))
    assert list(ds["pair_id"]) == ["1"]
    assert rep.counts == {"dropped_identical": 2, "ok": 1} and rep.n_kept == 1 and rep.n_pairs == 3
    assert "dropped_identical=2" in rep.summary()
