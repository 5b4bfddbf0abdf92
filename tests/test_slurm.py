"""A real single-node Slurm runs the ablation array; a requeued task resumes; ``rm-ds compare`` reads them.

munge, slurmctld and slurmd (Debian's ``slurm-wlm``, installed here when missing) start on localhost
from a generated, cgroup-free ``slurm.conf`` in a temporary directory, on free ports, and are
stopped by PID at the end. They run as root, so the module is skipped for other users.

One array of two rows (full fine-tune and LoRA r8 on the tiny model, one rank each, side by side on
the node's two CPUs) is submitted through ``slurm/ablation.sbatch``. Once the LoRA task has written
its first checkpoint it gets USR1, the warning Slurm sends before the time limit (``--signal``); the
sbatch traps it and requeues itself; the task starts again and must resume from that checkpoint.
About 1-2 minutes in all.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import ENV, free_port, run_rm_ds

REPO = Path(__file__).resolve().parent.parent
SBIN = Path("/usr/sbin")
ROWS = {"full": "train.seed=1", "lora_r8": "lora.enabled=true lora.r=8 train.seed=1"}
# applied to every row: long enough that the requeue lands mid-run, short enough for CI
EXTRA = ["train.epochs=4", "train.max_steps=48", "train.save_every_steps=6", "eval.every_steps=12"]
MAX_STEPS = 48
REQUEUED = 1  # the LoRA row's task id

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="the Slurm daemons run as root"),
              pytest.mark.slow, pytest.mark.cluster]  # a Slurm array of 2-task jobs


def _tool(name: str) -> str | None:
    return shutil.which(name) or (str(SBIN / name) if (SBIN / name).exists() else None)


def ensure_slurm_installed() -> None:
    need = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")
    if all(_tool(n) for n in need):
        return
    if not shutil.which("apt-get"):
        pytest.skip("slurm-wlm/munge are not installed and there is no apt-get")
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "slurm-wlm", "munge"], check=True,
                   timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    assert all(_tool(n) for n in need), "slurm-wlm/munge installed but their tools are missing"


class LocalSlurm:
    """munged + slurmctld + slurmd on localhost, node ``localhost`` with 2 CPUs, partition ``debug``."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}

    def start(self) -> None:
        r = self.root
        for d in ("munge", "state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        sock = r / "munge" / "munge.socket"
        self._spawn("munged", [_tool("munged"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                               f"--log-file={r / 'log/munged.log'}", f"--pid-file={r / 'munge/munged.pid'}",
                               f"--seed-file={r / 'munge/munged.seed'}"])
        self._wait(lambda: sock.exists(), "munged socket", 20)
        (r / "slurm.conf").write_text(f"""\
ClusterName=rmdstest
SlurmctldHost=localhost
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log/slurmctld.log'}
SlurmdLogFile={r / 'log/slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        self._spawn("slurmctld", [_tool("slurmctld"), "-D", "-i"])
        self._spawn("slurmd", [_tool("slurmd"), "-D", "-N", "localhost"])
        self._wait(lambda: self.run(["sinfo", "-h", "-n", "localhost", "-o", "%T"], check=False).stdout.strip()
                   == "idle", "node localhost idle", 60)

    def _spawn(self, name: str, cmd: list) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen([str(c) for c in cmd], env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def _wait(self, ok, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = "daemon(s) died: " + ", ".join(dead) if dead else "timed out"
                raise RuntimeError(f"waiting for {what}: {why}\n{self.logs()}")
            time.sleep(0.3)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text()[-2000:] for p in sorted((self.root / "log").glob("*")))

    def run(self, cmd: list[str], *, check: bool = True, **kw) -> subprocess.CompletedProcess:
        p = subprocess.run(cmd, env=kw.pop("env", self.env), capture_output=True, text=True, timeout=60, **kw)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run(["scancel", "--full", "--user=root"], check=False)  # every job of this cluster is ours
            deadline = time.monotonic() + 30
            while self.run(["squeue", "-h"], check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):  # by PID, in reverse start order
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    ensure_slurm_installed()
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def job_states(slurm: LocalSlurm, job: str) -> dict[int, dict]:
    """Array task id -> scontrol's fields (JobState, ExitCode, Restarts, ...)."""
    out = slurm.run(["scontrol", "show", "job", "--oneliner", job], check=False).stdout
    tasks = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "ArrayTaskId" in fields and fields["ArrayTaskId"].isdigit():
            tasks[int(fields["ArrayTaskId"])] = fields
    return tasks


@pytest.fixture(scope="module")
def ablation(slurm, tmp_path_factory):
    """Submit the array, requeue the LoRA task after its first checkpoint, wait for both to finish."""
    work = tmp_path_factory.mktemp("ablation")
    table = work / "table.tsv"
    table.write_text("# name\tconfig\toverrides\n" + "".join(f"{n}\ttiny\t{o}\n" for n, o in ROWS.items()))
    runs = work / "runs"
    env = {**slurm.env, **ENV, "RUNS_DIR": str(runs)}
    job = slurm.run(["sbatch", "--parsable", f"--array=0-{len(ROWS) - 1}", "--cpus-per-task=1",
                     f"--output={work}/slurm-%A_%a.out", "slurm/ablation.sbatch", str(table), *EXTRA],
                    env=env, cwd=REPO).stdout.strip().split(";")[0]
    task = f"{job}_{REQUEUED}"
    t0 = time.monotonic()
    deadline = t0 + 300

    def wait_for(ok, what: str) -> None:
        while not ok():
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-3000:] for p in sorted(work.glob("slurm-*.out")))
                raise AssertionError(f"timed out waiting for {what}\n{logs}\n{slurm.logs()}")
            time.sleep(0.2)

    latest = runs / list(ROWS)[REQUEUED] / "checkpoints" / "latest"
    wait_for(lambda: latest.exists() or job_states(slurm, job).get(REQUEUED, {}).get("JobState") == "COMPLETED",
             f"a checkpoint of task {task}")
    print(f"checkpoint after {time.monotonic() - t0:.0f}s")
    resumable_step = int(latest.read_text().strip().split("_")[-1]) if latest.exists() else None
    # the warning Slurm sends before the time limit (--signal=B:USR1@120), sent now
    slurm.run(["scancel", "--batch", "--signal=USR1", task])

    def restarted() -> bool:
        state = job_states(slurm, job).get(REQUEUED, {})
        if state.get("JobState") == "PENDING" and state.get("Reason") == "BeginTime":
            # Slurm holds a requeued job back about two minutes; release it now
            slurm.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=False)
        return int(state.get("Restarts", 0)) > 0 and state.get("JobState") in ("RUNNING", "COMPLETED")

    wait_for(restarted, f"{task} requeued and started again")
    print(f"requeued after {time.monotonic() - t0:.0f}s")
    wait_for(lambda: not slurm.run(["squeue", "-h", "-j", job], check=False).stdout.strip(), "the array to finish")
    print(f"finished after {time.monotonic() - t0:.0f}s")
    return {"job": job, "runs": runs, "work": work, "states": job_states(slurm, job),
            "resumable_step": resumable_step,
            "logs": {i: (work / f"slurm-{job}_{i}.out").read_text() for i in range(len(ROWS))}}


