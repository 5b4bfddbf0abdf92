"""Tokenise canonical preference pairs (see ``rm_ds.data.pairs``) into prompt / response token ids.

Each pair keeps its prompt and its two responses as separate id lists, split on one token boundary,
so the unshared path (``prompt + chosen`` and ``prompt + rejected`` as two rows) and a prefix-shared
path see exactly the same ids::

    prompt_ids   = [CLS] what does the noun " dog " mean ? [SEP]      (text pairs, BERT tokenizer)
    chosen_ids   = a domestic canine ... [SEP]                         (response + eos: the score token)
    rejected_ids = a large feline ... [SEP]

Rules:
- With a chat template (chat data, or text data with ``chat_template=True``) the prompt is the
  template rendered with ``add_generation_prompt=True`` and the response is what the full
  conversation adds after it; trailing whitespace after the final eos is removed so the last token
  is eos. Without a template: ``tokenizer(prompt)`` (with its special tokens) and
  ``tokenizer(separator + response, add_special_tokens=False) + [eos]``.
- Chat data on a tokenizer without a chat template (``chat_render="hh"``; ``"auto"`` picks it when the
  tokenizer has none): the conversation is rendered as text by HH-RLHF's own convention
  (``render_hh``), then tokenised like text. Prompt text: every prompt message as
  ``"\n\n" + label + ": " + content`` (labels: user -> ``Human``, assistant -> ``Assistant``, any
  other role -> the role with its first letter upper-cased, e.g. ``System``), then ``"\n\nAssistant:"``;
  response text: ``" " + content`` of the final assistant message, trailing whitespace removed. So
  an HH row trains on exactly its original transcript ``"\n\nHuman: ...\n\nAssistant: ..."``;
  ``response_separator`` is not used. (docs/data-formats.md has the rule and a plain snippet.)
- The score token is always the response's last token, eos.
- Over ``max_length``: the prompt is cut from the left first (keeping a leading BOS/CLS token);
  only when the response alone is too long is it cut (keeping eos last) or the pair dropped.
- A pair whose chosen and rejected ids end up identical (cut to a shared beginning, or texts that
  differ only in what the tokenizer normalises away) teaches nothing: it is dropped and counted as
  ``dropped_identical``.
- Results are cached by ``datasets.map`` (its fingerprint covers the tokenizer and options).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rm_ds.errors import ConfigError

TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids", "chosen_len", "rejected_len", "pair_len", "status")


@dataclass(frozen=True)
class TokenizeOptions:
    max_length: int
    """Cap on prompt + response tokens per sequence."""
    overlong: Literal["truncate", "drop"] = "truncate"
    """What to do when the response alone exceeds the cap."""
    chat_template: bool = False
    """Render text pairs through the tokenizer's chat template."""
    response_separator: str = "\n"
    """Text placed before the response when no template is used."""
    chat_render: Literal["auto", "template", "hh"] = "auto"
    """How chat data becomes text: the tokenizer's template, or HH's ``Human:``/``Assistant:`` rule
    (``render_hh``); auto: the template if the tokenizer has one, else hh."""


CHAT_RENDERINGS = ("template", "hh")
HH_LABELS = {"user": "Human", "assistant": "Assistant"}
"""Speaker labels of the HH rendering; any other role is written with its first letter upper-cased."""
HH_GENERATION_PROMPT = "\n\nAssistant:"
"""What the rendered prompt ends with: the turn the response completes."""


def resolve_chat_render(tokenizer, requested: str = "auto") -> str:
    """``template`` or ``hh``: how this tokenizer renders chat data (``auto``: template if it has one)."""
    if requested == "auto":
        return "template" if getattr(tokenizer, "chat_template", None) else "hh"
    if requested not in CHAT_RENDERINGS:
        raise ValueError(f"chat_render must be auto, template or hh, got {requested!r}")
    return requested


def describe_chat_render(render: str) -> str:
    """The one line printed at load and kept in the run's data.json."""
    if render == "template":
        return "conversations rendered by the tokenizer's chat template"
    return ("conversations rendered as text by the HH rule (the tokenizer has no chat template): "
            "'\\n\\nHuman: ...\\n\\nAssistant: ...', see docs/data-formats.md")


def render_hh(messages: list[dict]) -> str:
    """Messages as an HH transcript: ``"\\n\\nHuman: hi\\n\\nAssistant: hello"``.

    >>> render_hh([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    '\\n\\nSystem: Be brief.\\n\\nHuman: hi'
    """
    return "".join(f"\n\n{HH_LABELS.get(m['role'], m['role'][:1].upper() + m['role'][1:])}: {m['content']}"
                   for m in messages)


