"""Config and data errors end a run with one line and a distinct exit code; bugs keep their traceback.

Run: ``PYTHONPATH=. python -m pytest tests/test_errors_cli.py -q``
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rm_ds.cli import main
from rm_ds.errors import ConfigError, DataError
from tests.harness import run_rm_ds

TINY = ["--config", "tiny", "data.eval_path=null", "logging.tensorboard=false", "train.export=false"]


def rm_ds(args: list[str], *, ranks: int = 1, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_rm_ds(args, ranks=ranks, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess, prefix: str) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if prefix in line]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


def malformed(tmp_path: Path) -> Path:
    f = tmp_path / "malformed.jsonl"
    f.write_text(json.dumps({"chosen": "a", "rejected": "b"}) + "\n" + json.dumps({"chosen": "c"}) + "\n")
    return f


@pytest.mark.slow
def test_config_error_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = rm_ds(["train", *TINY, "train.lr=-1", f"logging.run_dir={tmp_path}"])
    assert proc.returncode == ConfigError.exit_code == 2
    assert one_error_line(proc, "config error") == "rm-ds: config error: train.lr: must be > 0"


@pytest.mark.slow
def test_data_error_exits_3_with_one_line(tmp_path: Path) -> None:
    proc = rm_ds(["train", *TINY, f"data.train_path={malformed(tmp_path)}", f"logging.run_dir={tmp_path / 'run'}"])
    assert proc.returncode == DataError.exit_code == 3
    line = one_error_line(proc, "data error")
    assert line == f"rm-ds: data error: {tmp_path / 'malformed.jsonl'} line 2: field 'rejected': missing"


@pytest.mark.slow
def test_drop_last_with_too_few_pairs_is_a_config_error(tmp_path: Path) -> None:
    proc = rm_ds(["train", *TINY, "train.drop_last=true", "data.max_train_pairs=5", "train.global_batch_pairs=16",
                  f"logging.run_dir={tmp_path}"])
    assert proc.returncode == 2
    line = one_error_line(proc, "config error")
    assert "train.drop_last" in line and "train.global_batch_pairs=16" in line and "5 training pairs" in line


@pytest.mark.slow
@pytest.mark.cluster
def test_data_error_on_two_ranks_is_printed_once(tmp_path: Path) -> None:
    proc = rm_ds(["train", *TINY, f"data.train_path={malformed(tmp_path)}", f"logging.run_dir={tmp_path / 'run'}"],
                 ranks=2)
    assert proc.returncode == 3, (proc.stdout + proc.stderr)[-3000:]
    assert one_error_line(proc, "rm-ds: data error").endswith("line 2: field 'rejected': missing")


@pytest.mark.slow
def test_a_bug_keeps_its_traceback(monkeypatch) -> None:
    import rm_ds.train.recipe

    def boom(cfg, *, command):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(rm_ds.train.recipe, "main", boom)
    with pytest.raises(RuntimeError, match="a real bug"):
        main(["train", "--config", "tiny"])
