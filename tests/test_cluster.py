"""Cluster launch paths on loopback, ``rm-ds compare``, and the shell scripts.

Two "nodes" of one rank each on this machine form one job of world size 2 that trains, through
``launch/train_node.sh`` (one deepspeed launcher per node, no ssh: what a Slurm step runs), through
``launch/train_mpirun.sh`` (mpirun, ranks meet through MPI via mpi4py) and through
``launch/train_multinode.sh`` with the OpenMPI backend. For mpirun the two nodes are 127.0.0.2 and
127.0.0.3 in a hostfile (the whole 127/8 is loopback on Linux) reached through a local stand-in for
ssh (``OMPI_MCA_plm_rsh_agent``): mpirun starts one orted per host as on a real cluster, and the
master address must be the hostfile's first host.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ENV, free_port

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*REPO.glob("launch/*.sh"), *REPO.glob("slurm/*.sh"), *REPO.glob("slurm/*.sbatch")])
needs_mpirun = pytest.mark.skipif(shutil.which("mpirun") is None, reason="OpenMPI (mpirun) is not installed")
TINY = ["--config", "tiny"]


def _env(**extra) -> dict:
    # rtc_hwloc_vmhole=none: on this sandbox (gVisor) an orted started beside mpirun segfaulted now and
    # then mapping hwloc's shared-memory topology into a "VM hole"; without the mapping it reads its own
    env = {**os.environ, **ENV, "OMPI_MCA_rtc_hwloc_vmhole": "none", **extra}
    env.pop("RANK", None)
    return env


def _joined(log: str) -> dict[int, str]:
    """rank -> the line rm_ds.cluster.dist prints when a rank joins."""
    return {int(m.group(1)): m.group(0)
            for m in re.finditer(r"\[rank\d\] rm_ds\.cluster\.dist: joined world size 2 as rank (\d) \([^)]*\)", log)}


def _check_trained(run_dir: Path, steps: int = 8) -> None:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, steps + 1))
    evals = [r for r in rows if r["split"] == "eval"]
    assert evals and all(r["n_pairs"] == 101 for r in evals)  # every eval pair once over both ranks


@pytest.fixture
def two_loopback_hosts(tmp_path) -> tuple[Path, Path]:
    """A hostfile of two one-slot "hosts" on loopback and an rsh agent that runs commands here."""
    agent = tmp_path / "local_rsh"
    agent.write_text('#!/bin/sh\n# mpirun calls: AGENT [options] HOST COMMAND...; run COMMAND on this machine\n'
                     'while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) shift; break ;; esac; done\n'
                     'exec sh -c "$*"\n')
    agent.chmod(0o755)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes of one rank each\n127.0.0.2 slots=1\n127.0.0.3 slots=1\n")
    return hostfile, agent


@pytest.mark.slow
@pytest.mark.cluster
def test_two_nodes_through_train_node_sh(tmp_path):
    run_dir = tmp_path / "run"
    port = str(free_port())
    procs = [subprocess.Popen(["bash", "launch/train_node.sh", *TINY, f"logging.run_dir={run_dir}"], cwd=REPO,
                              env=_env(NNODES="2", NODE_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                                       NPROC_PER_NODE="1"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"node {r}:\n{log[-4000:]}"
        joined = _joined(log)
        assert list(joined) == [r], f"node {r} should hold exactly rank {r}:\n{log[-4000:]}"
        assert "local rank 0, via launcher" in joined[r]
    assert "world size 2" in logs[0] and "== rm_ds training finished ==" in logs[0]
    _check_trained(run_dir)


@pytest.mark.slow
@pytest.mark.cluster
@needs_mpirun
def test_two_nodes_through_mpirun(tmp_path, two_loopback_hosts):
    hostfile, agent = two_loopback_hosts
    run_dir = tmp_path / "run"
    proc = subprocess.run(["bash", "launch/train_mpirun.sh", "--hostfile", str(hostfile), *TINY,
                           f"logging.run_dir={run_dir}"], cwd=REPO, env=_env(OMPI_MCA_plm_rsh_agent=str(agent)),
                          capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    joined = _joined(log)
    assert sorted(joined) == [0, 1], log[-4000:]
    for line in joined.values():  # one rank per node, MASTER_ADDR the hostfile's first host
        assert "local rank 0, via mpi, master 127.0.0.2:" in line
    assert "world size 2" in log and "== rm_ds training finished ==" in log
    _check_trained(run_dir)


@pytest.mark.slow
@pytest.mark.cluster
@needs_mpirun
def test_two_nodes_through_train_multinode_sh_with_openmpi(tmp_path, two_loopback_hosts):
    hostfile, agent = two_loopback_hosts
    run_dir = tmp_path / "run"
    proc = subprocess.run(["bash", "launch/train_multinode.sh", str(hostfile), *TINY, f"logging.run_dir={run_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=_env(LAUNCHER="openmpi", NO_SSH_CHECK="1", OMPI_MCA_plm_rsh_agent=str(agent),
                                   LAUNCHER_ARGS="--mca btl_tcp_if_include lo", MASTER_PORT=str(free_port())))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    joined = _joined(log)
    assert sorted(joined) == [0, 1] and all("master 127.0.0.2:" in line for line in joined.values()), log[-4000:]
    assert "-x DS_ACCELERATOR=cpu" in log  # the run-time environment reached the other hosts
    _check_trained(run_dir)


MPI_ENV_PROBE = ("import sys; from rm_ds.cluster.dist import _mpi_env; e = _mpi_env(); "
                 "sys.stdout.write(f\"PROBE {e['RANK']} {e['LOCAL_RANK']} {e['MASTER_ADDR']} END\\n\")")


@pytest.mark.slow
@pytest.mark.cluster
@needs_mpirun
@pytest.mark.parametrize("hosts", ["one", "two"])
def test_mpi_discovery_picks_loopback_on_one_node_and_the_first_host_on_two(hosts, two_loopback_hosts):
    """No MASTER_ADDR given: one node -> 127.0.0.1; two nodes -> rank 0's host name (never `hostname -I`)."""
    hostfile, agent = two_loopback_hosts
    cmd = ["mpirun", "--allow-run-as-root", "--bind-to", "none", "-np", "2", "-x", "PATH"]
    if hosts == "two":
        cmd += ["--hostfile", str(hostfile)]
    env = _env(OMPI_MCA_plm_rsh_agent=str(agent))
    env.pop("MASTER_ADDR", None)
    env.pop("MASTER_PORT", None)
    proc = subprocess.run([*cmd, sys.executable, "-c", MPI_ENV_PROBE], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    probes = sorted(m.group(1).split() for m in re.finditer(r"PROBE (.*?) END", proc.stdout))
    import socket

    want = "127.0.0.1" if hosts == "one" else socket.gethostname()
    assert probes == [["0", "0", want], ["1", "1" if hosts == "one" else "0", want]]


# --------------------------------------------------------------------------- rm-ds compare


def _write_run(path: Path, *, train: list[dict], evals: list[dict], summary: dict | None) -> None:
    path.mkdir(parents=True)
    with open(path / "metrics.jsonl", "w") as f:
        for r in train:
            f.write(json.dumps({"split": "train", **r}) + "\n")
        for r in evals:
            f.write(json.dumps({"split": "eval", **r}) + "\n")
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def two_runs(tmp_path) -> Path:
    """``a``: finished (summary.json), resumed at step 10 (steps 11-12 logged twice, the later rows win).
    ``b``: unfinished, no trainable_params anywhere."""
    parent = tmp_path / "runs"
    train_a = [{"step": s, "accuracy": 0.5 + s / 100, "loss": 1.0 - s / 100, "pairs_per_s": 10.0,
                "tokens_per_s": 100.0, "peak_mem_mib": 100.0 + s} for s in range(1, 13)]
    train_a += [{**r, "accuracy": r["accuracy"] + 0.001} for r in train_a[10:12]]  # after the resume
    train_a += [{"step": s, "accuracy": 0.5 + s / 100, "loss": 1.0 - s / 100, "pairs_per_s": 10.0,
                 "tokens_per_s": 100.0, "peak_mem_mib": 100.0 + s} for s in range(13, 21)]
    evals_a = [{"step": 10, "accuracy": 0.7, "auc": 0.8, "ece": 0.05, "loss": 0.6},
               {"step": 20, "accuracy": 0.65, "auc": 0.85, "ece": 0.08, "loss": 0.62}]
    _write_run(parent / "a", train=train_a, evals=evals_a,
               summary={"train": {"steps": 20, "pairs_per_s": 12.5, "tokens_per_s": 321.0, "peak_mem_mib": 777.0,
                                  "trainable_params": 1234},
                        "best": {"step": 10, "metric": "accuracy", "value": 0.7}})
    _write_run(parent / "b", train=[{"step": s, "accuracy": 0.5, "loss": 0.7, "pairs_per_s": 2.0 * s,
                                     "tokens_per_s": 50.0, "peak_mem_mib": 50.0 * s} for s in range(1, 5)],
               evals=[{"step": 4, "accuracy": 0.55, "auc": 0.6, "ece": 0.1, "loss": 0.69}], summary=None)
    return parent


def test_compare_table_values(two_runs):
    from rm_ds.eval.compare import compare

    rows, files = compare([two_runs])
    a, b = rows
    assert (a["run"], b["run"]) == ("a", "b")
    assert (a["accuracy_best"], a["accuracy_final"], a["auc_best"], a["auc_final"]) == (0.7, 0.65, 0.85, 0.85)
    assert (a["ece_best"], a["ece_final"], a["loss_best"], a["loss_final"]) == (0.05, 0.08, 0.6, 0.62)
    assert (a["steps"], a["best_step"]) == (20, 10)
    # final train accuracy: the mean of the last 10 steps (11..20), the resumed rows of 11 and 12 winning
    want_train_acc = (sum(0.5 + s / 100 for s in range(11, 21)) + 0.002) / 10
    assert a["train_accuracy"] == pytest.approx(want_train_acc)
    assert a["train_loss"] == pytest.approx(sum(1.0 - s / 100 for s in range(11, 21)) / 10)
    assert a["accuracy_gap"] == pytest.approx(want_train_acc - 0.65)
    assert a["loss_gap"] == pytest.approx(0.62 - a["train_loss"])
    assert (a["pairs_per_s"], a["tokens_per_s"], a["peak_mem_mib"], a["trainable_params"]) == (12.5, 321.0, 777.0, 1234)
    # unfinished: totals from the train rows; best step by eval accuracy; nothing on trainable params
    assert (b["steps"], b["best_step"], b["pairs_per_s"], b["peak_mem_mib"]) == (4, 4, 5.0, 200.0)
    assert b["trainable_params"] is None

    assert files["csv"].parent == two_runs  # default output: the common parent
    table = list(csv.DictReader(files["csv"].open()))
    assert [r["run"] for r in table] == ["a", "b"] and table[1]["trainable_params"] == ""
    assert float(table[0]["accuracy_gap"]) == pytest.approx(want_train_acc - 0.65)
    md = files["md"].read_text().splitlines()
    assert md[0].startswith("| run | steps |") and len(md) == 4
    assert md[2].startswith("| a | 20 | 10 | 0.7 | 0.65 |") and md[2].endswith("| 1,234 |")
    assert md[3].endswith("| - |")
    for metric in ("accuracy", "auc", "ece"):
        assert files[metric].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_cli_named_runs_and_errors(two_runs, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "rm_ds.cli", "compare", str(two_runs / "a"), str(two_runs / "b"),
                           "--out", str(out)], capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split()[:3] == ["run", "steps", "best"]
    assert {p.name for p in out.iterdir()} == {"compare.csv", "compare.md", "compare_accuracy.png",
                                               "compare_auc.png", "compare_ece.png"}
    bad = subprocess.run([sys.executable, "-m", "rm_ds.cli", "compare", str(tmp_path / "report")],
                         capture_output=True, text=True, timeout=120, env=_env())
    assert bad.returncode == 2 and "config error" in bad.stderr and "no metrics.jsonl" in bad.stderr


# --------------------------------------------------------------------------- scripts and the shipped table


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_passes_on_every_script():
    assert len(SCRIPTS) >= 8
    proc = subprocess.run(["shellcheck", "-x", *[str(p.relative_to(REPO)) for p in SCRIPTS]], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout


def test_every_script_starts_with_its_usage_line():
    for p in SCRIPTS:
        lines = p.read_text().splitlines()
        usage = [line for line in lines[1:6] if re.match(r"#\s+(bash|sbatch|\.|NNODES=)", line)]
        assert usage and p.name in usage[0], f"{p}: no usage line near the top"


def test_sbatch_files_hold_no_hyperparameters():
    for p in REPO.glob("slurm/*.sbatch"):
        code = [line for line in p.read_text().splitlines() if not line.lstrip().startswith("#")]
        hits = [line for line in code if re.search(r"\b(model|data|train|loss|lora|eval|deepspeed)\.\w+=", line)]
        assert not hits, f"{p}: {hits}"


def read_table(path: Path) -> list[list[str]]:
    """Rows of an ablation table as ablation.sbatch reads them: '#' and blank lines skipped."""
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rows.append(line.split("\t"))
    return rows


def test_shipped_ablation_table_loads_and_checkpoints():
    from rm_ds.config import load_config

    rows = read_table(REPO / "slurm" / "ablation.tsv")
    names = [r[0] for r in rows]
    assert len(set(names)) == len(names) and all(re.fullmatch(r"[\w.-]+", n) for n in names)
    assert any("lora.enabled=true" in r[2] for r in rows) and any("lora" not in r[2] for r in rows)
    for name, config, overrides in rows:
        cfg = load_config(config, overrides.split())
        assert cfg.train.save_every_steps > 0, f"{name}: no checkpoints, so a requeued task would start over"
