"""rm-ds label (alignment by id and index, ties) and rm-ds match (figures, diagnosis) with fake scorers."""

import json
import random

import numpy as np
import pytest
from scipy import stats

from rm_ds.data.scored import read_scored
from rm_ds.errors import ConfigError, DataError
from rm_ds.data.scored import make_pairs
from rm_ds.proxy.label import label, score_rows
from rm_ds.proxy.match import (
    agreement_by_gold_gap,
    diagnose,
    kendall_tau_b,
    match_figures,
    pairwise_agreement,
    run_match,
    spearman,
    spread_ratios,
)


def text_score(prompts, responses):
    """A fake gold RM: the reward is a function of the response text alone (its length plus a digit)."""
    return np.array([len(r) + int(r[-1]) / 10 for r in responses], dtype=np.float64)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _samples(n_prompts=20, n=3, seed=0):
    rng = random.Random(seed)
    return [{"id": f"q{i}", "prompt": f"prompt {i}", "policy": "p", "seed": i,
             "responses": ["x" * rng.randint(1, 9) + str(j) for j in range(n)]} for i in range(n_prompts)]


def test_label_alignment_survives_shuffled_response_order(tmp_path):
    rows = _samples()
    shuffled = [dict(r, responses=random.Random(i).sample(r["responses"], len(r["responses"])))
                for i, r in enumerate(reversed(rows))]
    for name, data in (("a", rows), ("b", shuffled)):
        label(str(_write(tmp_path / f"{name}.jsonl", data)), text_score, out_scored=str(tmp_path / f"{name}_l.jsonl"),
              out_pairs=str(tmp_path / f"{name}_p.jsonl"))
    for name in ("a", "b"):
        for r in read_scored(tmp_path / f"{name}_l.jsonl", need_rewards=True):
            assert r["rewards"] == text_score(None, r["responses"]).tolist()  # each reward with its own text
            assert r["policy"] == "p"  # extra keys kept
    pairs = {name: {(p["prompt"], p["chosen"], p["rejected"])
                    for p in map(json.loads, (tmp_path / f"{name}_p.jsonl").read_text().splitlines())}
             for name in ("a", "b")}
    assert pairs["a"] == pairs["b"] and len(pairs["a"]) == 60


def test_score_rows_scores_out_of_file_order_and_maps_back():
    rows = [{"id": "a", "prompt": "p", "responses": ["short", "much longer one"]},
            {"id": "b", "prompt": "p", "responses": ["mid length"]}]
    seen = []

    def score(prompts, responses):
        seen.extend(responses)
        return np.arange(len(responses), dtype=float)  # reward = position in the scoring order

    got = score_rows(rows, score)
    assert seen == ["much longer one", "mid length", "short"]  # longest first, not file order
    assert got == {("a", 1): 0.0, ("b", 0): 1.0, ("a", 0): 2.0}
    with pytest.raises(DataError, match="returned 1 rewards for 3"):
        score_rows(rows, lambda p, r: np.zeros(1))
    with pytest.raises(ConfigError, match="--objective"):
        score_rows(rows, lambda p, r: np.zeros((len(r), 2)))
    assert score_rows(rows, lambda p, r: np.stack([np.zeros(len(r)), np.ones(len(r))], 1), objective=1)[("b", 0)] == 1


def test_ties_are_counted_exactly():
    """Rewards per prompt -> candidate pairs and ties by hand (tie_eps = 0.1):
    q0 [1.0, 1.05]        1 pair, |diff| 0.05 <= 0.1: tie
    q1 [1.0, 2.0, 1.08]   3 pairs: (0,1) 1.0 ok, (0,2) 0.08 tie, (1,2) 0.92 ok
    q2 [3.0, 3.0]         identical text: skipped as such, not a tie
    q3 [0.0, -0.5]        1 pair ok, chosen is response 0, margin 0.5
    """
    rows = [{"id": "q0", "prompt": "p", "responses": ["a", "b"], "rewards": [1.0, 1.05]},
            {"id": "q1", "prompt": "p", "responses": ["a", "b", "c"], "rewards": [1.0, 2.0, 1.08]},
            {"id": "q2", "prompt": "p", "responses": ["same", "same"], "rewards": [3.0, 3.0]},
            {"id": "q3", "prompt": "p", "responses": ["a", "b"], "rewards": [0.0, -0.5], "source": "s"}]
    pairs, st = make_pairs(rows, tie_eps=0.1, margin=True)
    assert (st.candidates, st.pairs, st.skipped) == (6, 3, {"tie": 2, "identical responses": 1})
    assert st.tie_rate == pytest.approx(2 / 6)
    assert [p["id"] for p in pairs] == ["q1:1>0", "q1:1>2", "q3:0>1"]
    assert pairs[2] == {"id": "q3:0>1", "prompt": "p", "chosen": "a", "rejected": "b", "gold_chosen": 0.0,
                        "gold_rejected": -0.5, "margin": 0.5, "source": "s",
                        "gold_pref": pytest.approx(1 / (1 + np.exp(-0.5)))}  # the gold's BT probability
    assert make_pairs(rows, tie_eps=0.0)[1].skipped == {"identical responses": 1}
    assert "margin" not in make_pairs(rows)[0][0]


