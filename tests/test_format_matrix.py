"""Every published format on every kind of tokenizer (docs/data-formats.md), and the load-time refusals.

    PYTHONPATH=. python -m pytest tests/test_format_matrix.py -q

The matrix (format x tokenizer: MiniLM, an encoder without a chat template; SmolLM2, a decoder with
one; the tiny Llama, a decoder without one) loads, tokenises, inspects and encodes for scoring each
cell with the real tokenizers, and checks that the scorer builds the very ids training saw. One
tiny model per tokenizer kind is then trained on HH (chat data), evaluated, exported and scored by
``rm-ds score``, the server and the plain-transformers snippet of docs/data-formats.md.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rm_ds.errors import DataError

REPO = Path(__file__).resolve().parents[1]
TOKENIZERS = ("minilm", "smollm2", "tiny-llama")
HAS_TEMPLATE = {"minilm": False, "smollm2": True, "tiny-llama": False}
N = 6


def user(c: str) -> dict:
    return {"role": "user", "content": c}


def bot(c: str) -> dict:
    return {"role": "assistant", "content": c}


def hh(i: int, last: str) -> str:
    return f"\n\nHuman: Hi {i}\n\nAssistant: Hello\n\nHuman: Colour?\n\nAssistant: {last}"


ROWS = {
    "hh": [{"chosen": hh(i, f"Blue {i}"), "rejected": hh(i, "No.")} for i in range(N)],
    "shp": [{"post_id": f"p{i}", "history": f"Why is the sky {i}?", "human_ref_A": f"light scatters {i}",
             "human_ref_B": "no idea", "labels": i % 2, "score_A": 9, "score_B": 3, "c_root_id_A": "a",
             "c_root_id_B": "b", "domain": "askscience"} for i in range(N)],
    "ultrafeedback-binarized": [{"prompt": f"Q{i}", "prompt_id": f"q{i}", "chosen": [user(f"Q{i}"), bot(f"yes {i}")],
                                 "rejected": [user(f"Q{i}"), bot("no")], "score_chosen": 8.0, "score_rejected": 3.0}
                                for i in range(N)],
    "ultrafeedback-raw": [{"instruction": f"Say hi {i}", "completions": [
        {"response": f"hello {i}", "overall_score": 9.0}, {"response": f"go away {i}", "overall_score": 2.0}]}
        for i in range(N)],
    "helpsteer-ratings": [{"prompt": f"Q{i // 2}", "response": f"resp {i}", "helpfulness": i % 2 * 3}
                          for i in range(2 * N)],
    "helpsteer2-preference": [{"prompt": f"Q{i}", "response_1": f"first {i}", "response_2": f"second {i}",
                               "preference_strength": (-2, 3)[i % 2]} for i in range(N)],
    "scored": [{"id": f"s{i}", "prompt": f"prompt {i}", "responses": [f"a {i}", f"b {i}"], "rewards": [0.1, 1.0 + i]}
               for i in range(N)],
    "messages": [{"chosen": [{"role": "system", "content": "Be brief."}, user(f"q {i}"), bot(f"fine {i}"),
                             user("and?"), bot(f"done {i}")],
                  "rejected": [{"role": "system", "content": "Be brief."}, user(f"q {i}"), bot(f"fine {i}"),
                               user("and?"), bot("what")]} for i in range(N)],
}
FORMAT = {"hh": "hh", "shp": "shp", "ultrafeedback-binarized": "ultrafeedback", "ultrafeedback-raw": "ultrafeedback",
          "helpsteer-ratings": "helpsteer", "helpsteer2-preference": "helpsteer", "scored": "scored",
          "messages": "pairs"}
CHAT = {"hh", "ultrafeedback-binarized", "messages"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    return {name: write_jsonl(root / f"{name}.jsonl", rows) for name, rows in ROWS.items()}


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    from rm_ds.builtin import resolve_model
    from rm_ds.model import load_tokenizer

    return {name: (resolve_model(f"builtin:{name}"), load_tokenizer(f"builtin:{name}")) for name in TOKENIZERS}


def _ids(x) -> list[int]:
    return [int(t) for t in x]


@pytest.mark.parametrize("tok_name", TOKENIZERS)
@pytest.mark.parametrize("name", list(ROWS))
def test_format_on_tokenizer(files, tokenizers, name, tok_name, capsys):
    """load -> tokenise -> inspect -> the scorer's ids, for one (format, tokenizer) cell."""
    from rm_ds.cli import main as cli_main
    from rm_ds.data.pairs import load_pairs
    from rm_ds.data.tokenize import TokenizeOptions, eos_id, tokenize_pairs
    from rm_ds.input_recipe import build_recipe
    from rm_ds.serve.scorer import Scorer

    path, tok = tokenizers[tok_name]
    ds, report = load_pairs(str(files[name]))
    assert report.format == FORMAT[name] and not report.skipped
    chat = name in CHAT
    assert set(ds["format"]) == {"chat" if chat else "text"}
    opts = TokenizeOptions(max_length=128)
    tds, treport = tokenize_pairs(ds, tok, opts)
    assert treport.n_kept == len(ds) == treport.counts["ok"]
    want_render = ("template" if HAS_TEMPLATE[tok_name] else "hh") if chat else ""
    assert treport.chat_render == want_render
    if want_render == "hh":
        assert "rendered as text by the HH rule" in treport.summary()
    eos = eos_id(tok)
    assert all(c[-1] == eos and r[-1] == eos for c, r in zip(tds["chosen_ids"], tds["rejected_ids"]))

    if name == "hh" and want_render == "hh":
        # an HH row trains on its own transcript: prompt = up to the last "\n\nAssistant:", response the rest
        for row, p_ids, c_ids, r_ids in zip(ROWS["hh"], tds["prompt_ids"], tds["chosen_ids"], tds["rejected_ids"]):
            k = row["chosen"].rindex("\n\nAssistant:") + len("\n\nAssistant:")
            assert _ids(p_ids) == tok(row["chosen"][:k])["input_ids"]
            for text, ids in ((row["chosen"], c_ids), (row["rejected"], r_ids)):
                assert _ids(ids) == [*tok(text[k:], add_special_tokens=False)["input_ids"], eos]

    # the scorer (the code rm-ds score and rm-ds serve run) builds exactly these ids from the export's recipe
    recipe = build_recipe(tok, max_length=128, chat_template=False, response_separator="\n", overlong="truncate",
                          last_token_pooling=tok_name != "minilm")
    assert recipe.chat_render == ("template" if HAS_TEMPLATE[tok_name] else "hh")
    scorer = Scorer(model=None, tokenizer=tok, recipe=recipe, name=tok_name)
    enc = scorer.encode_pairs(list(ds["prompt"]), list(ds["chosen"]), list(ds["rejected"]))
    assert [(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in enc] == [
        (_ids(p), _ids(c), _ids(r)) for p, c, r in zip(tds["prompt_ids"], tds["chosen_ids"], tds["rejected_ids"])]

    # rm-ds inspect on the same file with the same tokenizer: exit 0, the rendering named
    code = cli_main(["inspect", str(files[name]), "--tokenizer", path, "--max-length", "128"])
    out = capsys.readouterr().out
    assert code == 0, out
    if name != "scored":  # scored-responses files get their own summary (rm_ds.data.inspect.inspect_scored)
        assert f"format: {FORMAT[name]} ({'chat' if chat else 'text'})" in out
        assert f"{len(ds)}/{len(ds)} pairs kept" in out
        assert ("rendered as text by the HH rule" in out) is (want_render == "hh")


# ---------------------------------------------------------------- refusals at load


def test_mixed_shapes_are_refused_at_the_first_row_of_the_other_shape(tmp_path):
    from rm_ds.data.pairs import load_pairs

    plain = {"chosen": "good", "rejected": "bad"}
    path = write_jsonl(tmp_path / "mixed.jsonl", [plain, plain, *ROWS["hh"][:2]])
    with pytest.raises(DataError, match=r"mixed\.jsonl line 3: this row is format hh \(.*\), but \S*mixed\.jsonl "
                                        r"line 1 is format pairs .*set data\.format"):
        load_pairs(str(path))
    # HH first, a plain pair later: refused the other way round
    path = write_jsonl(tmp_path / "mixed2.jsonl", [*ROWS["hh"][:2], plain])
    with pytest.raises(DataError, match=r"mixed2\.jsonl line 3: this row is format pairs"):
        load_pairs(str(path))
    # across the files of a folder too
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [plain])
    write_jsonl(folder / "b.jsonl", ROWS["hh"][:1])
    with pytest.raises(DataError, match=r"b\.jsonl line 1: this row is format hh .*/a\.jsonl line 1 is format pairs"):
        load_pairs(str(folder))
    # data.format names the format: every row is read as it (the HH rows as prompt-less text pairs)
    ds, report = load_pairs(str(path), format="pairs")
    assert report.format == "pairs" and len(ds) == 3


