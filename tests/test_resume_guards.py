"""A resume never continues silently onto other data or from a damaged checkpoint (single process).

Run: ``PYTHONPATH=. python -m pytest tests/test_resume_guards.py -q``

Trainings run ``rm-ds train`` in a subprocess with the tiny random Llama (as tests/test_run_safety.py);
the checks on damaged checkpoints run on copies of one real run's checkpoints, without training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rm_ds.config import ConfigError
from tests.harness import ENV, make_tiny_setup

STEP2, STEP4 = "step_00000002", "step_00000004"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_tiny_setup(tmp_path_factory.mktemp("guards"), n_pairs=32)


def train(root: Path, run_dir: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rm_ds.cli", "train", *train_args(root, run_dir, data, *extra)],
                          capture_output=True, text=True, timeout=240, env={**os.environ, **ENV})


def train_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["split"] == "train"]


def one_error_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The run failed with ``code`` and exactly one line (no traceback); that line."""
    assert proc.returncode == code, (proc.stdout + proc.stderr)[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("rm-ds:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def two_checkpoints(root, tmp_path_factory) -> Path:
    """One finished run with complete checkpoints at steps 2 and 4 (and its data file next to it)."""
    base = tmp_path_factory.mktemp("two")
    data = base / "pairs.jsonl"
    shutil.copy(root / "pairs.jsonl", data)
    run_dir = base / "run"
    proc = train(root, run_dir, data, "train.save_every_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = run_dir / "checkpoints"
    assert (ckpts / STEP2 / "COMPLETE").exists() and (ckpts / STEP4 / "COMPLETE").exists()
    return run_dir


def train_args(root: Path, run_dir: Path, data: Path, *extra: str) -> list[str]:
    return ["--config", "tiny", f"model.name_or_path={root / 'model'}", f"data.train_path={data}",
            "data.eval_path=null", "data.max_train_pairs=null", "data.max_length=64", "train.global_batch_pairs=8",
            "train.max_steps=4", "train.export=false", "deepspeed.config=zero2", "logging.tensorboard=false",
            "eval.save_scores=false", f"logging.run_dir={run_dir}", *extra]


def check_resume_onto(root: Path, run_dir: Path, data: Path, tag: str, *extra: str) -> None:
    """The resume check ``rm-ds train`` runs before training, in this process: the run's config, the data record
    of ``data`` as loading it gives, the checkpoint ``tag``."""
    from rm_ds.config import load_config
    from rm_ds.data.pairs import load_pairs
    from rm_ds.train.checkpoint import check_resume, train_data_record

    cfg = load_config("tiny", train_args(root, run_dir, data, *extra)[2:])
    _, report = load_pairs(str(data), split="train")
    record = train_data_record({"path": str(data), "split": "train", **dataclasses.asdict(report)})
    check_resume(run_dir / "checkpoints", tag, cfg, data=record, rank=0, world_size=1)


@pytest.mark.slow
def test_resume_onto_changed_training_data_is_refused_unless_overridden(root: Path, tmp_path: Path) -> None:
    """The same path with other contents (chosen and rejected swapped; the file cut to 12 rows) is refused
    naming data.train_path, for resume=auto (end to end) and an explicit checkpoint; resume_override=
    [data.train_path] goes on, and the override is recorded in run_dir/resume_overrides.jsonl. The variants
    of the check (explicit checkpoint, a checkpoint older than the data record, a shorter file) run in process."""
    data, run_dir = tmp_path / "pairs.jsonl", tmp_path / "run"
    rows = [json.loads(x) for x in (root / "pairs.jsonl").read_text().splitlines()]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = train(root, run_dir, data, "train.max_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert train_steps(run_dir) == [1, 2]
    check_resume_onto(root, run_dir, data, STEP2, "train.max_steps=2")  # unchanged data: no objection

    flipped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    data.write_text("".join(json.dumps(r) + "\n" for r in flipped))
    line = one_error_line(train(root, run_dir, data, "resume=auto", "train.max_steps=2"))
    assert line.startswith("rm-ds: config error: data.train_path:") and str(data) in line, line
    assert "resume_override=[data.train_path]" in line and "32 pairs from 32 rows then, 32 pairs" in line, line
    assert train_steps(run_dir) == [1, 2]  # nothing trained
    with pytest.raises(ConfigError, match="^data.train_path:") as e:
        check_resume_onto(root, run_dir, data, STEP2, f"resume={run_dir / 'checkpoints' / STEP2}", "train.max_steps=2")
    assert "32 pairs from 32 rows then, 32 pairs" in str(e.value) and "\n" not in str(e.value)

    # a checkpoint written before checkpoints carried their data record: compared with the run's data.json
    complete = run_dir / "checkpoints" / STEP2 / "COMPLETE"
    saved = json.loads(complete.read_text())
    complete.write_text(json.dumps({k: v for k, v in saved.items() if k != "data"}) + "\n")
    with pytest.raises(ConfigError, match="^data.train_path:"):
        check_resume_onto(root, run_dir, data, STEP2, "resume=auto", "train.max_steps=2")
    complete.write_text(json.dumps(saved) + "\n")

    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:12]))
    with pytest.raises(ConfigError, match="^data.train_path:") as e:
        check_resume_onto(root, run_dir, data, STEP2, "resume=auto", "train.max_steps=2")
    assert "32 pairs from 32 rows then, 12 pairs from 12 rows now" in str(e.value), e.value
    assert not (run_dir / "resume_overrides.jsonl").exists()

    data.write_text("".join(json.dumps(r) + "\n" for r in flipped))
    ok = train(root, run_dir, data, "resume=auto", "resume_override=[data.train_path,train.max_steps]")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "the training data changed" in ok.stderr and "resumed from" in ok.stderr, ok.stderr[-3000:]
    assert train_steps(run_dir) == [1, 2, 3, 4]
    rec = [json.loads(x) for x in (run_dir / "resume_overrides.jsonl").read_text().splitlines()]
    assert len(rec) == 1 and rec[0]["step"] == 2 and rec[0]["overrides"] == {"train.max_steps": [2, 4]}
    old_fp, new_fp = rec[0]["data"]["fingerprint"]
    assert old_fp != new_fp and rec[0]["data"]["n_loaded"] == [32, 32]
    # the checkpoints written since carry the new data, so the next resume compares with that
    assert json.loads((run_dir / "checkpoints" / STEP4 / "COMPLETE").read_text())["data"]["fingerprint"] == new_fp


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


def damage_truncate(ckpt: Path) -> Path:
    f = ckpt / "mp_rank_00_model_states.pt"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return f


def damage_garbage_rng(ckpt: Path) -> Path:
    f = ckpt / "rng_rank0.pt"
    f.write_bytes(b"\x80\x04garbage, not a torch file" * 7)
    return f


def damage_missing(ckpt: Path) -> Path:
    (f,) = ckpt.glob("*optim_states.pt")
    f.unlink()
    return f


def damage_garbage_same_size(ckpt: Path) -> Path:
    """Overwritten in place with the same number of bytes: the size matches, the content does not."""
    f = ckpt / "rng_rank0.pt"
    f.write_bytes(bytes(f.stat().st_size))
    return f


@pytest.mark.slow
@pytest.mark.parametrize("damage", [damage_truncate, damage_garbage_rng, damage_missing, damage_garbage_same_size],
                         ids=lambda f: f.__name__)
def test_a_damaged_newest_checkpoint_is_named_and_auto_falls_back(two_checkpoints: Path, tmp_path: Path, damage,
                                                                  caplog) -> None:
    from rm_ds.train.checkpoint_files import checkpoint_problem, find_resume

    run_dir = copy_run(two_checkpoints, tmp_path / "run")
    root = run_dir / "checkpoints"
    assert checkpoint_problem(root, STEP4) is None and find_resume("auto", run_dir) == (root, STEP4)
    bad = damage(root / STEP4)
    problem = checkpoint_problem(root, STEP4)
    assert problem is not None and problem.startswith(str(bad)) and "\n" not in problem, problem
    with caplog.at_level(logging.WARNING):
        assert find_resume("auto", run_dir) == (root, STEP2)
    warned = [r.getMessage() for r in caplog.records]
    assert any(str(bad) in m and "damaged" in m for m in warned), warned
    assert any("resuming from" in m and STEP2 in m for m in warned), warned
    with pytest.raises(ConfigError, match="damaged") as e:  # named explicitly: refused, not replaced
        find_resume(str(root / STEP4), run_dir)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)

    damage(root / STEP2)  # no whole checkpoint left: one error naming both, never a silent fresh start
    with pytest.raises(ConfigError) as e:
        find_resume("auto", run_dir)
    msg = str(e.value)
    assert "\n" not in msg and f"{STEP4}: {bad}" in msg and f"{STEP2}: {root / STEP2 / bad.name}" in msg, msg


