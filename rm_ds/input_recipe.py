"""The input recipe: how the trainer turned (prompt, response) into token ids, written next to the model.

Export writes it as ``rm_ds_recipe.json`` in the exported folder and as ``rm_ds_recipe`` in its
``config.json``; ``rm_ds.serve.scorer`` reads it back so that scores outside training use exactly the
training inputs. A folder without one (any Hugging Face reward model) gets ``default_recipe``.

An example (tiny-llama, no chat template)::

    {"version": 1, "tokenize_version": "3", "chat_template": false, "chat_render": "hh", "chat_template_sha256": null,
     "response_separator": "\\n", "prompt_special_tokens": true, "response_special_tokens": false,
     "eos_token": "[SEP]", "eos_token_id": 102, "pad_token": "[PAD]", "pad_token_id": 0,
     "lead_token_ids": [101], "max_length": 64, "truncation_side": "left", "overlong": "truncate",
     "token_type_ids": "none", "score_position": "last_non_pad", "attn_implementation": "sdpa"}

Rules the fields name (``rm_ds.data.tokenize`` applies them; nothing here re-implements them):

- text prompt: ``tokenizer(prompt)`` with its special tokens; response:
  ``tokenizer(response_separator + response, add_special_tokens=False) + [eos]``;
- chat (message lists, or text with ``chat_template``): the prompt is the template rendered with
  ``add_generation_prompt=True``, the response what the whole conversation adds after it, stripped
  of trailing whitespace, ending with eos;
- chat data on a tokenizer without a template (``chat_render: hh``): the conversation is rendered as
  text by HH's rule, ``"\\n\\nHuman: <user>\\n\\nAssistant: <assistant>..."`` with the prompt ending in
  ``"\\n\\nAssistant:"`` and the response ``" " + reply`` (``rm_ds.data.tokenize.render_hh``), then tokenised
  as text; ``chat_render: template``: the chat template as above;
- over ``max_length``: the prompt loses tokens from the left (``truncation_side``), a leading
  token in ``lead_token_ids`` (BOS/CLS) stays; a response too long on its own is cut from the right
  with eos kept last (``overlong: truncate``) or not scored (``drop``);
- no ``token_type_ids`` are passed (the model's default, all zeros); the reward is the head's
  output at the last non-pad token (decoders: the final eos) or at the first token (encoders: [CLS]).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rm_ds.data.tokenize import TOKENIZE_VERSION, TokenizeOptions, eos_id, resolve_chat_render

log = logging.getLogger(__name__)

RECIPE_FILE = "rm_ds_recipe.json"
RECIPE_VERSION = 1
DEFAULT_MAX_LENGTH = 2048
"""Cap for folders without a recipe whose tokenizer and config name no usable maximum."""


@dataclass(frozen=True)
class InputRecipe:
    max_length: int
    """Token cap per sequence (prompt + response)."""
    chat_template: bool
    """Text prompts and responses were rendered through the tokenizer's chat template."""
    eos_token_id: int
    """The score token appended to every response (eos, or sep for BERT-style tokenizers)."""
    pad_token_id: int
    """Pad id; on decoders the reward is read at the last token that is not this one."""
    response_separator: str = "\n"
    """Text placed before the response when no chat template is used."""
    chat_render: Literal["template", "hh"] = "template"
    """How message lists became text in training: the chat template, or HH's Human:/Assistant: rule."""
    overlong: Literal["truncate", "drop"] = "truncate"
    """A response longer than max_length on its own: cut it (eos kept last) or do not score it."""
    chat_template_sha256: str | None = None
    """sha256 of the tokenizer's chat template at training time (None: it had none)."""
    eos_token: str | None = None
    """The eos token's text."""
    pad_token: str | None = None
    """The pad token's text."""
    lead_token_ids: tuple[int, ...] = ()
    """BOS/CLS ids that truncation keeps when they open the prompt."""
    prompt_special_tokens: bool = True
    """Text prompts are tokenised with the tokenizer's special tokens (BOS/CLS, SEP)."""
    response_special_tokens: bool = False
    """Responses are tokenised without special tokens (eos is appended explicitly)."""
    truncation_side: Literal["left"] = "left"
    """The prompt is cut from its left first."""
    token_type_ids: Literal["none"] = "none"
    """token_type_ids are never passed: the model's default (zeros)."""
    score_position: Literal["last_non_pad", "first"] = "last_non_pad"
    """Where the reward is read: the last non-pad token (decoder heads) or the first token (encoders)."""
    attn_implementation: str = "sdpa"
    """Attention implementation used in training (scoring loads the model with it)."""
    tokenize_version: str = TOKENIZE_VERSION
    """Version of rm_ds.data.tokenize's rules the model was trained with."""
    version: int = RECIPE_VERSION
    """Version of this record's layout."""

    def tokenize_options(self) -> TokenizeOptions:
        """The options ``rm_ds.data.tokenize`` takes: the same ones the trainer used."""
        return TokenizeOptions(max_length=self.max_length, overlong=self.overlong, chat_template=self.chat_template,
                               response_separator=self.response_separator, chat_render=self.chat_render)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lead_token_ids"] = list(self.lead_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "recipe") -> InputRecipe:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{where}: unknown recipe key(s) {unknown} (written by a newer rm_ds?)")
        missing = [n for n in ("max_length", "chat_template", "eos_token_id", "pad_token_id") if n not in d]
        if missing:
            raise ValueError(f"{where}: recipe lacks {missing}")
        if int(d.get("version", RECIPE_VERSION)) > RECIPE_VERSION:
            raise ValueError(f"{where}: recipe version {d['version']} is newer than this rm_ds reads "
                             f"({RECIPE_VERSION})")
        # before chat_render was recorded, chat data needed a template: the template rule if one was recorded
        render = d.get("chat_render", "template" if d.get("chat_template_sha256") else "hh")
        return cls(**{**d, "lead_token_ids": tuple(d.get("lead_token_ids", ())), "chat_render": render})