@pytest.mark.parametrize(("row", "match"), [
    ({"chosen": [user("a"), bot("b"), user("c"), bot("d")], "rejected": [user("a"), bot("x")]},
     r"line 1: field 'chosen': 3 messages after the shared prefix \(1 messages\).*different contexts"),
    ({"chosen": [user("a"), bot("x")], "rejected": [user("z"), bot("x2")]},
     r"line 1: field 'chosen': 2 messages after the shared prefix \(0 messages\)"),
    ({"prompt": [user("a"), bot("b")], "chosen": [bot("c")], "rejected": [bot("d")]},
     r"line 1: field 'prompt': ends with an 'assistant' turn \(message 1\)"),
    ({"prompt": "q", "chosen": [user("other"), bot("c")], "rejected": [bot("d")]},
     r"line 1: field 'chosen': 2 messages after prompt \(1 messages\)"),
    ({"chosen": [user("a"), bot("b"), bot("c")], "rejected": [user("a"), bot("b"), bot("d")]},
     r"line 1: field 'chosen': the conversations share 2 messages ending with an 'assistant' turn"),
])
def test_chat_pairs_that_answer_different_contexts_are_refused(tmp_path, row, match):
    from rm_ds.data.pairs import load_pairs

    path = write_jsonl(tmp_path / "chat.jsonl", [row])
    with pytest.raises(DataError, match=match) as e:
        load_pairs(str(path))
    assert "\n" not in str(e.value)