@pytest.mark.slow
def test_training_resumes_from_the_newest_whole_checkpoint(root: Path, two_checkpoints: Path,
                                                          tmp_path: Path) -> None:
    """End to end: the newest checkpoint's model states cut short; resume=auto names the file, resumes
    from step 2 and trains steps 3 and 4 again; an explicit resume from it stops with one config-error line
    (exit 2) before training (every checkpoint damaged: the in-process test above)."""
    run_dir = copy_run(two_checkpoints, tmp_path / "run")
    data = two_checkpoints.parent / "pairs.jsonl"
    root_ = run_dir / "checkpoints"
    bad = damage_truncate(root_ / STEP4)
    line = one_error_line(train(root, run_dir, data, f"resume={root_ / STEP4}"))
    assert "resume: checkpoint" in line and str(bad) in line and "cut short" in line, line

    ok = train(root, run_dir, data, "resume=auto", "train.save_every_steps=2")
    assert ok.returncode == 0, ok.stderr[-3000:]
    warned = [x for x in ok.stderr.splitlines() if "damaged" in x]
    assert len(warned) == 1 and str(bad) in warned[0], ok.stderr[-3000:]
    assert f"resumed from {root_ / STEP2} at step 2" in ok.stderr, ok.stderr[-3000:]
    assert train_steps(run_dir) == [1, 2, 3, 4, 3, 4]
    assert (root_ / STEP4 / "COMPLETE").exists() and json.loads((root_ / STEP4 / "COMPLETE").read_text())["step"] == 4



