"""Published preference shapes -> pairs (rm_ds.data.formats through rm_ds.data.pairs.load_pairs), soft labels and ties.

Each test writes a few rows in the shape the dataset card documents and asserts the exact pairs,
prompts and counts; the loss and metric checks use hand-worked numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rm_ds.data.pairs import load_pairs
from rm_ds.errors import DataError
from rm_ds.data.formats import FormatOptions, detect_format, pair_indices, split_hh


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def user(c: str) -> dict:
    return {"role": "user", "content": c}


def bot(c: str) -> dict:
    return {"role": "assistant", "content": c}


# ---------------------------------------------------------------- HH-RLHF

HH = [
    {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How do I boil an egg?\n\nAssistant: Simmer it "
               "for 9 minutes.",
     "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How do I boil an egg?\n\nAssistant: No idea."},
    {"chosen": "\n\nHuman: Capital of France?\n\nAssistant: Paris.",
     "rejected": "\n\nHuman: Capital of France?\n\nAssistant: Rome."},
]


def test_hh_multi_turn_split_at_last_shared_turn(tmp_path: Path) -> None:
    ds, report = load_pairs(str(write_jsonl(tmp_path / "hh.jsonl", HH)))
    assert report.format == "hh" and report.n_loaded == 2
    assert ds[0]["format"] == "chat"
    assert ds[0]["prompt"] == [user("Hi there"), bot("Hello!"), user("How do I boil an egg?")]
    assert ds[0]["chosen"] == [bot("Simmer it for 9 minutes.")]
    assert ds[0]["rejected"] == [bot("No idea.")]
    assert ds[1]["prompt"] == [user("Capital of France?")]
    assert (ds[1]["chosen"], ds[1]["rejected"]) == ([bot("Paris.")], [bot("Rome.")])
    assert ds["pair_id"] == ["hh:1", "hh:2"] and ds["row"] == [1, 2]
    assert ds["file"] == [str(tmp_path / "hh.jsonl")] * 2 and ds["pref"] == [1.0, 1.0]


def test_hh_rows_that_do_not_share_a_prefix_are_errors_with_location(tmp_path: Path) -> None:
    bad = {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d",
           "rejected": "\n\nHuman: a\n\nAssistant: x\n\nHuman: c\n\nAssistant: e"}
    path = write_jsonl(tmp_path / "hh.jsonl", [HH[1], bad])
    with pytest.raises(DataError, match=r"hh\.jsonl line 2: field 'chosen': the transcripts share 1 turns"):
        load_pairs(str(path))
    malformed = {"chosen": "\n\nHuman: a\n\nHuman: b\n\nAssistant: c", "rejected": "\n\nHuman: a\n\nAssistant: d"}
    path = write_jsonl(tmp_path / "hh2.jsonl", [HH[1], malformed])
    with pytest.raises(DataError, match=r"hh2\.jsonl line 2: field 'chosen': turns 0 and 1 are both 'user'"):
        load_pairs(str(path), format="hh")
    _, report = load_pairs(str(path), format="hh", skip_invalid=True)
    assert report.n_loaded == 1 and report.skipped == {"malformed HH transcript in field 'chosen'": 1}


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12).filter(
    lambda t: "\n\nHuman:" not in t and "\n\nAssistant:" not in t)


def _render(msgs: list[dict]) -> str:
    return "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in msgs)


@settings(max_examples=200, deadline=None)
@given(turns=st.lists(_TEXT, max_size=5), a=_TEXT, b=_TEXT)
def test_hh_split_recovers_prompt_and_replies(turns: list[str], a: str, b: str) -> None:
    """Any alternating transcript (Human first, Human last) plus two different final replies: the split at
    the last shared turn gives back exactly the prompt messages and the two replies."""
    if len(turns) % 2 == 0:
        turns = [*turns, "and?"]
    if a == b:
        b = a + "x"
    prompt = [user(t) if k % 2 == 0 else bot(t) for k, t in enumerate(turns)]
    p, c, r = split_hh(_render([*prompt, bot(a)]), _render([*prompt, bot(b)]))
    assert p == prompt and c == [bot(a)] and r == [bot(b)]


# ---------------------------------------------------------------- SHP

def shp_row(post: str, a: str, b: str, label: int, sa: int, sb: int, domain: str) -> dict:
    return {"post_id": post, "domain": domain, "history": f"question {post}?", "c_root_id_A": f"{post}a",
            "c_root_id_B": f"{post}b", "human_ref_A": a, "human_ref_B": b, "labels": label, "score_A": sa,
            "score_B": sb, "score_ratio": max(sa, sb) / min(sa, sb)}


def test_shp_both_labels_ratio_filter_and_domain(tmp_path: Path) -> None:
    rows = [shp_row("p1", "A wins", "B loses", 1, 10, 2, "askscience"),
            shp_row("p2", "A loses", "B wins", 0, 3, 9, "askhistorians"),
            shp_row("p3", "close A", "close B", 1, 3, 2, "askscience")]
    path = write_jsonl(tmp_path / "shp.jsonl", rows)
    ds, report = load_pairs(str(path))
    assert report.format == "shp" and ds["format"][0] == "text"
    assert ds["prompt"] == ["question p1?", "question p2?", "question p3?"]
    assert ds["chosen"] == ["A wins", "B wins", "close A"]
    assert ds["rejected"] == ["B loses", "A loses", "close B"]
    assert ds["source"] == ["askscience", "askhistorians", "askscience"]
    assert ds["pair_id"] == ["p1:p1a:p1b", "p2:p2a:p2b", "p3:p3a:p3b"] and ds["orig_id"] == ["p1", "p2", "p3"]
    ds, report = load_pairs(str(path), options=FormatOptions(min_score_ratio=2.0))
    assert ds["pair_id"] == ["p1:p1a:p1b", "p2:p2a:p2b"]
    assert report.filtered == {"score ratio below data.min_score_ratio": 1}
    bad = write_jsonl(tmp_path / "bad.jsonl", [rows[0], {**rows[1], "labels": 2}])
    with pytest.raises(DataError, match=r"bad\.jsonl line 2: field 'labels': expected 1 \(A preferred\)"):
        load_pairs(str(bad))


# ---------------------------------------------------------------- UltraFeedback

def uf_raw(instruction: str, scored: list[tuple[str, float]]) -> dict:
    return {"source": "evol_instruct", "instruction": instruction, "models": ["m"] * len(scored),
            "completions": [{"model": "m", "response": resp, "overall_score": s, "fine-grained_score": s / 2,
                             "annotations": {"helpfulness": {"Rating": "4", "Rationale": "."}}}
                            for resp, s in scored]}


UF_RAW = [uf_raw("Say hi", [("hi", 7.0), ("hello", 9.0), ("hey", 7.0), ("yo", 3.0)])]


def test_ultrafeedback_raw_pairing_policies_and_tied_ratings(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "uf.jsonl", UF_RAW)
    ds, report = load_pairs(str(path))  # best_vs_worst
    assert report.format == "ultrafeedback"
    assert (ds["prompt"], ds["chosen"], ds["rejected"]) == (["Say hi"], ["hello"], ["yo"])
    assert ds["pair_id"] == ["uf:1:1>3"] and ds["source"] == ["evol_instruct"]

    ds, report = load_pairs(str(path), options=FormatOptions(pairing="all_pairs"))
    # 6 pairs of 4 responses; hi (7) vs hey (7) is a tie, skipped and counted
    assert list(zip(ds["chosen"], ds["rejected"])) == [("hello", "hi"), ("hi", "yo"), ("hello", "hey"),
                                                       ("hello", "yo"), ("hey", "yo")]
    assert report.n_ties == 1 and report.filtered == {"tie (data.ties=skip)": 1}
    ds, report = load_pairs(str(path), options=FormatOptions(pairing="all_pairs", ties="train"))
    assert report.n_loaded == 6 and report.filtered == {}
    assert ds["pref"] == [1.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert (ds["chosen"][1], ds["rejected"][1], ds["pair_id"][1]) == ("hi", "hey", "uf:1:0>2")

    a, _ = load_pairs(str(path), options=FormatOptions(pairing="best_vs_random", seed=3))
    b, _ = load_pairs(str(path), options=FormatOptions(pairing="best_vs_random", seed=3))
    assert a["chosen"] == ["hello"] and a["rejected"] == b["rejected"] and a["rejected"][0] in ("hi", "hey", "yo")
    fine, _ = load_pairs(str(path), options=FormatOptions(score="fine_grained", pairing="all_pairs"))
    assert fine["chosen"] == ds["chosen"][:1] + fine["chosen"][1:]  # same order of scores, halved


def test_ultrafeedback_binarized_and_ties(tmp_path: Path) -> None:
    rows = [{"prompt": "2+2?", "prompt_id": "q1", "chosen": [user("2+2?"), bot("4")],
             "rejected": [user("2+2?"), bot("5")], "messages": [user("2+2?"), bot("4")], "score_chosen": 8.0,
             "score_rejected": 2.0},
            {"prompt": "Sky?", "prompt_id": "q2", "chosen": [user("Sky?"), bot("blue")],
             "rejected": [user("Sky?"), bot("azure")], "messages": [], "score_chosen": 5.0, "score_rejected": 5.0}]
    path = write_jsonl(tmp_path / "ufb.jsonl", rows)
    ds, report = load_pairs(str(path))
    assert report.format == "ultrafeedback" and "binarized" in report.format_reason
    assert ds["prompt"] == [[user("2+2?")]] and ds["chosen"] == [[bot("4")]] and ds["pair_id"] == ["q1"]
    assert report.n_ties == 1 and report.filtered == {"tie (data.ties=skip)": 1}
    ds, _ = load_pairs(str(path), options=FormatOptions(ties="train"))
    assert ds["pref"] == [1.0, 0.5]


# ---------------------------------------------------------------- HelpSteer

def test_helpsteer_ratings_pairs_per_prompt_and_strength_rule(tmp_path: Path) -> None:
    def r(p: str, resp: str, h: int) -> dict:
        return {"prompt": p, "response": resp, "helpfulness": h, "correctness": 3, "coherence": 4,
                "complexity": 1, "verbosity": 1}

    rows = [r("P1", "good", 4), r("P2", "fine", 2), r("P1", "bad", 1), r("P2", "also fine", 2)]
    path = write_jsonl(tmp_path / "hs.jsonl", rows)
    ds, report = load_pairs(str(path))
    assert report.format == "helpsteer"
    assert (ds["prompt"], ds["chosen"], ds["rejected"]) == (["P1"], ["good"], ["bad"])
    assert ds["pref"] == [0.5 + 0.5 * 3 / 4] and ds["pair_id"] == ["hs:1>3"] and ds["row"] == [1]
    assert report.filtered == {"tie (data.ties=skip)": 1}  # P2: 2 vs 2
    ds, _ = load_pairs(str(path), options=FormatOptions(strength="margin"))
    assert ds["margin"] == [3.0] and ds["pref"] == [1.0]

    pref_rows = [{"split": "train", "prompt": "Q", "response_1": "r1", "response_2": "r2", "preference_strength": s}
                 for s in (-3, 2, 0, -1)]
    ds, report = load_pairs(str(write_jsonl(tmp_path / "pref.jsonl", pref_rows)))
    assert ds["chosen"] == ["r1", "r2", "r1"] and ds["rejected"] == ["r2", "r1", "r2"]
    assert ds["pref"] == pytest.approx([1.0, 5 / 6, 2 / 3]) and report.n_ties == 1


# ---------------------------------------------------------------- scored responses

def test_scored_rows_pairs_by_reward_and_ties(tmp_path: Path) -> None:
    rows = [{"id": "s1", "prompt": "Tell a joke", "responses": ["a", "b", "c"], "rewards": [0.1, 2.0, 0.15],
             "policy": "sft"},
            {"id": "s2", "prompt": [user("Hi")], "responses": ["x", "y"], "rewards": [1.0, -1.0]}]
    path = write_jsonl(tmp_path / "scored.jsonl", rows[:1])
    ds, report = load_pairs(str(path), options=FormatOptions(pairing="all_pairs", tie_eps=0.1))
    assert report.format == "scored"
    assert list(zip(ds["chosen"], ds["rejected"])) == [("b", "a"), ("b", "c")]
    assert ds["pair_id"] == ["s1:1>0", "s1:1>2"] and report.n_ties == 1
    chat, _ = load_pairs(str(write_jsonl(tmp_path / "chat.jsonl", rows[1:])))
    assert chat["prompt"] == [[user("Hi")]] and chat["chosen"] == [[bot("x")]] and chat["rejected"] == [[bot("y")]]
    bad = write_jsonl(tmp_path / "bad.jsonl", [rows[0], {**rows[0], "id": "s3", "rewards": [1.0]}])
    with pytest.raises(DataError, match=r"bad\.jsonl line 2: field 'rewards': 1 rewards for 3 responses"):
        load_pairs(str(bad))
    unlabelled = write_jsonl(tmp_path / "u.jsonl", [{"id": "u", "prompt": "p", "responses": ["a", "b"]}])
    with pytest.raises(DataError, match=r"u\.jsonl line 1: field 'rewards': missing \(unlabelled"):
        load_pairs(str(unlabelled))


def test_scored_three_parallel_files_and_length_mismatch(tmp_path: Path) -> None:
    d = tmp_path / "gold"
    d.mkdir()
    (d / "prompts.json").write_text(json.dumps(["p0", "p1"]))
    (d / "responses.json").write_text(json.dumps([{"response_1": "a", "response_2": "b"},
                                                  {"response_2": "d", "response_1": "c"}]))
    (d / "rewards.json").write_text(json.dumps([[0.0, 1.0], [3.0, 2.0]]))
    ds, report = load_pairs(str(d))
    assert report.format == "scored" and ds["prompt"] == ["p0", "p1"]
    assert ds["chosen"] == ["b", "c"] and ds["rejected"] == ["a", "d"] and ds["pair_id"] == ["gold:0:1>0",
                                                                                             "gold:1:0>1"]
    (d / "rewards.json").write_text(json.dumps([[0.0, 1.0]]))
    with pytest.raises(DataError, match=r"differ in length .*index 1 has no entry in rewards\.json"):
        load_pairs(str(d))
    (d / "rewards.json").write_text(json.dumps([[0.0, 1.0], [3.0]]))
    with pytest.raises(DataError, match=r"index 1: responses\.json has 2 responses but rewards\.json has 1"):
        load_pairs(str(d))


# ---------------------------------------------------------------- detection, pairs with p, offline

def test_detection_and_pairs_unchanged(tmp_path: Path) -> None:
    assert detect_format({"prompt", "chosen", "rejected"}, {"chosen": "a", "rejected": "b"})[0] == "pairs"
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b", "p": 0.7}])
    ds, report = load_pairs(str(path))
    assert report.format == "pairs" and "pref" not in ds.column_names
    ds, _ = load_pairs(str(path), options=FormatOptions(pref_field="p"))
    assert ds["pref"] == [0.7]
    bad = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b", "p": 1.5}])
    with pytest.raises(DataError, match=r"b\.jsonl line 1: field 'p': must be in \[0, 1\]"):
        load_pairs(str(bad), options=FormatOptions(pref_field="p"))


def test_arrow_file(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(HH).save_to_disk(str(tmp_path / "hh_arrow"))
    ds, report = load_pairs(str(tmp_path / "hh_arrow"))
    assert report.format == "hh" and ds["chosen"][1] == [bot("Paris.")]


def test_hub_name_offline_fails_at_once(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="not a local file or directory, and hub datasets need network access"):
        load_pairs("Anthropic/hh-rlhf", split="train", format="hh")


def test_pair_indices_policies() -> None:
    assert pair_indices([2.0, 2.0], pairing="best_vs_worst", tie_eps=0.0) == [(0, 1, True)]
    assert pair_indices([1.0], pairing="all_pairs", tie_eps=0.0) == []


# ---------------------------------------------------------------- soft-label loss and metrics

def test_soft_label_loss_hand_worked_and_gradient() -> None:
    from rm_ds.train.loss import bt_loss

    c = torch.tensor([1.0, 0.0, 2.0], requires_grad=True)
    r = torch.tensor([0.0, 0.0, 0.0])
    p = torch.tensor([1.0, 0.5, 0.25])
    loss = bt_loss(c, r, beta=1.0, margin=torch.tensor([0.0, 0.0, 1.0]), pref=p)
    # z = 1, 0, 1: -(p log s(z) + (1 - p) log s(-z))
    s1 = 1 / (1 + math.exp(-1))
    expected = [-math.log(s1), math.log(2), -(0.25 * math.log(s1) + 0.75 * math.log(1 - s1))]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)
    loss.sum().backward()
    # d loss / d r_c = beta * (sigmoid(z) - p): 0.731 - 1, 0.5 - 0.5, 0.731 - 0.25
    assert c.grad.tolist() == pytest.approx([s1 - 1, 0.0, s1 - 0.25], rel=1e-6)
    # p = 1 is today's loss: bit for bit without smoothing, to rounding with it
    assert torch.equal(bt_loss(c.detach(), r, beta=0.7, pref=torch.ones(3)), bt_loss(c.detach(), r, beta=0.7))
    smooth = bt_loss(c.detach(), r, beta=0.7, label_smoothing=0.1)
    assert torch.allclose(bt_loss(c.detach(), r, beta=0.7, label_smoothing=0.1, pref=torch.ones(3)), smooth,
                          rtol=1e-6, atol=0)


def test_metrics_with_ties_and_soft_labels() -> None:
    from rm_ds.eval.metrics import fit_temperature, pairwise_metrics

    rng = np.random.default_rng(0)
    c, r = rng.normal(size=50), rng.normal(size=50)
    plain = pairwise_metrics(c, r, sources=["a"] * 50)
    ones = pairwise_metrics(c, r, sources=["a"] * 50, pref=np.ones(50))
    assert {k: v for k, v in ones.items() if k not in ("tie_rate", "n_untied")} == plain
    assert ones["tie_rate"] == 0.0
    assert fit_temperature(c - r, pref=np.ones(50)) == fit_temperature(c - r)

    # pairs: won, lost, tie (d = 0.5), soft-0 pair won by the rejected side
    m = pairwise_metrics(np.array([1.0, 0.0, 0.5, 0.0]), np.array([0.0, 1.0, 0.0, 2.0]),
                         pref=np.array([1.0, 1.0, 0.5, 0.0]))
    assert m["accuracy"] == pytest.approx(2 / 3) and m["tie_rate"] == 0.25 and m["n_untied"] == 3
    def s(z: float) -> float:
        return 1 / (1 + math.exp(-z))

    nll = [-math.log(s(1)), -math.log(s(-1)), -(0.5 * math.log(s(0.5)) + 0.5 * math.log(s(-0.5))),
           -math.log(s(2))]
    assert m["nll"] == pytest.approx(sum(nll) / 4)
    assert m["brier"] == pytest.approx(((s(1) - 1) ** 2 + (s(-1) - 1) ** 2 + (s(0.5) - 0.5) ** 2 + s(-2) ** 2) / 4)


def test_pref_travels_through_every_layout() -> None:
    from rm_ds.data.collate import make_collate

    rows = [{"prompt_ids": [1, 5], "chosen_ids": [7, 2], "rejected_ids": [8, 2], "margin": 0.0, "weight": 1.0,
             "pref": 0.5},
            {"prompt_ids": [1], "chosen_ids": [6, 2], "rejected_ids": [2], "margin": 0.0, "weight": 1.0, "pref": 0.9}]
    for shared, packed in ((False, False), (True, False), (True, True), (False, True)):
        b = make_collate(prefix_sharing=shared, packing=packed, pad_id=0, eos_id=2)(rows)
        assert b["pref"].tolist() == pytest.approx([0.5, 0.9])
        assert make_collate(prefix_sharing=shared, packing=packed, pad_id=0, eos_id=2)([])["pref"].tolist() == [1.0]


# ---------------------------------------------------------------- end to end: rm-ds train on each format

def _e2e_files(root: Path) -> dict[str, str]:
    """A handful of rows in every shape (text shapes for the plain tiny model, chat shapes for a templated one)."""
    n = 6
    files = {
        "shp": write_jsonl(root / "shp.jsonl", [shp_row(f"p{i}", f"good answer {i}", f"bad {i}", i % 2, 9, 3,
                                                        "askscience") for i in range(n)]),
        "ultrafeedback": write_jsonl(root / "uf.jsonl", [uf_raw(f"Say hi {i}", [(f"hello {i}", 9.0), (f"no {i}", 2.0),
                                                                               (f"hi {i}", 9.0)]) for i in range(n)]),
        "helpsteer": write_jsonl(root / "hs.jsonl", [{"prompt": f"Q{i // 2}", "response": f"resp {i}",
                                                      "helpfulness": i % 3} for i in range(2 * n)]),
        "hh": write_jsonl(root / "hh.jsonl", [{"chosen": f"\n\nHuman: Hi {i}\n\nAssistant: Hello\n\nHuman: Colour?"
                                                         f"\n\nAssistant: Blue {i}",
                                               "rejected": f"\n\nHuman: Hi {i}\n\nAssistant: Hello\n\nHuman: Colour?"
                                                           f"\n\nAssistant: No."} for i in range(n)]),
        "ufb": write_jsonl(root / "ufb.jsonl", [{"prompt": f"Q{i}", "prompt_id": f"q{i}",
                                                 "chosen": [user(f"Q{i}"), bot(f"yes {i}")],
                                                 "rejected": [user(f"Q{i}"), bot("no")],
                                                 "score_chosen": 8.0, "score_rejected": 8.0 if i == 0 else 3.0}
                                                for i in range(n)]),
    }
    gold = root / "gold"
    gold.mkdir()
    (gold / "prompts.json").write_text(json.dumps([f"prompt {i}" for i in range(n)]))
    (gold / "responses.json").write_text(json.dumps([{"response_1": f"a {i}", "response_2": f"b {i}"}
                                                     for i in range(n)]))
    (gold / "rewards.json").write_text(json.dumps([[0.5 * i, 1.0] for i in range(n)]))
    return {k: str(v) for k, v in files.items()} | {"scored": str(gold)}


def _templated_tiny_llama(root: Path) -> str:
    """builtin:tiny-llama with a minimal chat template, so chat-format data (HH, UltraFeedback) tokenises."""
    import shutil

    from transformers import AutoTokenizer

    from rm_ds.builtin import resolve_model

    out = root / "tiny-chat"
    shutil.copytree(resolve_model("builtin:tiny-llama"), out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} [SEP] {% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    tok.save_pretrained(out)
    return str(out)


def _run_train(args: list[str], *, launcher: bool) -> None:
    from tests.harness import run_rm_ds

    tiny = ["train", "--config", "tiny", "train.max_steps=2", "train.global_batch_pairs=4", "eval.every_steps=0",
            "train.export=false"]
    proc = run_rm_ds([*tiny, *args], ranks=2 if launcher else 1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== rm_ds training finished ==" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("train", "eval_", "extra"), [
    ("shp", "ultrafeedback", ["data.pairing=all_pairs", "data.ties=train"]),
    ("helpsteer", "scored", ["data.strength=margin"]),
])
def test_rm_ds_train_on_text_formats(tmp_path: Path, train: str, eval_: str, extra: list[str]) -> None:
    files = _e2e_files(tmp_path)
    run = tmp_path / "run"
    _run_train([f"data.train_path={files[train]}", f"data.eval_path={files[eval_]}", f"logging.run_dir={run}",
                *extra], launcher=False)
    report = json.loads((run / "data.json").read_text())
    assert [r["format"] for r in report] == [train, eval_]
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in evals if r["split"] == "eval"][-1]
    if eval_ == "ultrafeedback":  # 3 responses, two tied at 9: 3 pairs per prompt, 1 tie each, kept at p = 0.5
        assert last["n_pairs"] == 18 and last["tie_rate"] == pytest.approx(1 / 3)
    else:  # scored folder: one pair per prompt, prompt 2 ties (1.0 vs 1.0) and is skipped
        assert last["n_pairs"] == 5 and report[1]["filtered"] == {"tie (data.ties=skip)": 1}
    scores = json.loads(next((run / "eval").glob("step_*/reward_distributions.json")).read_text())
    assert len(scores["pair_id"]) == last["n_pairs"]


@pytest.mark.slow
@pytest.mark.cluster
def test_rm_ds_train_on_hh_under_the_deepspeed_launcher(tmp_path: Path) -> None:
    files = _e2e_files(tmp_path)
    run = tmp_path / "run"
    _run_train([f"model.name_or_path={_templated_tiny_llama(tmp_path)}", f"data.train_path={files['hh']}",
                f"data.eval_path={files['ufb']}", f"logging.run_dir={run}", "data.ties=train"], launcher=True)
    report = json.loads((run / "data.json").read_text())
    assert [(r["format"], r["n_loaded"], r["n_ties"]) for r in report] == [("hh", 6, 0), ("ultrafeedback", 6, 1)]
    last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x][-1]
    assert last["n_pairs"] == 6 and last["tie_rate"] == pytest.approx(1 / 6)
