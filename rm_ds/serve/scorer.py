"""Score responses and pairs with a trained reward model, exactly as the trainer did.

    scorer = load_scorer("runs/default/export/final")          # or a run dir, or any HF RM folder
    r = scorer.score_responses(["What is 2+2?"], ["4"])          # (N,) or (N, K) for K objectives
    rc, rr = scorer.score_pairs(prompts, chosen, rejected)       # two such arrays
    scorer.probability(rc, rr)                                    # calibrated P(chosen > rejected)

Inputs go through the trainer's own code: ``rm_ds.data.tokenize`` (with the exported input recipe,
``rm_ds.input_recipe``), ``rm_ds.data.collate``/``rm_ds.data.packing`` and ``rm_ds.model.rewards``. Work is
planned by ``rm_ds.data.sampler.eval_shards`` (longest first, micro-batches under a token budget, every
item exactly once over ``world_size`` shards), so a score does not depend on what it was batched
with (right padding, attention mask) beyond float rounding. Single responses are laid out two per
padded pair (``prompt_ids=[]``, the whole sequence as one "response"); pairs on decoder models use
prefix sharing (one ``[P|C|R]`` row per pair). No DeepSpeed here: a plain model in eval mode.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rm_ds.data.collate import collate_pairs, make_collate
from rm_ds.input_recipe import InputRecipe, check_tokenizer, default_recipe, read_recipe
from rm_ds.data.sampler import eval_shards
from rm_ds.data.tokenize import encode_pair, leading_special_ids, fit_to_length
from rm_ds.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_TOKEN_BUDGET = 1024
"""Pair-tokens per forward (rows x padded length) when none is given (at least 2 x max_length). Small on
purpose: on CPU, MiniLM scored 256 WordNet pairs fastest at 1024-2048 (fp32 and bf16) and ~35% slower at
8192, where the activations no longer fit the caches."""
DTYPES = ("fp32", "bf16")
"""Scoring precisions: fp32 (exact, the default) or bf16 (fp32 weights, forwards under bf16 autocast)."""
TRUNCATED = ("prompt_truncated", "response_truncated")
CUT_CHARS_PER_TOKEN = 8
"""Texts longer than this many characters per window token are cut before tokenisation (``Scorer._cut``)."""
CUT_MARGIN_TOKENS = 16
"""Tokens a cut piece must have beyond the window, so that the cut lies well outside what is kept."""


@dataclass
class Encoded:
    """Token ids of one item: a response (``chosen_ids`` only) or a pair; ``status`` from tokenize."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int] | None
    status: str

    @property
    def scored(self) -> bool:
        return not self.status.startswith("dropped")