def test_folder_reads_jsonl_gz_and_reports_what_it_does_not_read(tmp_path):
    from rm_ds.data.pairs import load_pairs

    folder = tmp_path / "hs2"
    folder.mkdir()
    rows = ROWS["helpsteer2-preference"]
    with gzip.open(folder / "train.jsonl.gz", "wt") as f:  # HelpSteer2 ships .jsonl.gz
        f.write("".join(json.dumps(r) + "\n" for r in rows[:3]))
    write_jsonl(folder / "more.jsonl", rows[3:])
    (folder / "notes.csv").write_text("a,b\n")
    (folder / "old.tar.gz").write_bytes(gzip.compress(b"x"))
    (folder / "sub").mkdir()
    ds, report = load_pairs(str(folder))
    assert report.format == "helpsteer" and len(ds) == N
    assert sorted(set(ds["file"])) == sorted(str(folder / n) for n in ("more.jsonl", "train.jsonl.gz"))
    assert [e.split(" ")[0] for e in report.not_read] == ["notes.csv", "old.tar.gz", "sub/"]
    assert "3 entries of the folder not read: notes.csv (unsupported file type '.csv'" in report.summary()


def test_chat_template_asked_of_a_tokenizer_without_one_is_a_config_error(tokenizers):
    from rm_ds.data.pairs import load_pairs
    from rm_ds.data.tokenize import TokenizeOptions, tokenize_pairs
    from rm_ds.errors import ConfigError

    _, tok = tokenizers["minilm"]
    ds, _ = load_pairs(str(write_jsonl(Path(os.environ.get("TMPDIR", "/tmp")) / "rm_ds_ct.jsonl",
                                       [{"prompt": "p", "chosen": "a", "rejected": "b"}])))
    with pytest.raises(ConfigError, match=r"^data\.chat_template=true: the tokenizer .* has no chat template"):
        tokenize_pairs(ds, tok, TokenizeOptions(max_length=64, chat_template=True))


def test_recipe_chat_render_read_back_and_checked(tokenizers):
    from rm_ds.input_recipe import InputRecipe, build_recipe, check_tokenizer

    _, minilm = tokenizers["minilm"]
    _, smollm2 = tokenizers["smollm2"]
    base = {"max_length": 64, "chat_template": False, "eos_token_id": 102, "pad_token_id": 0}
    # recipes written before chat_render existed: chat data then needed a template, so a recorded one means it
    assert InputRecipe.from_dict({**base, "chat_template_sha256": None}).chat_render == "hh"
    assert InputRecipe.from_dict({**base, "chat_template_sha256": "ab"}).chat_render == "template"
    recipe = build_recipe(smollm2, max_length=64, chat_template=False, response_separator="\n", overlong="truncate",
                          last_token_pooling=True)
    assert recipe.chat_render == "template" and InputRecipe.from_dict(recipe.to_dict()) == recipe
    no_template = type(smollm2).from_pretrained(smollm2.name_or_path)
    no_template.chat_template = None
    with pytest.raises(ValueError, match="training rendered conversations with a chat template; this tokenizer "
                                         "has none"):
        check_tokenizer(recipe, no_template, where="export")
    assert build_recipe(minilm, max_length=64, chat_template=False, response_separator="\n", overlong="truncate",
                        last_token_pooling=False).chat_render == "hh"


# ---------------------------------------------------------------- train + export + score, one per kind