def test_gold_pref_trains_as_a_soft_label(tmp_path):
    """The pair file rm-ds label writes loads with data.pref_field=gold_pref: pref is the gold's probability."""
    from rm_ds.data.pairs import load_pairs
    from rm_ds.data.formats import FormatOptions
    from rm_ds.proxy.label import write_jsonl

    rows = [{"id": "a", "prompt": "p", "responses": ["x", "y"], "rewards": [0.2, 1.4]},
            {"id": "b", "prompt": "q", "responses": ["u", "v"], "rewards": [-1.0, -3.0]}]
    pairs, _ = make_pairs(rows)
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    ds, _ = load_pairs(str(tmp_path / "pairs.jsonl"), options=FormatOptions(pref_field="gold_pref"))
    assert list(ds["chosen"]) == ["y", "u"]
    assert list(ds["pref"]) == pytest.approx([1 / (1 + np.exp(-1.2)), 1 / (1 + np.exp(-2.0))])


def test_read_scored_names_line_and_field(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"id": 1, "prompt": "p", "responses": ["a"]}\n{"id": 2, "prompt": "p", "responses": ["a"], '
                 '"rewards": [1, 2]}\n')
    with pytest.raises(DataError, match=r"x.jsonl line 2: field 'rewards': expected 1 finite numbers"):
        read_scored(f)


def test_match_figures_hand_worked():
    """proxy vs gold, two prompts of 3 responses (tie_eps 0):
    gold  [1, 2, 3] / [0, 0, 5]   pairs: (0,1) (0,2) (1,2) / (0,2) (1,2); gold tie (0,1) skipped -> 5 pairs
    proxy [1, 3, 2] / [1, 1, 4]   agree: yes, yes, no / yes, yes -> 4/5 = 0.8
    spread: gold std of [1,2,3,0,0,5], proxy std of [1,3,2,1,1,4]
    """
    proxy, gold = [[1, 3, 2], [1, 1, 4]], [[1, 2, 3], [0, 0, 5]]
    assert pairwise_agreement(proxy, gold) == (0.8, 5)
    assert pairwise_agreement([[1, 1, 2]], [[1, 2, 3]]) == (pytest.approx(2.5 / 3), 3)  # a proxy tie is half
    f = match_figures(proxy, gold)
    p, g = np.array([1, 3, 2, 1, 1, 4.0]), np.array([1, 2, 3, 0, 0, 5.0])
    assert f["spread_std"] == pytest.approx(p.std() / g.std())
    assert f["spread_iqr"] == pytest.approx((2.75 - 1.0) / (2.75 - 0.25))
    assert f["spearman"] == pytest.approx(stats.spearmanr(p, g).statistic)
    assert f["kendall"] == pytest.approx(stats.kendalltau(p, g).statistic)


def test_match_rate_by_gold_gap_hand_worked():
    """Same example: the 5 gold-ordered pairs have gaps (0,1):1 (0,2):2 (1,2):1 / (0,2):5 (1,2):5 and the proxy
    agrees on all but (1,2) of the first prompt. Sorted by gap (stable): 1 yes, 1 no, 2 yes, 5 yes, 5 yes;
    2 bins: [1 yes, 1 no, 2 yes] -> 2/3 over gaps 1-2, [5, 5] -> 1.0; the counts add up to the 5 pairs."""
    proxy, gold = [[1, 3, 2], [1, 1, 4]], [[1, 2, 3], [0, 0, 5]]
    bins = agreement_by_gold_gap(proxy, gold, bins=2)
    assert bins == [{"gap_min": 1.0, "gap_max": 2.0, "n_pairs": 3, "match_rate": pytest.approx(2 / 3)},
                    {"gap_min": 5.0, "gap_max": 5.0, "n_pairs": 2, "match_rate": 1.0}]
    assert match_figures(proxy, gold)["match_by_gold_gap"] == agreement_by_gold_gap(proxy, gold)  # 4 bins
    assert agreement_by_gold_gap(proxy, gold, tie_eps=1.0) == [  # gaps <= 1 are ties: 3 pairs left
        {"gap_min": 2.0, "gap_max": 2.0, "n_pairs": 1, "match_rate": 1.0},
        {"gap_min": 5.0, "gap_max": 5.0, "n_pairs": 1, "match_rate": 1.0},
        {"gap_min": 5.0, "gap_max": 5.0, "n_pairs": 1, "match_rate": 1.0}]
    assert agreement_by_gold_gap([[1, 2]], [[3, 3]]) == []