@dataclass
class Scorer:
    """One reward model with its tokenizer, input recipe and calibration."""

    model: Any
    tokenizer: Any
    recipe: InputRecipe
    name: str
    """Where it was loaded from."""
    calibration: dict | None = None
    """config.rm_ds_calibration: reward_mean, reward_std, temperature, beta (None: uncalibrated)."""
    objectives: list[str] = field(default_factory=lambda: ["reward"])
    """Output names: K > 1 for multi-objective heads (from id2label)."""
    token_budget: int = DEFAULT_TOKEN_BUDGET
    """Cap on rows x padded length per forward."""
    prefix_sharing: bool = False
    """Score pairs as one [P|C|R] row (decoders with one output)."""
    dtype: str = "fp32"
    """fp32, or bf16: the forward under torch.autocast(bfloat16) with fp32 weights; rewards come back fp32."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        tok = self.tokenizer
        self._opts = self.recipe.tokenize_options()
        self._eos = self.recipe.eos_token_id
        self._lead = leading_special_ids(tok)
        # the same whitespace set rm_ds.data.tokenize.tokenize_pairs strips after the final eos
        self._ws = {t for t in tok.convert_tokens_to_ids(tok.tokenize("\n \n\n")) if t is not None and t != self._eos}
        self._pair_collate = make_collate(prefix_sharing=self.prefix_sharing, packing=False,
                                          pad_id=self.recipe.pad_token_id, eos_id=self._eos)

    @property
    def n_objectives(self) -> int:
        return len(self.objectives)

    # ------------------------------------------------------------------ tokenisation (rm_ds.data.tokenize)

    def _cut(self, text: str, *, keep_end: bool) -> str:
        """``text`` cut to the part the window can use, before it is tokenised whole (a 3.5 MB string took
        16 s): the last (prompt, truncated from the left) or first (response, cut from the right)
        ``CUT_CHARS_PER_TOKEN * max_length`` characters, doubled until that piece alone has
        ``max_length + CUT_MARGIN_TOKENS`` tokens. Then every token the truncation keeps lies more than
        the margin away from the cut, so the ids, scores and truncation status equal the whole text's."""
        m = self._opts.max_length
        n = CUT_CHARS_PER_TOKEN * m
        while n < len(text):
            piece = text[len(text) - n:] if keep_end else text[:n]
            if len(self.tokenizer(piece, add_special_tokens=False)["input_ids"]) >= m + CUT_MARGIN_TOKENS:
                return piece
            n *= 2  # very long tokens (whitespace runs, unknown words): take more
        return text

    def _window(self, x, *, keep_end: bool):
        """A prompt or response (a string or messages) with every text cut as ``_cut`` does."""
        if isinstance(x, str):
            return self._cut(x, keep_end=keep_end)
        if x is None:
            return x
        return [{**msg, "content": self._cut(msg["content"], keep_end=keep_end)} for msg in x]

    def _encode(self, prompt, chosen, rejected) -> Encoded:
        fmt = "chat" if any(isinstance(x, list) for x in (prompt, chosen, rejected)) else "text"
        prompt = self._window(prompt, keep_end=True)
        chosen, rejected = self._window(chosen, keep_end=False), self._window(rejected, keep_end=False)
        enc = encode_pair(self.tokenizer, fmt, prompt, chosen, chosen if rejected is None else rejected,
                           self._opts, self._eos, self._ws)
        if enc is None:
            return Encoded([], [self._eos], None if rejected is None else [self._eos], "dropped_template")
        p, c, r, status = fit_to_length(*enc, max_length=self._opts.max_length, overlong=self._opts.overlong,
                                        lead=self._lead, eos=self._eos)
        return Encoded(p, c, None if rejected is None else r, status)

    def encode_responses(self, prompts: list, responses: list) -> list[Encoded]:
        _same_length(prompts=prompts, responses=responses)
        return [self._encode(p, r, None) for p, r in zip(prompts, responses)]

    def encode_pairs(self, prompts: list, chosen: list, rejected: list) -> list[Encoded]:
        _same_length(prompts=prompts, chosen=chosen, rejected=rejected)
        return [self._encode(p, c, r) for p, c, r in zip(prompts, chosen, rejected)]

    # ------------------------------------------------------------------ forwards

    def plan(self, items: list[Encoded], *, rank: int = 0, world_size: int = 1) -> list[list[int]]:
        """This rank's micro-batches (indices into ``items``), longest first; dropped items skipped."""
        keep = [i for i, e in enumerate(items) if e.scored]
        if not keep:
            return []
        lengths = [self._cost(items[i]) for i in keep]
        budget = max(self.token_budget, max(lengths))
        shards = eval_shards(lengths, world_size=world_size, token_budget=budget, pairs_per_micro=None)
        return [[keep[j] for j in mb] for mb in shards[rank] if mb]

    def _cost(self, e: Encoded) -> int:
        p = len(e.prompt_ids)
        if e.rejected_ids is None:
            return p + len(e.chosen_ids)
        if self.prefix_sharing:
            return p + len(e.chosen_ids) + len(e.rejected_ids)
        return p + max(len(e.chosen_ids), len(e.rejected_ids))

    def _rewards(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``rm_ds.model.rewards`` in this scorer's precision (bf16: under autocast; the rewards are fp32)."""
        from rm_ds.model import rewards

        device = next(self.model.parameters()).device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
            c, r = rewards(self.model, batch)
        return c.float(), r.float()

    @torch.inference_mode()
    def forward_batch(self, items: list[Encoded]) -> np.ndarray:
        """Rewards of one micro-batch: (n, K) for responses, (n, 2, K) for pairs (chosen, rejected)."""
        if items[0].rejected_ids is None:
            seqs = [e.prompt_ids + e.chosen_ids for e in items]
            b = math.ceil(len(seqs) / 2)
            second = seqs[b:] + seqs[len(seqs) - 1:] * (2 * b - len(seqs))  # an odd count repeats its last
            rows = [{"prompt_ids": [], "chosen_ids": x, "rejected_ids": y} for x, y in zip(seqs[:b], second)]
            c, r = self._rewards(collate_pairs(rows, pad_id=self.recipe.pad_token_id, eos_id=self._eos))
            out = torch.cat([c, r]).reshape(2 * b, -1)[: len(seqs)]
            return out.double().numpy()
        rows = [{"prompt_ids": e.prompt_ids, "chosen_ids": e.chosen_ids, "rejected_ids": e.rejected_ids} for e in items]
        c, r = self._rewards(self._pair_collate(rows))
        k = self.n_objectives
        return torch.stack([c.reshape(-1, k), r.reshape(-1, k)], dim=1).double().numpy()

    def score_items(self, items: list[Encoded], *, rank: int = 0, world_size: int = 1,
                    progress=None) -> tuple[np.ndarray, np.ndarray]:
        """(indices, rewards) for this rank's share of ``items``; rewards (n, K) or (n, 2, K)."""
        idx, out = [], []
        for mb in self.plan(items, rank=rank, world_size=world_size):
            out.append(self.forward_batch([items[i] for i in mb]))
            idx.extend(mb)
            if progress is not None:
                progress(len(mb))
        pair = bool(items) and items[0].rejected_ids is not None
        shape = (0, 2, self.n_objectives) if pair else (0, self.n_objectives)
        return np.asarray(idx, dtype=np.int64), np.concatenate(out) if out else np.zeros(shape)

    def score_encoded(self, items: list[Encoded]) -> np.ndarray:
        """Rewards for every item in input order (NaN where not scored); (N, K) or (N, 2, K)."""
        pair = bool(items) and items[0].rejected_ids is not None
        full = np.full((len(items), 2, self.n_objectives) if pair else (len(items), self.n_objectives), np.nan)
        idx, vals = self.score_items(items)
        full[idx] = vals
        return full

    # ------------------------------------------------------------------ scoring

    def score_responses(self, prompts: list, responses: list) -> np.ndarray:
        """Rewards (N,) for one objective, (N, K) for K; prompts/responses are strings or message lists."""
        out = self.score_encoded(self.encode_responses(prompts, responses))
        return out[:, 0] if self.n_objectives == 1 else out

    def score_pairs(self, prompts: list, chosen: list, rejected: list) -> tuple[np.ndarray, np.ndarray]:
        out = self.score_encoded(self.encode_pairs(prompts, chosen, rejected))
        c, r = out[:, 0], out[:, 1]
        return (c[:, 0], r[:, 0]) if self.n_objectives == 1 else (c, r)

    # ------------------------------------------------------------------ calibration

    def normalise(self, rewards: np.ndarray) -> np.ndarray | None:
        """(r - reward_mean) / reward_std from the calibration record, or None without one."""
        cal = self.calibration or {}
        if cal.get("reward_mean") is None or not cal.get("reward_std"):
            return None
        return (np.asarray(rewards) - np.asarray(cal["reward_mean"])) / np.asarray(cal["reward_std"])

    def probability(self, chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
        """P(chosen > rejected) = sigmoid(beta (r_c - r_r) / T) with the fitted temperature (T = beta = 1
        when uncalibrated)."""
        cal = self.calibration or {}
        beta = float(cal.get("beta") or 1.0)
        t = np.asarray(cal.get("temperature") or 1.0)
        z = beta * (np.asarray(chosen) - np.asarray(rejected)) / t
        return 1.0 / (1.0 + np.exp(-z))

    @property
    def calibrated(self) -> bool:
        return bool(self.calibration and self.calibration.get("temperature"))

    def info(self) -> dict:
        cal = {k: v for k, v in (self.calibration or {}).items()
               if k in ("reward_mean", "reward_std", "temperature", "beta", "step", "eval_pairs", "eval_set_sha256",
                        "checkpoint")}
        return {"name": self.name, "objectives": self.objectives, "calibration": cal or None,
                "recipe": self.recipe.to_dict(), "prefix_sharing": self.prefix_sharing,
                "token_budget": self.token_budget, "dtype": self.dtype,
                "model_type": getattr(self.model.config, "model_type", None)}


def _same_length(**lists) -> None:
    lens = {k: len(v) for k, v in lists.items()}
    if len(set(lens.values())) > 1:
        raise ValueError(f"inputs differ in length: {lens}")


# ---------------------------------------------------------------------------------------------- loading


def resolve_model_dir(model: str, *, step: str | None = None) -> Path:
    """An exported folder, a run directory (its ``export/<step>``, exported now if missing) or a HF folder."""
    from rm_ds.builtin import resolve_model

    path = Path(resolve_model(model))
    if (path / "config.yaml").exists() and (path / "checkpoints").is_dir():  # a training run directory
        step = step or "final"
        out = path / "export" / step
        if not (out / "rm_ds_export.json").exists():
            log.info("%s: no export for step %r yet: exporting it (needs DeepSpeed)", path, step)
            from rm_ds.train.export import export_run

            export_run(path, step=step)
        return out
    if step is not None:
        raise ConfigError(f"--step {step!r}: {model} is not a run directory (no config.yaml and checkpoints/)")
    if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise ConfigError(f"--model {model}: not a model folder (no config.json), nor a run directory")
    return path


def _load_model(folder: Path, attn_implementation: str):
    from transformers import AutoModelForSequenceClassification

    meta_file = folder / "rm_ds_export.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    if meta.get("adapter"):  # PEFT adapter carrying the reward head; the base comes from rm_ds_export.json
        from peft import PeftModel

        from rm_ds.builtin import resolve_model

        base = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(meta["base_model"]), num_labels=1, dtype=torch.float32,
            attn_implementation=attn_implementation)
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32,
                                                                   attn_implementation=attn_implementation)
    return model.eval(), meta


