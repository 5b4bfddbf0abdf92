"""rm-ds sample: reproducible per prompt seed, identical on 1 and 2 ranks, resumable after SIGKILL."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from rm_ds.proxy.sample import (
    SamplingParams,
    _filter_top_p,
    draw_tokens,
    completed_batches,
    load_prompts,
    prompt_seed,
    run_sample,
)
from tests.harness import rm_ds_command, run_distributed, run_env

PARAMS = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=6, n=2)


@pytest.fixture(scope="module")
def tiny(tiny_setup):
    # the tiny Llama folder is a classifier; loaded as a causal LM its lm_head comes from the seed
    return tiny_setup("sample", n_pairs=11)


def _sample(tiny, out, **kw):
    args = {"prompts_path": str(tiny / "pairs.jsonl"), "out": str(out), "model": str(tiny / "model"),
            "params": PARAMS, "seed": 7, "batch_size": 3}
    return run_sample(**{**args, **kw})


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_same_seed_same_file_other_seed_other_file(tiny, tmp_path):
    _sample(tiny, tmp_path / "a.jsonl")
    _sample(tiny, tmp_path / "b.jsonl")
    _sample(tiny, tmp_path / "c.jsonl", seed=8)
    a = (tmp_path / "a.jsonl").read_bytes()
    assert a == (tmp_path / "b.jsonl").read_bytes()
    assert a != (tmp_path / "c.jsonl").read_bytes()
    rows = _rows(tmp_path / "a.jsonl")
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(11)]  # input order, every prompt once
    r = rows[0]
    assert len(r["responses"]) == 2 and "rewards" not in r
    assert r["sampling"] == {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 6, "n": 2}
    assert r["seed"] == prompt_seed(7, "p0") and r["policy"] == str(tiny / "model") and r["dtype"] == "bf16"
    assert r["responses"][0] != r["responses"][1]  # each response has its own generator


def test_a_prompt_samples_the_same_in_any_batch(tiny, tmp_path):
    """Per-row generators: batch size (other prompts, left padding) does not change a prompt's responses."""
    _sample(tiny, tmp_path / "b1.jsonl", batch_size=1)
    _sample(tiny, tmp_path / "b4.jsonl", batch_size=4)
    assert [r["responses"] for r in _rows(tmp_path / "b1.jsonl")] == \
        [r["responses"] for r in _rows(tmp_path / "b4.jsonl")]


def _rank_worker(tiny, out):
    from rm_ds.cluster import dist

    info = dist.current()
    return _sample(Path(tiny), out, rank=info.rank, world_size=info.world_size, barrier=dist.barrier)


@pytest.mark.slow
@pytest.mark.cluster
def test_two_ranks_write_the_same_file_as_one(tiny, tmp_path):
    _sample(tiny, tmp_path / "one.jsonl")
    res = run_distributed(_rank_worker, world_size=2, args=(str(tiny), str(tmp_path / "two.jsonl")))
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    assert sorted(p.name for p in (tmp_path / "two.jsonl.parts").glob("part-*")) == \
        ["part-002-000.jsonl", "part-002-001.jsonl"]
    assert res[0]["new_rows"] + res[1]["new_rows"] == 11  # batches 0,2 on rank 0 (6 rows), 1,3 on rank 1


def test_resume_after_sigkill_loses_and_repeats_nothing(tiny, tmp_path):
    _sample(tiny, tmp_path / "ref.jsonl")
    out = tmp_path / "killed.jsonl"
    cmd = rm_ds_command("sample", "--prompts", str(tiny / "pairs.jsonl"), "--out", str(out), "--model",
                        str(tiny / "model"), "--num-responses", "2", "--temperature", "1.0", "--top-p", "0.9",
                        "--max-new-tokens", "6", "--seed", "7", "--batch-size", "3")
    env = run_env({"RM_DS_FAULT": "sample_batch:2"})
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    part = out.with_name(out.name + ".parts") / "part-001-000.jsonl"
    assert not out.exists() and len(_rows(part)) == 6  # two batches of 3 prompts survived the kill
    # a kill in the middle of the next write: one whole row of batch 2 and a torn line
    ref = _rows(tmp_path / "ref.jsonl")
    with open(part, "a") as f:
        f.write(json.dumps(ref[6]) + "\n" + json.dumps(ref[7])[:25])
    env.pop("RM_DS_FAULT")
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "2 batches resumed" in resumed.stdout
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    ids = [r["id"] for r in _rows(part)]
    assert len(ids) == len(set(ids)) == 11  # the partial batch was cut and written once, whole


def test_resume_refuses_other_settings(tiny, tmp_path):
    _sample(tiny, tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="other settings.*sampling"):
        _sample(tiny, tmp_path / "x.jsonl", params=SamplingParams(temperature=0.5, max_new_tokens=6, n=2))


def test_completed_batches_cuts_partial_batches(tiny, tmp_path):
    prompts, _ = load_prompts(str(tiny / "pairs.jsonl"))
    batches = [prompts[0:2], prompts[2:4]]
    part = tmp_path / "part-001-000.jsonl"
    part.write_text("".join(json.dumps({"id": p.id}) + "\n" for p in prompts[:3]))
    assert completed_batches(tmp_path, batches) == {0}
    assert [json.loads(x)["id"] for x in part.read_text().splitlines()] == ["p0", "p1"]


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_filter_top_p(logits, 0.8))[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    assert torch.isfinite(_filter_top_p(logits, 0.81))[0].tolist() == [True, True, True, False]


def test_duplicate_prompts_are_skipped_and_counted(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": "hi"}\n{"prompt": "yo"}\n')
    prompts, skipped = load_prompts(str(f))
    assert [p.id for p in prompts] == ["a", "p:3"] and skipped == {"duplicate prompt": 1}
    f.write_text('{"id": "a", "prompt": ""}\n')
    with pytest.raises(ValueError, match="line 1: field 'prompt'"):
        load_prompts(str(f))


def test_inverse_cdf_draw_skips_zero_probability_tokens():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.25, 0.25, 0.25, 0.25]])
    assert draw_tokens(probs, torch.tensor([0.0, 0.0])).tolist() == [1, 0]
    assert draw_tokens(probs, torch.tensor([0.5, 0.74])).tolist() == [3, 2]
    assert draw_tokens(probs, torch.tensor([0.999999, 0.999999])).tolist() == [3, 3]