@dataclass
class TokenizeReport:
    n_pairs: int = 0
    n_kept: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    """status -> count: ok, prompt_truncated, response_truncated, dropped_overlong, dropped_template,
    dropped_identical."""
    chat_render: str = ""
    """For chat data: template | hh (how conversations became text, ``describe_chat_render``); "" for text."""

    def summary(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        s = f"{self.n_kept}/{self.n_pairs} pairs kept ({parts})"
        return s + f"; {describe_chat_render(self.chat_render)}" if self.chat_render else s


def eos_id(tokenizer) -> int:
    """The score token: eos, else sep (BERT-style tokenizers have no eos)."""
    tid = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if tid is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither an eos nor a sep token: set one")
    return int(tid)


def leading_special_ids(tokenizer) -> set[int]:
    return {t for t in (tokenizer.bos_token_id, tokenizer.cls_token_id) if t is not None}


def _strip_to_eos(ids: list[int], eos: int, whitespace_ids: set[int]) -> list[int]:
    """Drop trailing whitespace tokens after the last eos; append eos if the response lacks one."""
    end = len(ids)
    while end > 0 and ids[end - 1] in whitespace_ids:
        end -= 1
    ids = ids[:end]
    if not ids or ids[-1] != eos:
        ids = ids + [eos]
    return ids


def _as_messages(x: Any, role: str) -> list[dict]:
    return [{"role": role, "content": x}] if isinstance(x, str) else list(x)


def encode_pair(tokenizer, fmt: str, prompt, chosen, rejected, opts: TokenizeOptions, eos: int,
                 ws: set[int]) -> tuple[list[int], list[int], list[int]] | None:
    if fmt == "chat" and resolve_chat_render(tokenizer, opts.chat_render) == "hh":
        p_msgs = _as_messages(prompt, "user") if prompt else []
        p_text = render_hh(p_msgs) + HH_GENERATION_PROMPT
        p_ids = tokenizer(p_text)["input_ids"]
        c_ids, r_ids = (tokenizer(" " + _as_messages(x, "assistant")[-1]["content"].rstrip(),
                                  add_special_tokens=False)["input_ids"] for x in (chosen, rejected))
        return p_ids, _strip_to_eos(c_ids, eos, ws), _strip_to_eos(r_ids, eos, ws)
    if fmt == "chat" or opts.chat_template:
        if not tokenizer.chat_template:
            raise ValueError("data.chat_template=true (or chat_render=template) needs a tokenizer with a chat "
                             "template; this one has none")
        p_msgs = _as_messages(prompt, "user") if prompt else []
        p_text = tokenizer.apply_chat_template(p_msgs, add_generation_prompt=True, tokenize=False) if p_msgs else ""
        out = []
        for resp in (chosen, rejected):
            full = tokenizer.apply_chat_template(p_msgs + _as_messages(resp, "assistant"), tokenize=False)
            if not full.startswith(p_text):
                return None  # the template renders the prompt differently inside a conversation
            out.append(tokenizer(full[len(p_text):].rstrip(), add_special_tokens=False)["input_ids"])
        p_ids = tokenizer(p_text, add_special_tokens=False)["input_ids"] if p_text else []
        return p_ids, _strip_to_eos(out[0], eos, ws), _strip_to_eos(out[1], eos, ws)
    p_ids = tokenizer(prompt)["input_ids"]
    c_ids = tokenizer(opts.response_separator + chosen, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(opts.response_separator + rejected, add_special_tokens=False)["input_ids"]
    return p_ids, _strip_to_eos(c_ids, eos, ws), _strip_to_eos(r_ids, eos, ws)


def fit_to_length(p_ids: list[int], c_ids: list[int], r_ids: list[int], *, max_length: int,
                  overlong: str, lead: set[int], eos: int) -> tuple[list[int], list[int], list[int], str]:
    """Apply the truncation policy; returns the ids and a status string.

    The prompt loses tokens from its left (after a leading BOS/CLS, which stays) until the longer
    response fits. If even one prompt token cannot stay, the response is too long on its own:
    ``drop`` removes the pair, ``truncate`` keeps the prompt's lead and last token and cuts both
    responses from the right, eos kept last.
    """
    resp = max(len(c_ids), len(r_ids))
    if len(p_ids) + resp <= max_length:
        return p_ids, c_ids, r_ids, "ok"
    keep_lead = 1 if p_ids and p_ids[0] in lead else 0
    room = max_length - resp  # tokens the prompt may keep
    if room >= keep_lead + 1:
        return p_ids[:keep_lead] + p_ids[len(p_ids) - (room - keep_lead):], c_ids, r_ids, "prompt_truncated"
    if overlong == "drop":
        return p_ids, c_ids, r_ids, "dropped_overlong"
    p_keep = p_ids[:keep_lead] + (p_ids[-1:] if len(p_ids) > keep_lead else [])
    limit = max_length - len(p_keep)

    def cut(ids: list[int]) -> list[int]:
        return ids if len(ids) <= limit else ids[: limit - 1] + [eos]

    return p_keep, cut(c_ids), cut(r_ids), "response_truncated"


TOKENIZE_VERSION = "3"
"""Bump when the tokenisation rules change: it is part of every cache key."""


def cache_key(source_digest: str, tokenizer, opts: TokenizeOptions) -> str:
    """Content key for the tokenised cache: the source data, the tokenizer's vocabulary, special tokens
    and chat template, the options, and the rules' version."""
    h = hashlib.sha256()
    vocab = tokenizer.get_vocab()
    for part in (TOKENIZE_VERSION, source_digest, json.dumps(sorted(vocab.items())), str(tokenizer.chat_template),
                 json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str), repr(opts)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def length_columns(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int]) -> dict[str, int]:
    """One pair's ``chosen_len`` and ``rejected_len`` (prompt + response) and ``pair_len`` (their max)."""
    p = len(prompt_ids)
    return {"chosen_len": p + len(chosen_ids), "rejected_len": p + len(rejected_ids),
            "pair_len": p + max(len(chosen_ids), len(rejected_ids))}


def token_columns(rows: list[dict]) -> dict[str, list]:
    """Rows of ``prompt_ids``/``chosen_ids``/``rejected_ids`` as the columns ``tokenize_pairs`` gives
    (ids and lengths), for pairs tokenised elsewhere: ``pair_lengths`` and ``build_sampler`` take them."""
    cols: dict[str, list] = {k: [r[k] for r in rows] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
    lengths = [length_columns(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in rows]
    for k in ("chosen_len", "rejected_len", "pair_len"):
        cols[k] = [x[k] for x in lengths]
    return cols


def tokenize_pairs(ds, tokenizer, opts: TokenizeOptions, *, num_proc: int = 1, cache_file: str | None = None):
    """Map a canonical pair dataset to token ids; returns (dataset, TokenizeReport).

    With ``cache_file`` (named by ``cache_key``), ``datasets.map`` writes the result there and later
    runs with the same data, tokenizer and options load it instead of tokenising again.

    Added columns: ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (responses only), ``chosen_len``
    and ``rejected_len`` (prompt + response), ``pair_len`` (their max: the padded length the pair
    needs) and ``status``. Dropped pairs are removed and counted.
    """
    if opts.chat_template and not tokenizer.chat_template:
        name = tokenizer.name_or_path or type(tokenizer).__name__
        raise ConfigError(f"data.chat_template=true: the tokenizer {name} has no chat template (set "
                          f"data.chat_template=false: chat data is then rendered as text by the HH rule, see "
                          f"docs/data-formats.md)")
    chat = len(ds) > 0 and ds[0]["format"] == "chat"
    render = resolve_chat_render(tokenizer, opts.chat_render) if chat else ""
    if render == "template" and not tokenizer.chat_template:
        raise ConfigError(f"chat_render=template: the tokenizer {tokenizer.name_or_path} has no chat template")
    eos = eos_id(tokenizer)
    lead = leading_special_ids(tokenizer)
    ws = {tid for tid in tokenizer.convert_tokens_to_ids(tokenizer.tokenize("\n \n\n"))
          if tid is not None and tid != eos}

    def encode(batch: dict) -> dict:
        out = {c: [] for c in TOKEN_COLUMNS}
        for fmt, p, c, r in zip(batch["format"], batch["prompt"], batch["chosen"], batch["rejected"]):
            enc = encode_pair(tokenizer, fmt, p, c, r, opts, eos, ws)
            if enc is None:
                p_ids, c_ids, r_ids, status = [], [eos], [eos], "dropped_template"
            else:
                p_ids, c_ids, r_ids, status = fit_to_length(*enc, max_length=opts.max_length,
                                                            overlong=opts.overlong, lead=lead, eos=eos)
                if c_ids == r_ids and not status.startswith("dropped"):
                    status = "dropped_identical"
            out["prompt_ids"].append(p_ids)
            out["chosen_ids"].append(c_ids)
            out["rejected_ids"].append(r_ids)
            for k, v in length_columns(p_ids, c_ids, r_ids).items():
                out[k].append(v)
            out["status"].append(status)
        return out

    if cache_file:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
    mapped = ds.map(encode, batched=True, batch_size=256, num_proc=num_proc if num_proc > 1 else None,
                    desc="tokenizing pairs", cache_file_name=cache_file, load_from_cache_file=cache_file is not None)
    counts = Counter(mapped["status"])
    kept = mapped.filter(lambda s: not s.startswith("dropped"), input_columns="status")
    report = TokenizeReport(n_pairs=len(mapped), n_kept=len(kept), counts=dict(counts), chat_render=render)
    return kept, report