def load_scorer(model: str, *, step: str | None = None, token_budget: int | None = None,
                allow_pad_eq_eos: bool = False, prefix_sharing: bool | None = None, dtype: str = "fp32") -> Scorer:
    """A Scorer for an exported folder, a run directory or any HF sequence-classification RM folder.

    The pad/eos checks of training apply (``rm_ds.model.resolve_pad_token``): a last-token-pooling
    model whose pad equals eos is refused unless ``allow_pad_eq_eos``. ``prefix_sharing`` (default:
    on for decoders with one output) only changes how pairs are laid out, not their scores.
    ``dtype``: fp32 (exact) or bf16 (fp32 weights, forwards under bf16 autocast: faster on CPUs with
    AMX and on GPUs; rewards within ~1e-3 of fp32, see docs/scoring-and-serving.md "Scoring precision").
    """
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    from transformers import AutoConfig, AutoTokenizer

    from rm_ds.config import ModelConfig
    from rm_ds.model import pools_last_token, resolve_pad_token

    folder = resolve_model_dir(model, step=step)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    meta = json.loads((folder / "rm_ds_export.json").read_text()) if (folder / "rm_ds_export.json").exists() else {}
    mc = AutoConfig.from_pretrained(folder if (folder / "config.json").exists() else
                                    _base_path(meta))
    recipe = read_recipe(folder, mc)
    last = pools_last_token(mc)
    if tokenizer.pad_token_id is None and getattr(mc, "pad_token_id", None) is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(int(mc.pad_token_id))
    pad_cfg = ModelConfig(name_or_path=str(folder), pad_token=recipe.pad_token if recipe else None,
                          allow_pad_eq_eos=allow_pad_eq_eos)
    resolve_pad_token(tokenizer, pad_cfg, last_token_pooling=last)
    if recipe is None:
        recipe = default_recipe(tokenizer, mc, last_token_pooling=last)
        log.warning("%s: no rm_ds input recipe (not exported by rm_ds): using %s chat template, max_length %d",
                    folder, "the" if recipe.chat_template else "no", recipe.max_length)
    else:
        check_tokenizer(recipe, tokenizer, where=str(folder))
    net, meta = _load_model(folder, recipe.attn_implementation)
    if net.config.pad_token_id != recipe.pad_token_id:
        net.config.pad_token_id = recipe.pad_token_id  # the head pools at the last token that is not this one
    k = int(getattr(net.config, "num_labels", 1))
    objectives = objective_names(net.config)
    shares = last and k == 1 and recipe.attn_implementation in ("sdpa", "eager")
    if prefix_sharing and not shares:
        raise ConfigError(f"{folder}: prefix sharing needs a last-token-pooling model with one output and sdpa/eager")
    budget = max(token_budget or DEFAULT_TOKEN_BUDGET, 2 * recipe.max_length)
    calibration = getattr(net.config, "rm_ds_calibration", None) or (meta.get("calibration") if meta else None)
    return Scorer(model=net, tokenizer=tokenizer, recipe=recipe, name=str(model), calibration=calibration,
                  objectives=objectives, token_budget=budget, dtype=dtype,
                  prefix_sharing=shares if prefix_sharing is None else bool(prefix_sharing))