@pytest.mark.slow
@pytest.mark.parametrize(("override", "start"), [
    ("resume=bogus", "rm-ds: config error: resume: 'bogus' is neither none, auto nor an existing checkpoint"),
    ("eval.metric=bogus", "rm-ds: config error: eval.metric: 'bogus' is not an eval metric"),
    ("logging.run_dir=", "rm-ds: config error: logging.run_dir: is empty"),
    ("data.max_train_pairs=0", "rm-ds: config error: data.max_train_pairs: must be >= 1 or null"),
])
def test_bad_values_stop_the_command_at_load(override: str, start: str, tmp_path: Path) -> None:
    """Through the command line: exit 2, one line, and nothing written (not even into the current directory)."""
    proc = subprocess.run([sys.executable, "-m", "rm_ds.cli", "train", "--config", "tiny",
                           f"logging.run_dir={tmp_path / 'run'}", override], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **ENV, "PYTHONPATH": str(Path(__file__).parents[1])},
                          cwd=tmp_path)
    assert one_error_line(proc).startswith(start), proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_eval_metric_is_checked_against_the_loaded_eval_set() -> None:
    """A per-source name whose source the eval set lacks, or tie_rate without soft labels, fails before
    training with the names the set does yield; one it has passes."""
    import datasets

    from rm_ds.config import load_config
    from rm_ds.train.evaluate import check_eval_metric

    ds = datasets.Dataset.from_dict({"pair_id": ["a", "b", "c"], "source": ["web", "web", "books"],
                                     "prompt_ids": [[1], [1], [2]], "chosen_ids": [[3, 4], [5], [6]],
                                     "rejected_ids": [[7], [8, 9], [4]]})
    for ok in ("accuracy/books", "n_pairs/web", "len_corr_margin", "temperature", "tpr@0"):
        check_eval_metric(load_config("tiny", [f"eval.metric={ok}"]), ds)
    for bad in ("accuracy/news", "tie_rate"):
        with pytest.raises(ConfigError) as e:
            check_eval_metric(load_config("tiny", [f"eval.metric={bad}"]), ds)
        assert str(e.value).startswith(f"eval.metric: {bad!r} is not among the metrics of the eval set")
        assert "accuracy/books" in str(e.value) and "\n" not in str(e.value)
