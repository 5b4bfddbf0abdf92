"""Recipe round trip: trainer eval scores = the docs snippet = Scorer = `rm-ds score` = the server (1e-5).

    PYTHONPATH=. python -m pytest tests/test_scoring.py -q

Four tiny models, each trained for 2 steps by a real one-process `rm-ds train` (which evaluates and
exports): a random Llama and a random BERT, each with and without a chat template. Their eval
artefacts (``eval/step_*/reward_distributions.json``) are the trainer's scores. Also: batch-size
invariance, truncation reporting, and `rm-ds score` sharded over 3 gloo ranks and 2 ranks under
the real `deepspeed` launcher (every row once, in input order).
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.harness import WORDS, rm_ds_command, run_distributed, run_env, run_rm_ds

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
            "{% else %}Assistant: {{ m['content'] }}[SEP]\n{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}Assistant:{% endif %}")
COMBOS = ["llama", "llama-chat", "bert", "bert-chat"]
N_PAIRS = 40
MAX_LENGTH = 64


def _words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def write_pairs(path: Path, *, n: int, seed: int, long_every: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            long = long_every and i % long_every == 0  # prompts that the recipe must truncate
            f.write(json.dumps({"id": f"p{i}", "prompt": _words(rng, 60, 70) if long else _words(rng, 1, 15),
                                "chosen": _words(rng, 1, 20), "rejected": _words(rng, 1, 20)}) + "\n")


def build_model(kind: str, out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rm_ds.builtin import build_tiny_llama, resolve_model

    if kind.startswith("llama"):
        build_tiny_llama(out, seed=1)
    else:
        tok = AutoTokenizer.from_pretrained(resolve_model("builtin:minilm"))
        config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=256, num_labels=1,
                            pad_token_id=tok.pad_token_id, architectures=["BertForSequenceClassification"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            BertForSequenceClassification(config).save_pretrained(out)
        tok.save_pretrained(out)
    if kind.endswith("chat"):
        cfg_file = out / "tokenizer_config.json"
        conf = json.loads(cfg_file.read_text())
        conf["chat_template"] = TEMPLATE
        cfg_file.write_text(json.dumps(conf))
        (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """combo (and "lora") -> run directory, the five trainings started together."""
    root = tmp_path_factory.mktemp("scoring")
    write_pairs(root / "pairs.jsonl", n=N_PAIRS, seed=0, long_every=7)
    procs, dirs = {}, {}
    for combo in COMBOS:
        model = build_model(combo, root / f"model-{combo}")
        dirs[combo] = root / f"run-{combo}"
        args = rm_ds_command("train", "--config", "tiny", f"model.name_or_path={model}",
                f"data.train_path={root / 'pairs.jsonl'}", f"data.eval_path={root / 'pairs.jsonl'}",
                "data.max_train_pairs=null", "data.max_eval_pairs=null", f"data.max_length={MAX_LENGTH}",
                f"data.chat_template={'true' if combo.endswith('chat') else 'false'}", "train.max_steps=2",
                "eval.every_steps=0", f"logging.run_dir={dirs[combo]}", "logging.tensorboard=false",
                "deepspeed.config=zero0")
        procs[combo] = subprocess.Popen(args, env=run_env({"PYTHONPATH": str(REPO)}), cwd=root,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # a LoRA run for test_lora_adapter_export_scores_like_merged, trained beside the others
    dirs["lora"] = root / "run-lora"
    procs["lora"] = subprocess.Popen(
        rm_ds_command("train", "--config", "tiny", f"model.name_or_path={root / 'model-llama'}",
         f"data.train_path={root / 'pairs.jsonl'}", "data.eval_path=null", "data.max_train_pairs=null",
         f"data.max_length={MAX_LENGTH}", "lora.enabled=true", "lora.r=4", "train.max_steps=2", "eval.every_steps=0",
         f"logging.run_dir={dirs['lora']}", "logging.tensorboard=false", "deepspeed.config=zero0"),
        env=run_env({"PYTHONPATH": str(REPO)}), cwd=root,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for combo, p in procs.items():
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"{combo} training failed:\n{out[-3000:]}"
    return root, dirs


def trainer_scores(run_dir: Path) -> dict[str, tuple[float, float]]:
    [step_dir] = sorted((run_dir / "eval").glob("step_*"))[-1:]
    d = json.loads((step_dir / "reward_distributions.json").read_text())
    return {pid: (c, r) for pid, c, r in zip(d["pair_id"], d["chosen"], d["rejected"])}


DOC = REPO / "docs" / "scoring-and-serving.md"  # the plain-transformers snippet lives here (the README links it)


def doc_snippet() -> str:
    text = DOC.read_text()
    m = re.search(r"<!-- snippet: plain-transformers -->\n```python\n(.*?)```", text, re.DOTALL)
    assert m, f"{DOC} lost its plain-transformers snippet"
    return m.group(1)


@pytest.mark.parametrize("combo", COMBOS)
def test_recipe_round_trip(runs, combo, tmp_path):
    from fastapi.testclient import TestClient

    from rm_ds.cli import main as cli_main
    from rm_ds.serve.scorer import load_scorer
    from rm_ds.serve.server import ServeOptions, create_app

    root, dirs = runs
    folder = dirs[combo] / "export" / "final"
    recipe = json.loads((folder / "rm_ds_recipe.json").read_text())
    assert recipe["chat_template"] is combo.endswith("chat")
    assert recipe["score_position"] == ("last_non_pad" if combo.startswith("llama") else "first")
    assert json.loads((folder / "config.json").read_text())["rm_ds_recipe"] == recipe
    want = trainer_scores(dirs[combo])
    rows = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in rows]
    wc = np.array([want[i][0] for i in ids])
    wr = np.array([want[i][1] for i in ids])

    scorer = load_scorer(str(folder))
    assert scorer.prefix_sharing is combo.startswith("llama")
    prompts, chosen, rejected = ([r[k] for r in rows] for k in ("prompt", "chosen", "rejected"))
    c, r = scorer.score_pairs(prompts, chosen, rejected)
    np.testing.assert_allclose(c, wc, atol=1e-5)
    np.testing.assert_allclose(r, wr, atol=1e-5)
    statuses = [e.status for e in scorer.encode_pairs(prompts, chosen, rejected)]
    assert statuses.count("prompt_truncated") == math.ceil(N_PAIRS / 7)

    if combo == "llama":  # a run directory resolves to its export
        from_run = load_scorer(str(dirs[combo]), step="final")
        np.testing.assert_allclose(from_run.score_pairs(prompts, chosen, rejected)[0], wc, atol=1e-5)

    # batch-size invariance: one by one = all together, responses and pairs
    one = np.array([scorer.score_responses([p], [x])[0] for p, x in zip(prompts, chosen)])
    np.testing.assert_allclose(scorer.score_responses(prompts, chosen), one, atol=1e-5)
    c1 = np.array([scorer.score_pairs([p], [x], [y])[0][0] for p, x, y in zip(prompts, chosen, rejected)])
    np.testing.assert_allclose(c1, c, atol=1e-5)

    # docs/scoring-and-serving.md's plain-transformers snippet, on the pairs the trainer did not truncate
    ns: dict = {}
    exec(doc_snippet().replace('"runs/tiny/export/final"', repr(str(folder))), ns)  # noqa: S102 - the docs' code
    ok = [i for i, s in enumerate(statuses) if s == "ok"]
    plain = np.array([[ns["reward"](prompts[i], chosen[i]), ns["reward"](prompts[i], rejected[i])] for i in ok])
    np.testing.assert_allclose(plain[:, 0], wc[ok], atol=1e-5)
    np.testing.assert_allclose(plain[:, 1], wr[ok], atol=1e-5)
    assert ns["calibration"]["temperature"] > 0

    # rm-ds score (in process: no DeepSpeed needed)
    out = tmp_path / "scores.jsonl"
    cli_main(["score", "--model", str(folder), "--input", str(root / "pairs.jsonl"), "--out", str(out)])
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == ids
    np.testing.assert_allclose([g["reward_chosen"] for g in got], wc, atol=1e-5)
    np.testing.assert_allclose([g["reward_rejected"] for g in got], wr, atol=1e-5)
    assert [g["status"] for g in got] == statuses
    cal = json.loads((folder / "config.json").read_text())["rm_ds_calibration"]
    p = 1 / (1 + np.exp(-cal["beta"] * (wc - wr) / cal["temperature"]))
    np.testing.assert_allclose([g["p_chosen"] for g in got], p, atol=1e-5)
    np.testing.assert_allclose([g["reward_chosen_norm"] for g in got], (wc - cal["reward_mean"]) / cal["reward_std"],
                               atol=1e-4)

    # the server (its app in process; tests/test_serve.py runs the real process)
    with TestClient(create_app([scorer], ServeOptions())) as client:
        res = client.post("/v1/compare", json={"pairs": [{"prompt": p_, "a": a, "b": b}
                                                          for p_, a, b in zip(prompts, chosen, rejected)]})
        assert res.status_code == 200, res.text
        results = res.json()["results"]
        np.testing.assert_allclose([x["reward_a"] for x in results], wc, atol=1e-5)
        np.testing.assert_allclose([x["reward_b"] for x in results], wr, atol=1e-5)
        assert [x["truncated"] for x in results] == [s != "ok" for s in statuses]
        res = client.post("/v1/score", json={"responses": [{"prompt": prompts[i], "response": chosen[i]} for i in ok]})
        np.testing.assert_allclose([x["reward"] for x in res.json()["results"]], wc[ok], atol=1e-5)


def _score_worker(folder: str, pairs: str, out_dir: str) -> dict:
    from rm_ds.cluster import dist
    from rm_ds.serve.score_file import run

    info = dist.current()
    return run([folder], pairs, f"{out_dir}/scores.jsonl", rank=info.rank, world_size=info.world_size,
               show_progress=False)


@pytest.mark.slow
@pytest.mark.cluster
def test_score_sharded_over_ranks(runs, tmp_path):
    """3 gloo ranks (uneven shards of 40 rows) and 2 ranks under the deepspeed launcher."""
    root, dirs = runs
    folder = str(dirs["llama"] / "export" / "final")
    want = trainer_scores(dirs["llama"])
    ids = [json.loads(line)["id"] for line in (root / "pairs.jsonl").read_text().splitlines()]
    for world in (3,):  # 1 rank: test_recipe_round_trip (in process); 2: the launcher below
        out = tmp_path / f"w{world}"
        out.mkdir()
        figures = run_distributed(_score_worker, world_size=world, args=(folder, str(root / "pairs.jsonl"), str(out)))
        assert figures[0]["world_size"] == world
        got = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
        assert [g["id"] for g in got] == ids
        np.testing.assert_allclose([g["reward_chosen"] for g in got], [want[i][0] for i in ids], atol=1e-5)
        np.testing.assert_allclose([g["reward_rejected"] for g in got], [want[i][1] for i in ids], atol=1e-5)
    out = tmp_path / "launcher.jsonl"
    proc = run_rm_ds(["score", "--model", folder, "--input", str(root / "pairs.jsonl"), "--out", str(out)], ranks=2,
                     env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "on 2 rank(s)" in proc.stdout
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == ids
    np.testing.assert_allclose([g["reward_chosen"] for g in got], [want[i][0] for i in ids], atol=1e-5)


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="OpenMPI (mpirun) is not installed")
def test_score_under_mpirun(runs, tmp_path):
    """`rm-ds score --mpi` under real mpirun with 2 ranks: every row once, in order, = one-process scores."""
    root, dirs = runs
    folder = str(dirs["llama"] / "export" / "final")
    want = trainer_scores(dirs["llama"])
    ids = [json.loads(line)["id"] for line in (root / "pairs.jsonl").read_text().splitlines()]
    out = tmp_path / "mpirun.jsonl"
    env = run_env({"PYTHONPATH": str(REPO), "OMPI_MCA_rtc_hwloc_vmhole": "none"})
    env.pop("RANK", None)
    proc = subprocess.run(["mpirun", "--allow-run-as-root", "--bind-to", "none", "-np", "2", sys.executable, "-m",
                           "rm_ds.cli", "score", "--mpi", "--model", folder, "--input", str(root / "pairs.jsonl"),
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "on 2 rank(s)" in proc.stdout + proc.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == ids
    np.testing.assert_allclose([g["reward_chosen"] for g in got], [want[i][0] for i in ids], atol=1e-5)
    np.testing.assert_allclose([g["reward_rejected"] for g in got], [want[i][1] for i in ids], atol=1e-5)


def test_score_file_forms_and_ensemble(runs, tmp_path):
    """responses (prompt+response, messages), scored rows (contract 4), an ensemble, bad input named."""
    from rm_ds.errors import DataError
    from rm_ds.serve.score_file import read_input, run
    from rm_ds.serve.scorer import load_scorer

    _, dirs = runs
    a, b = (str(dirs[k] / "export" / "final") for k in ("llama-chat", "bert-chat"))
    resp = tmp_path / "responses.jsonl"
    resp.write_text(json.dumps({"id": "x", "prompt": "the dog", "response": "runs"}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "the cat"},
                                               {"role": "assistant", "content": "sleeps"}]}) + "\n")
    run([a, b], str(resp), str(tmp_path / "ens.jsonl"), show_progress=False)
    got = [json.loads(line) for line in (tmp_path / "ens.jsonl").read_text().splitlines()]
    sa, sb = load_scorer(a), load_scorer(b)
    prompts = ["the dog", [{"role": "user", "content": "the cat"}]]
    responses = ["runs", [{"role": "assistant", "content": "sleeps"}]]
    ra, rb = sa.score_responses(prompts, responses), sb.score_responses(prompts, responses)
    np.testing.assert_allclose([g["reward@m0"] for g in got], ra, atol=1e-6)
    np.testing.assert_allclose([g["reward@m1"] for g in got], rb, atol=1e-6)
    assert got[0]["reward"] == pytest.approx((ra[0] + rb[0]) / 2, abs=1e-6)
    assert got[0]["reward_std"] == pytest.approx(abs(ra[0] - rb[0]) / 2, abs=1e-6)
    scored = tmp_path / "scored.jsonl"
    scored.write_text(json.dumps({"id": "q1", "prompt": "the dog", "responses": ["runs", "eats"], "seed": 3}) + "\n")
    run([a], str(scored), str(tmp_path / "scored_out.jsonl"), show_progress=False)
    [row] = [json.loads(line) for line in (tmp_path / "scored_out.jsonl").read_text().splitlines()]
    assert row["seed"] == 3 and row["statuses"] == ["ok", "ok"]
    np.testing.assert_allclose(row["rewards"], sa.score_responses(["the dog"] * 2, ["runs", "eats"]), atol=1e-6)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n" + json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl line 2: field 'response': missing"):
        read_input(bad)


def test_multi_objective_columns(runs):
    """A (N, K) reward array maps to reward/<objective> columns named by id2label."""
    from rm_ds.serve.scorer import objective_names, pair_columns, response_columns

    _, dirs = runs
    from rm_ds.serve.scorer import load_scorer

    s = load_scorer(str(dirs["llama"] / "export" / "final"))
    s.objectives = ["helpful", "harmless"]
    cols = response_columns([s], [np.array([[1.0, 2.0], [3.0, 4.0]])])
    assert list(cols["reward/helpful"]) == [1.0, 3.0] and list(cols["reward/harmless"]) == [2.0, 4.0]
    pc = pair_columns([s], [np.array([[[1.0, 2.0], [0.0, 2.0]]])])
    assert pc["reward_chosen/helpful"][0] == 1.0 and pc["reward_rejected/harmless"][0] == 2.0
    assert "p_chosen/helpful" in pc

    class Cfg:
        num_labels = 2
        id2label = {0: "helpful", 1: "harmless"}  # noqa: RUF012

    assert objective_names(Cfg) == ["helpful", "harmless"]


def test_select_active_learning(runs, tmp_path):
    """rm-ds select: the k pairs the model(s) are least sure of, deduped, in a file rm-ds train reads."""
    from rm_ds.serve.select import select
    from rm_ds.cli import main as cli_main
    from rm_ds.data.pairs import load_pairs
    from rm_ds.serve.scorer import load_scorer

    root, dirs = runs
    a, b = (str(dirs[k] / "export" / "final") for k in ("llama", "llama-chat"))
    rows = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    pool = tmp_path / "pool.jsonl"
    dup = dict(rows[0], id="dup", prompt=rows[0]["prompt"] + " !", chosen=rows[0]["rejected"],
               rejected=rows[0]["chosen"])
    with open(pool, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows + [dup])
    prompts = [r["prompt"] for r in rows + [dup]]
    sa = load_scorer(a)
    rc, rr = sa.score_pairs(prompts, [r["chosen"] for r in rows + [dup]], [r["rejected"] for r in rows + [dup]])
    want = np.argsort(np.abs(rc - rr), kind="stable")[:5]
    got = select([a], str(pool), k=5, by="margin")
    assert [g["source_id"] for g in got] == [(rows + [dup])[i]["id"] for i in want]
    assert all(g["p_chosen"] >= 0.5 for g in got)  # the preferred response is written as chosen
    # the near-identical prompt (same words, one more "!") ties with its original; --dedupe keeps one
    from rm_ds.serve.select import jaccard, trigrams

    picked = select([a], str(pool), k=len(rows) + 1, by="entropy", dedupe=True)
    ids = [g["source_id"] for g in picked]
    assert len(picked) < len(rows) + 1 and not ("dup" in ids and "p0" in ids)
    grams = [trigrams(g["prompt"]) for g in picked]
    assert all(jaccard(x, y) < 0.8 for i, x in enumerate(grams) for y in grams[:i])
    out = tmp_path / "to_label.jsonl"
    cli_main(["select", "--model", a, "--model", b, "--pool", str(pool), "--k", "4", "--by", "ensemble_std",
              "--out", str(out)])
    ds, report = load_pairs(str(out))
    assert report.n_loaded == 4 and set(ds["pair_id"]) == {json.loads(x)["id"] for x in out.read_text().splitlines()}
    cand = tmp_path / "candidates.jsonl"
    cand.write_text("\n".join(json.dumps({"id": f"q{i}", "prompt": r["prompt"],
                                          "responses": [r["chosen"], r["rejected"], "the bird"]})
                              for i, r in enumerate(rows[:6])) + "\n")
    picked = select([a], str(cand), k=3, by="margin")
    assert len(picked) == 3 and len({g["source_id"] for g in picked}) == 3  # at most one pair per prompt
    with pytest.raises(ValueError, match="ensemble_std needs two or more"):
        select([a], str(pool), k=2, by="ensemble_std")


def test_lora_adapter_export_scores_like_merged(runs, tmp_path):
    """`rm-ds export --adapter` of a LoRA run scores the same as its merged export (to 1e-5)."""
    from rm_ds.serve.scorer import load_scorer

    root, dirs = runs
    run = dirs["lora"]
    env = run_env({"PYTHONPATH": str(REPO)})
    for flags, out in (([], "merged"), (["--adapter"], "adapter")):
        subprocess.run(rm_ds_command("export", "--run-dir", str(run), "--out", str(tmp_path / out), *flags), env=env,
                       cwd=tmp_path, check=True, capture_output=True, timeout=300)
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items()), "LoRA did not move: no test"
    rows = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    prompts, chosen, rejected = ([r[k] for r in rows] for k in ("prompt", "chosen", "rejected"))
    merged = load_scorer(str(tmp_path / "merged")).score_pairs(prompts, chosen, rejected)
    adapter = load_scorer(str(tmp_path / "adapter")).score_pairs(prompts, chosen, rejected)
    assert np.ptp(merged[0]) > 0
    for m, a in zip(merged, adapter):
        np.testing.assert_allclose(a, m, atol=1e-5)