def _base_path(meta: dict) -> str:
    from rm_ds.builtin import resolve_model

    return resolve_model(meta["base_model"])


def objective_names(model_config) -> list[str]:
    """``["reward"]`` for one output; else the config's ``id2label`` names (``objective_<i>`` when generic)."""
    k = int(getattr(model_config, "num_labels", 1))
    if k == 1:
        return ["reward"]
    id2label = getattr(model_config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), f"objective_{i}"))) for i in range(k)]
    generic = all(n == f"LABEL_{i}" for i, n in enumerate(names))
    return [f"objective_{i}" for i in range(k)] if generic else names


# ---------------------------------------------------------------------------------------------- columns


def response_columns(scorers: list[Scorer], rewards: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Output columns for single responses; ``rewards[m]`` is model m's (N, K) array.

    One model: ``reward`` and ``reward_norm`` (K = 1) or ``reward/<objective>`` (+ ``_norm``).
    An ensemble (one output each): ``reward@m<i>`` per model, ``reward`` their mean, ``reward_std``
    (the members' spread), and when every member is calibrated ``reward_norm`` (the mean of the
    members' normalised rewards) with ``reward_norm@m<i>`` and ``reward_norm_std``.
    """
    if len(scorers) == 1:
        s, r = scorers[0], rewards[0]
        cols: dict[str, np.ndarray] = {}
        norm = s.normalise(r[:, 0] if s.n_objectives == 1 else r)
        if s.n_objectives == 1:
            cols["reward"] = r[:, 0]
            if norm is not None:
                cols["reward_norm"] = norm
            return cols
        for j, name in enumerate(s.objectives):
            cols[f"reward/{name}"] = r[:, j]
            if norm is not None:
                cols[f"reward_norm/{name}"] = norm[:, j]
        return cols
    stack = np.stack([r[:, 0] for r in rewards])  # (M, N)
    cols = {f"reward@m{i}": stack[i] for i in range(len(scorers))}
    cols["reward"] = stack.mean(0)
    cols["reward_std"] = stack.std(0)
    norms = [s.normalise(r[:, 0]) for s, r in zip(scorers, rewards)]
    if all(n is not None for n in norms):
        nstack = np.stack(norms)
        cols.update({f"reward_norm@m{i}": nstack[i] for i in range(len(scorers))})
        cols["reward_norm"] = nstack.mean(0)
        cols["reward_norm_std"] = nstack.std(0)
    return cols


def pair_columns(scorers: list[Scorer], rewards: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Output columns for pairs; ``rewards[m]`` is model m's (N, 2, K) array.

    One model: ``reward_chosen``, ``reward_rejected`` (+ ``_norm``), ``p_chosen`` (calibrated
    P(chosen > rejected)); per objective ``.../<objective>`` when K > 1. An ensemble: the same per
    model with ``@m<i>``, then the mean rewards (and ``_norm``, the mean of the members' normalised
    rewards, when every member is calibrated), ``p_chosen`` (mean of the models' probabilities),
    ``margin_std`` and ``disagreement`` (share of models preferring the other response than the
    ensemble mean does).
    """
    if len(scorers) == 1:
        s, r = scorers[0], rewards[0]
        c, rj = r[:, 0], r[:, 1]
        names = [""] if s.n_objectives == 1 else [f"/{n}" for n in s.objectives]
        cols: dict[str, np.ndarray] = {}
        nc, nr, p = s.normalise(c), s.normalise(rj), s.probability(c, rj)
        for j, suffix in enumerate(names):
            cols[f"reward_chosen{suffix}"] = c[:, j]
            cols[f"reward_rejected{suffix}"] = rj[:, j]
            if nc is not None:
                cols[f"reward_chosen_norm{suffix}"] = nc[:, j]
                cols[f"reward_rejected_norm{suffix}"] = nr[:, j]
            cols[f"p_chosen{suffix}"] = p[:, j]
        return cols
    cols = {}
    margins, probs = [], []
    for i, (s, r) in enumerate(zip(scorers, rewards)):
        cols[f"reward_chosen@m{i}"] = r[:, 0, 0]
        cols[f"reward_rejected@m{i}"] = r[:, 1, 0]
        probs.append(s.probability(r[:, 0, 0], r[:, 1, 0]))
        cols[f"p_chosen@m{i}"] = probs[-1]
        margins.append(r[:, 0, 0] - r[:, 1, 0])
    m = np.stack(margins)
    cols["reward_chosen"] = np.mean([r[:, 0, 0] for r in rewards], axis=0)
    cols["reward_rejected"] = np.mean([r[:, 1, 0] for r in rewards], axis=0)
    norms = [(s.normalise(r[:, 0, 0]), s.normalise(r[:, 1, 0])) for s, r in zip(scorers, rewards)]
    if all(nc is not None for nc, _ in norms):
        cols["reward_chosen_norm"] = np.mean([nc for nc, _ in norms], axis=0)
        cols["reward_rejected_norm"] = np.mean([nr for _, nr in norms], axis=0)
    cols["p_chosen"] = np.mean(probs, axis=0)
    cols["margin_std"] = m.std(0)
    cols["disagreement"] = (np.sign(m) != np.sign(m.mean(0))[None]).mean(0)
    return cols


def check_ensemble(scorers: list[Scorer]) -> None:
    if len(scorers) > 1 and any(s.n_objectives != 1 for s in scorers):
        raise ConfigError("--model: an ensemble (--model given more than once) needs models with one output each; "
                         f"got objectives {[s.objectives for s in scorers]}")