def test_ablation_array_trains_every_row_into_its_own_run_dir(ablation):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for i, (name, overrides) in enumerate(ROWS.items()):
        state = ablation["states"][i]
        assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0"), (state, ablation["logs"][i][-4000:])
        run = ablation["runs"] / name
        assert f"-> {run}" in ablation["logs"][i]
        config = (run / "config.yaml").read_text()
        assert f"run_dir: {run}" in config
        assert ("enabled: true" in config) == ("lora.enabled=true" in overrides)
        summary = json.loads((run / "summary.json").read_text())
        assert summary["train"]["steps"] == MAX_STEPS
        events = list((run / "tb").glob("events.out.tfevents.*"))
        assert events, f"no TensorBoard events in {run / 'tb'}"
        acc = EventAccumulator(str(run / "tb"))
        acc.Reload()
        assert {"train/loss", "eval/accuracy"} <= set(acc.Tags()["scalars"])
        for which in ("final", "best"):  # HF folders (issue 4's export)
            export = run / "export" / which
            assert (export / "config.json").is_file(), f"no exported model in {export}"
            assert list(export.glob("*.safetensors")), f"no weights in {export}"


def test_requeued_task_resumes_from_its_checkpoint(ablation):
    log = ablation["logs"][REQUEUED]
    assert ablation["resumable_step"] is not None, "the task finished before it could be requeued"
    assert int(ablation["states"][REQUEUED]["Restarts"]) == 1
    assert "requeueing job" in log and "start 2," in log, log[-4000:]
    m = re.search(r"resumed from \S+/checkpoints/step_(\d+) at step (\d+)", log)
    assert m, log[-4000:]
    resumed = int(m.group(2))
    assert resumed >= ablation["resumable_step"] > 0
    rows = [json.loads(line) for line in (ablation["runs"] / list(ROWS)[REQUEUED] / "metrics.jsonl").open()]
    steps = [r["step"] for r in rows if r["split"] == "train"]
    # the first start logged 1..k (k >= resumed; k == resumed when it was stopped right after the
    # checkpoint), the second continues at resumed+1 up to the end
    tail = list(range(resumed + 1, MAX_STEPS + 1))
    head = steps[: len(steps) - len(tail)]
    assert steps[len(head):] == tail and head == list(range(1, len(head) + 1)) and len(head) >= resumed, steps
    others = [s for i, s in ablation["states"].items() if i != REQUEUED]
    assert all(s["Restarts"] == "0" for s in others), "a requeue of one task restarted others"


def test_compare_reads_the_ablation(ablation, tmp_path):
    out = tmp_path / "report"
    proc = run_rm_ds(["compare", str(ablation["runs"]), "--out", str(out)], timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    rows = {r["run"]: r for r in csv.DictReader((out / "compare.csv").open())}
    assert set(rows) == set(ROWS)
    for r in rows.values():
        assert int(r["steps"]) == MAX_STEPS
        assert 0 <= float(r["accuracy_final"]) <= 1 and 0 <= float(r["auc_best"]) <= 1
        assert float(r["pairs_per_s"]) > 0 and float(r["peak_mem_mib"]) > 0
    assert int(rows["lora_r8"]["trainable_params"]) < int(rows["full"]["trainable_params"])
    md = (out / "compare.md").read_text()
    assert md.startswith("| run |") and "| full |" in md and "| lora_r8 |" in md
    for metric in ("accuracy", "auc", "ece"):
        assert (out / f"compare_{metric}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lora_r8" in proc.stdout