def _model(kind: str, out: Path) -> str:
    """A tiny random model with the tokenizer of ``kind`` (trains in seconds)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rm_ds.builtin import build_tiny_llama, resolve_model

    if kind == "tiny-llama":
        return resolve_model("builtin:tiny-llama")
    if kind == "smollm2":
        return str(build_tiny_llama(out, seed=3, tokenizer_from="builtin:smollm2"))
    tok = AutoTokenizer.from_pretrained(resolve_model("builtin:minilm"))
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256, num_labels=1,
                        pad_token_id=tok.pad_token_id, architectures=["BertForSequenceClassification"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        BertForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _docs_snippet() -> str:
    text = (REPO / "docs" / "data-formats.md").read_text()
    m = re.search(r"<!-- snippet: plain-transformers-chat -->\n```python\n(.*?)```", text, re.DOTALL)
    assert m, "docs/data-formats.md lost its plain-transformers-chat snippet"
    return m.group(1)


@pytest.fixture(scope="module")
def hh_runs(tmp_path_factory, files):
    """kind -> run directory: `rm-ds train` on HH (train and eval), exported, the three started together."""
    from tests.harness import ENV

    root = tmp_path_factory.mktemp("hh_runs")
    procs, dirs = {}, {}
    for kind in TOKENIZERS:
        dirs[kind] = root / f"run-{kind}"
        args = [sys.executable, "-m", "rm_ds.cli", "train", "--config", "tiny",
                f"model.name_or_path={_model(kind, root / f'model-{kind}')}", f"data.train_path={files['hh']}",
                f"data.eval_path={files['hh']}", "data.max_train_pairs=null", "data.max_eval_pairs=null",
                "data.max_length=64", "train.max_steps=2", "train.global_batch_pairs=4", "eval.every_steps=0",
                f"logging.run_dir={dirs[kind]}", "logging.tensorboard=false", "deepspeed.config=zero0"]
        procs[kind] = subprocess.Popen(args, env={**os.environ, **ENV, "PYTHONPATH": str(REPO)}, cwd=root,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = {}
    for kind, p in procs.items():
        logs[kind], _ = p.communicate(timeout=400)
        assert p.returncode == 0, f"{kind} training failed:\n{logs[kind][-3000:]}"
    return dirs, logs


@pytest.mark.slow
@pytest.mark.parametrize("kind", TOKENIZERS)
def test_hh_trains_evaluates_exports_and_scores_as_trained(hh_runs, files, kind, tmp_path):
    from fastapi.testclient import TestClient

    from rm_ds.cli import main as cli_main
    from rm_ds.data.pairs import load_pairs
    from rm_ds.serve.scorer import load_scorer
    from rm_ds.serve.server import ServeOptions, create_app

    dirs, logs = hh_runs
    run = dirs[kind]
    render = "template" if HAS_TEMPLATE[kind] else "hh"
    # printed at load, kept in the run and in the export's recipe
    assert ("conversations rendered as text by the HH rule" in logs[kind]) is (render == "hh")
    assert [r["chat_render"] for r in json.loads((run / "data.json").read_text())] == [render, render]
    folder = run / "export" / "final"
    assert json.loads((folder / "rm_ds_recipe.json").read_text())["chat_render"] == render

    [step] = sorted((run / "eval").glob("step_*"))[-1:]
    d = json.loads((step / "reward_distributions.json").read_text())
    want = {pid: (c, r) for pid, c, r in zip(d["pair_id"], d["chosen"], d["rejected"])}
    ds, _ = load_pairs(str(files["hh"]))
    ids = list(ds["pair_id"])
    wc, wr = np.array([want[i][0] for i in ids]), np.array([want[i][1] for i in ids])

    out = tmp_path / "scores.jsonl"
    cli_main(["score", "--model", str(folder), "--input", str(files["hh"]), "--out", str(out)])
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == ids
    np.testing.assert_allclose([g["reward_chosen"] for g in got], wc, atol=1e-5)
    np.testing.assert_allclose([g["reward_rejected"] for g in got], wr, atol=1e-5)

    scorer = load_scorer(str(folder))
    prompts, chosen, rejected = list(ds["prompt"]), list(ds["chosen"]), list(ds["rejected"])
    with TestClient(create_app([scorer], ServeOptions())) as client:
        res = client.post("/v1/compare", json={"pairs": [{"prompt": p, "a": a, "b": b}
                                                         for p, a, b in zip(prompts, chosen, rejected)]})
        assert res.status_code == 200, res.text
        results = res.json()["results"]
    np.testing.assert_allclose([x["reward_a"] for x in results], wc, atol=1e-5)
    np.testing.assert_allclose([x["reward_b"] for x in results], wr, atol=1e-5)

    ns: dict = {}
    exec(_docs_snippet().replace('"runs/hh/export/final"', repr(str(folder))), ns)  # noqa: S102 - the docs' code
    plain = np.array([[ns["reward"](p + c), ns["reward"](p + r)] for p, c, r in zip(prompts, chosen, rejected)])
    np.testing.assert_allclose(plain[:, 0], wc, atol=1e-5)
    np.testing.assert_allclose(plain[:, 1], wr, atol=1e-5)