@pytest.mark.parametrize("seed", range(4))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 7, 300).astype(float)  # many ties
    y = x + rng.normal(0, 3, 300).round()
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    z = rng.normal(size=500)
    w = -z + rng.normal(size=500)
    assert kendall_tau_b(z, w) == pytest.approx(stats.kendalltau(z, w).statistic, abs=1e-12)


def test_diagnosis_names_the_figure():
    good = {"match_rate": 0.95, "n_pairs": 10, "spread_std": 1.0, "spread_iqr": 0.9, "proxy_std": 1, "gold_std": 1}
    assert diagnose({"heldout": {**good, "match_rate": 0.85}, "train": good}) == []
    out = diagnose({"heldout": {**good, "match_rate": 0.66}, "train": {**good, "match_rate": 0.85,
                                                                       "spread_std": 0.1}})
    assert len(out) == 3
    assert out[0].startswith("heldout match_rate 0.660 < 0.8")
    assert out[1].startswith("train match_rate 0.850 < 0.9") and "higher lr" in out[1]
    assert out[2].startswith("train spread_std 0.100 < 0.5") and "higher lr or more epochs" in out[2]
    assert spread_ratios(np.array([4.0, 5, 6]), np.array([3.0, 16, 29]))["spread_std"] == pytest.approx(1 / 13)


@pytest.mark.slow
def test_run_match_writes_figures_plot_and_diagnosis(tmp_path):
    rows = _samples(n_prompts=12, n=2)
    label(str(_write(tmp_path / "s.jsonl", rows)), text_score, out_scored=str(tmp_path / "l.jsonl"), out_pairs=None)

    def squeezed(prompts, responses):  # the right order, a tenth of the spread
        return text_score(prompts, responses) / 10

    res = run_match({"heldout": str(tmp_path / "l.jsonl")}, squeezed, out=tmp_path / "m")
    f = res["figures"]["heldout"]
    assert f["match_rate"] == 1.0 and f["spearman"] == pytest.approx(1.0) and f["spread_std"] == pytest.approx(0.1)
    assert any(d.startswith("heldout spread_std 0.100") for d in res["diagnosis"])
    assert (tmp_path / "m" / "scatter_heldout.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "m" / "match.json").read_text())["figures"]["heldout"]["n_pairs"] == f["n_pairs"]
    assert list((tmp_path / "m" / "tb").iterdir())


@pytest.mark.slow
def test_label_with_the_real_scorer_keeps_rewards_with_their_responses(tmp_path):
    """Through rm_ds.serve.scorer (contract 3) on a tiny RM: reversed response order gives each text the same reward."""
    from rm_ds.serve.scorer import load_scorer
    from tests.harness import make_tiny_setup

    root = make_tiny_setup(tmp_path / "t", n_pairs=1)
    score = load_scorer(str(root / "model")).score_responses
    rows = _samples(n_prompts=6, n=3)
    flipped = [dict(r, responses=r["responses"][::-1]) for r in rows]
    for name, data in (("a", rows), ("b", flipped)):
        label(str(_write(tmp_path / f"{name}.jsonl", data)), score, out_scored=str(tmp_path / f"{name}_l.jsonl"),
              out_pairs=None)
    a = {(r["id"], t): x for r in read_scored(tmp_path / "a_l.jsonl") for t, x in zip(r["responses"], r["rewards"])}
    b = {(r["id"], t): x for r in read_scored(tmp_path / "b_l.jsonl") for t, x in zip(r["responses"], r["rewards"])}
    assert a.keys() == b.keys() and len(set(a.values())) > 1
    assert all(a[k] == pytest.approx(b[k], abs=1e-5) for k in a)
