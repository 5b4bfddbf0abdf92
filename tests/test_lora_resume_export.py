"""LoRA with a trainable head, exact kill-and-resume, and HF export under ZeRO-2/3 (2 CPU ranks).

    PYTHONPATH=. python -m pytest tests/test_lora_resume_export.py -q

Every run goes through the real ``deepspeed`` launcher with the tiny random Llama on WordNet pairs.
Exported folders are scored in a fresh interpreter that imports transformers only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rm_ds.train.checkpoint_files import eval_subdir
from tests.harness import ENV, run_rm_ds

BASE = ["--config", "tiny", "train.max_steps=6", "train.lr=5e-3", "eval.every_steps=3", "logging.progress=false",
        "data.max_train_pairs=192", "data.max_eval_pairs=41"]

SCORER = r"""
import json, sys, torch
from transformers import AutoModelForSequenceClassification
folder, pairs_file, adapter_base = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else None)
if adapter_base:
    from peft import PeftModel
    base = AutoModelForSequenceClassification.from_pretrained(adapter_base, num_labels=1)
    model = PeftModel.from_pretrained(base, folder)
else:
    model = AutoModelForSequenceClassification.from_pretrained(folder)
model.eval()
assert not any(m.startswith("rm_ds") for m in sys.modules), "the exported model must load without rm_ds"
out = {}
with torch.no_grad():
    for pid, (c, r) in json.load(open(pairs_file)).items():
        out[pid] = [model(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in (c, r)]
print(json.dumps(out))
"""


def launch(args: list[str], *, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_rm_ds(["train", *args], ranks=2, env=env, timeout=timeout)


def train_losses(run_dir: Path) -> dict[int, float]:
    """Last logged loss of every step (a resumed run re-logs the steps after its checkpoint)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["split"] == "train":
            out[rec["step"]] = rec["loss"]
    return out


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    from rm_ds.train.checkpoint_files import consolidated_state_dict

    root = run_dir / "checkpoints"
    return consolidated_state_dict(str(root), (root / "latest").read_text().strip())


def eval_pairs_file(run_dir: Path, tmp: Path) -> Path:
    """The run's eval pairs as full token-id sequences, written for the fresh-process scorer."""
    from rm_ds.config import load_config
    from rm_ds.model import load_tokenizer
    from tests.harness import load_split

    cfg = load_config(run_dir / "config.yaml")
    ds, _ = load_split(cfg, load_tokenizer(cfg.model.name_or_path), cfg.data.eval_path, split="test",
                       max_pairs=cfg.data.max_eval_pairs)
    pairs = {r["pair_id"]: [r["prompt_ids"] + r["chosen_ids"], r["prompt_ids"] + r["rejected_ids"]] for r in ds}
    path = tmp / "pairs.json"
    path.write_text(json.dumps(pairs))
    return path


def score_in_fresh_process(folder: Path, pairs: Path, adapter_base: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    extra = [adapter_base] if adapter_base else []
    proc = subprocess.run([sys.executable, "-c", SCORER, str(folder), str(pairs), *extra],
                          capture_output=True, text=True, timeout=120, env={**env, **ENV}, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_export_reproduces_final_eval(run_dir: Path, folder: Path, tmp: Path, adapter_base: str | None = None):
    dist = json.loads((run_dir / eval_subdir(6) / "reward_distributions.json").read_text())
    scores = score_in_fresh_process(folder, eval_pairs_file(run_dir, tmp), adapter_base)
    assert len(scores) == len(dist["pair_id"]) == 41
    for pid, c, r in zip(dist["pair_id"], dist["chosen"], dist["rejected"]):
        assert scores[pid][0] == pytest.approx(c, abs=1e-5) and scores[pid][1] == pytest.approx(r, abs=1e-5), pid


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_lora_trains_head_keeps_base_and_exports(tmp_path, stage):
    from rm_ds.builtin import resolve_model

    run_dir = tmp_path / "run"
    proc = launch([*BASE, "lora.enabled=true", "lora.r=4", f"deepspeed.config={stage}", f"logging.run_dir={run_dir}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    init = load_file(str(Path(resolve_model("builtin:tiny-llama")) / "model.safetensors"))
    final = final_state(run_dir)
    assert torch.equal(final["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"],
                       init["model.layers.0.self_attn.q_proj.weight"])
    frozen = [k for k in final if "lora_" not in k and ".score." not in k]
    assert len(frozen) > 10
    for k in frozen:  # every base weight is bit-identical to the pretrained one
        assert torch.equal(final[k], init[k.replace("base_model.model.", "").replace(".base_layer", "")]), k
    assert not torch.allclose(final["base_model.model.score.weight"], init["score.weight"]), "head did not train"
    assert final["base_model.model.model.layers.1.mlp.down_proj.lora_B.default.weight"].abs().sum() > 0
    summary = json.loads((run_dir / "summary.json").read_text())["train"]
    assert 0 < summary["trainable_params"] < summary["total_params"] / 10
    assert_export_reproduces_final_eval(run_dir, run_dir / "export" / "final", tmp_path)
    if stage == "zero2":  # adapter-only export carries the head too
        from rm_ds.train.export import export_run

        adapter = export_run(run_dir, step="final", out=tmp_path / "adapter", adapter=True)
        assert (adapter / "adapter_config.json").exists()
        assert_export_reproduces_final_eval(run_dir, adapter, tmp_path,
                                            adapter_base=resolve_model("builtin:tiny-llama"))


@pytest.mark.slow
@pytest.mark.cluster
def test_full_finetune_zero3_export_carries_calibration(tmp_path):
    from transformers import AutoConfig

    run_dir = tmp_path / "run"
    proc = launch([*BASE, "deepspeed.config=zero3", f"logging.run_dir={run_dir}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = run_dir / "export" / "final"
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    assert_export_reproduces_final_eval(run_dir, folder, tmp_path)
    cal = AutoConfig.from_pretrained(folder).rm_ds_calibration
    saved = json.loads((run_dir / eval_subdir(6) / "calibration.json").read_text())
    assert cal["temperature"] == pytest.approx(saved["temperature"]) and cal["temperature"] > 0
    assert cal["reward_std"] == pytest.approx(saved["reward_std"]) and "reward_mean" in cal
    assert cal["eval_pairs"] == 41 and len(cal["eval_set_sha256"]) == 64 and cal["step"] == 6
    best = json.loads((run_dir / "best.json").read_text())["step"]
    assert (run_dir / "export" / "best" / "config.json").exists() and best in (3, 6)


@pytest.mark.slow
@pytest.mark.cluster
def test_sigkill_and_resume_is_exact(tmp_path):
    """Uninterrupted run vs a run SIGKILLed after step 3 (checkpoint at 2), resumed, SIGKILLed inside
    the save at step 4 (so step 4's checkpoint is incomplete), resumed again: same losses, same weights."""
    common = [*BASE, "train.save_every_steps=2", "deepspeed.config=zero2", "eval.every_steps=0"]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = launch([*common, f"logging.run_dir={ref_dir}"])
    assert ref.returncode == 0, ref.stderr[-3000:]

    first = launch([*common, f"logging.run_dir={run_dir}"], env={"RM_DS_FAULT": "after_step:3"})
    assert first.returncode != 0 and sorted(train_losses(run_dir)) == [1, 2, 3]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000002"

    second = launch([*common, f"logging.run_dir={run_dir}", "resume=auto"], env={"RM_DS_FAULT": "in_save:4"})
    assert second.returncode != 0
    assert "resumed from" in second.stdout + second.stderr
    assert (run_dir / "checkpoints" / ".partial-step_00000004").is_dir()  # shards written ...
    assert not (run_dir / "checkpoints" / ".partial-step_00000004" / "COMPLETE").exists()  # ... never completed
    assert not (run_dir / "checkpoints" / "step_00000004").exists()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000002"

    third = launch([*common, f"logging.run_dir={run_dir}", "resume=auto"])
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "resumed from" in third.stdout + third.stderr and "step_00000002" in third.stdout + third.stderr

    want, got = train_losses(ref_dir), train_losses(run_dir)
    assert sorted(got) == sorted(want) == list(range(1, 7))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), step
    seen = lambda d: {r["step"]: r["n_pairs"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                      if r["split"] == "train"}
    assert seen(run_dir) == seen(ref_dir) and sum(seen(run_dir).values()) == 6 * 16
    a, b = final_state(ref_dir), final_state(run_dir)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7)

    # resuming with another world size would change the global batches: refused, clearly
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    proc = run_rm_ds(["train", *common, f"logging.run_dir={other}", "resume=auto", "train.max_steps=8"], timeout=180)
    assert proc.returncode != 0 and "written by 2 ranks and this run has 1" in proc.stderr


def test_checkpoints_and_eval_folders_share_one_step_name(tmp_path):
    """One naming for step folders (8 digits); an older run's 6-digit eval folder is still found by export."""
    from rm_ds.train.checkpoint_files import find_eval_dir, tag_for
    from rm_ds.train.export import calibration_for

    assert tag_for(40) == "step_00000040" and eval_subdir(40) == "eval/step_00000040"
    assert find_eval_dir(tmp_path, 40) is None and calibration_for(tmp_path, 40) is None
    old = tmp_path / "eval" / "step_000040"
    old.mkdir(parents=True)
    (old / "calibration.json").write_text(json.dumps({"temperature": 1.5}))
    assert find_eval_dir(tmp_path, 40) == old and calibration_for(tmp_path, 40) == {"temperature": 1.5}
    new = tmp_path / eval_subdir(40)
    new.mkdir(parents=True)
    (new / "calibration.json").write_text(json.dumps({"temperature": 2.0}))
    assert calibration_for(tmp_path, 40) == {"temperature": 2.0}


def test_an_export_of_the_same_checkpoint_is_linked_not_redone(tmp_path):
    """export/best of the step export/final already holds: the same files, hard-linked; another step: not."""
    import json as _json
    import os as _os

    from rm_ds.train.export import _link_existing_export

    root = tmp_path / "export"
    final = root / "final"
    final.mkdir(parents=True)
    (final / "rm_ds_export.json").write_text(_json.dumps({"checkpoint": "step_00000020", "step": 20,
                                                           "adapter": False}))
    (final / "model.safetensors").write_bytes(b"weights")
    assert not _link_existing_export(root, "step_00000010", root / "best", adapter=False)
    assert not _link_existing_export(root, "step_00000020", root / "best", adapter=True)  # another kind
    assert not (root / "best").exists()
    assert _link_existing_export(root, "step_00000020", root / "best", adapter=False)
    for f in final.iterdir():
        assert (root / "best" / f.name).read_bytes() == f.read_bytes()
        assert _os.stat(root / "best" / f.name).st_ino == _os.stat(f).st_ino