def template_sha256(tokenizer) -> str | None:
    t = getattr(tokenizer, "chat_template", None)
    return hashlib.sha256(str(t).encode()).hexdigest() if t else None


def build_recipe(tokenizer, *, max_length: int, chat_template: bool, response_separator: str, overlong: str,
                 last_token_pooling: bool, attn_implementation: str = "sdpa") -> InputRecipe:
    """The recipe for a tokenizer whose pad token is already resolved (``rm_ds.model.resolve_pad_token``)."""
    lead = tuple(t for t in (tokenizer.bos_token_id, tokenizer.cls_token_id) if t is not None)
    eos = eos_id(tokenizer)
    return InputRecipe(max_length=max_length, chat_template=chat_template, eos_token_id=eos,
                       pad_token_id=int(tokenizer.pad_token_id), response_separator=response_separator,
                       chat_render=resolve_chat_render(tokenizer),
                       overlong=overlong, chat_template_sha256=template_sha256(tokenizer),
                       eos_token=tokenizer.convert_ids_to_tokens(eos), pad_token=tokenizer.pad_token,
                       lead_token_ids=lead, score_position="last_non_pad" if last_token_pooling else "first",
                       attn_implementation=attn_implementation)


def recipe_for_config(cfg, tokenizer) -> InputRecipe:
    """The recipe of a training config (``rm_ds.config.Config``) and its tokenizer (pad resolved)."""
    from rm_ds.model import config_pools_last_token

    d = cfg.data
    return build_recipe(tokenizer, max_length=d.max_length, chat_template=d.chat_template,
                        response_separator=d.response_separator, overlong=d.overlong,
                        last_token_pooling=config_pools_last_token(cfg.model),
                        attn_implementation=cfg.model.attn_implementation)


def write_recipe(folder: str | Path, cfg, tokenizer) -> Path:
    """Export's one call: ``rm_ds_recipe.json`` in ``folder`` and ``rm_ds_recipe`` in its config.json."""
    folder = Path(folder)
    recipe = recipe_for_config(cfg, tokenizer).to_dict()
    path = folder / RECIPE_FILE
    path.write_text(json.dumps(recipe, indent=1))
    config_json = folder / "config.json"
    if config_json.exists():  # absent for a PEFT adapter folder: the JSON file alone carries it there
        conf = json.loads(config_json.read_text())
        conf["rm_ds_recipe"] = recipe
        config_json.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    return path


def read_recipe(folder: str | Path, model_config=None) -> InputRecipe | None:
    """The folder's recipe (``rm_ds_recipe.json``, else ``config.rm_ds_recipe``), or None."""
    path = Path(folder) / RECIPE_FILE
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
        return InputRecipe.from_dict(data, where=str(path))
    data = getattr(model_config, "rm_ds_recipe", None) if model_config is not None else None
    if data:
        return InputRecipe.from_dict(dict(data), where=f"{folder}/config.json rm_ds_recipe")
    return None


def default_recipe(tokenizer, model_config, *, last_token_pooling: bool) -> InputRecipe:
    """For a reward model not trained by rm_ds: its chat template if it has one, else ``"\\n"`` joins
    prompt and response; the cap is the smaller of the tokenizer's and the config's maxima."""
    caps = [getattr(tokenizer, "model_max_length", None), getattr(model_config, "max_position_embeddings", None)]
    caps = [int(c) for c in caps if isinstance(c, int) and 8 <= c < 1_000_000]
    return build_recipe(tokenizer, max_length=min(caps) if caps else DEFAULT_MAX_LENGTH,
                        chat_template=bool(getattr(tokenizer, "chat_template", None)), response_separator="\n",
                        overlong="truncate", last_token_pooling=last_token_pooling,
                        attn_implementation=getattr(model_config, "_attn_implementation", None) or "sdpa")


def check_tokenizer(recipe: InputRecipe, tokenizer, *, where: str) -> None:
    """Refuse a tokenizer that would build different inputs from the recorded ones."""
    problems = []
    if eos_id(tokenizer) != recipe.eos_token_id:
        problems.append(f"eos/score token id {eos_id(tokenizer)} != recorded {recipe.eos_token_id}")
    if tokenizer.pad_token_id != recipe.pad_token_id:
        problems.append(f"pad token id {tokenizer.pad_token_id} != recorded {recipe.pad_token_id}")
    if recipe.chat_template_sha256 is not None and template_sha256(tokenizer) != recipe.chat_template_sha256:
        problems.append("the chat template differs from the one used in training")
    if recipe.chat_render == "template" and not getattr(tokenizer, "chat_template", None):
        problems.append("training rendered conversations with a chat template; this tokenizer has none")
    if problems:
        raise ValueError(f"{where}: the tokenizer does not match the model's input recipe: " + "; ".join(problems))
