"""What the tests share: N-rank runs in process, the rm_ds command line, one tiny-run override list.

    results = run_distributed(worker, world_size=2, args=(...))   # one result per rank, rank order
    proc = run_rm_ds(["train", *tiny_run(root, run_dir)], ranks=2)  # the real deepspeed launcher

``run_distributed``: like DeepSpeed's ``DistributedTest``.
Each rank is a fresh spawned interpreter with the launcher's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT), one thread, DeepSpeed on its CPU accelerator. It joins the process
group through ``rm_ds.cluster.dist.init`` (the product's own path), runs ``worker(*args)``, sends back its
return value or its traceback, and leaves through ``rm_ds.cluster.dist.shutdown`` (the clean-exit path).
A rank that fails or hangs fails the test with its traceback.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback

from rm_ds.cluster.runtime_env import RUNTIME

ENV = dict(RUNTIME)
"""The CPU run-time environment of launch/env.sh (one list, in cluster/runtime_env.py), set for every test rank."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(worker, args, rank: int, world_size: int, port: int, out_dir: str, init: dict) -> None:
    os.environ.update(ENV)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import torch

    code = 0
    try:
        from rm_ds.cluster import dist

        dist.init(**init)
        result = ("ok", worker(*args))
    except BaseException:
        code = 1
        result = ("error", traceback.format_exc())
    path = os.path.join(out_dir, f"rank{rank}.pt")
    torch.save(result, path + ".tmp")
    os.replace(path + ".tmp", path)
    from rm_ds.cluster import dist

    dist.shutdown(code)


def run_distributed(worker, *, world_size: int, args: tuple = (), timeout: float = 300.0,
                    init: dict | None = None) -> list:
    """Run ``worker(*args)`` on ``world_size`` ranks; return the per-rank results in rank order.

    ``init``: keyword arguments for ``rm_ds.cluster.dist.init`` (e.g. ``{"timeout_s": 2}``)."""
    import torch

    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="rm_ds_dist_") as out_dir:
        procs = [ctx.Process(target=_entry, args=(worker, args, r, world_size, port, out_dir, init or {}))
                 for r in range(world_size)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        errors: list[str] = []
        while any(p.is_alive() for p in procs):
            if time.monotonic() > deadline:
                errors.append(f"timed out after {timeout}s")
                break
            if any(p.exitcode not in (None, 0) for p in procs):  # one failed: give the others a moment
                time.sleep(2)
                break
            time.sleep(0.1)
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        results = {}
        for r in range(world_size):
            path = os.path.join(out_dir, f"rank{r}.pt")
            if not os.path.exists(path):
                errors.append(f"rank {r} left no result (exit code {procs[r].exitcode})")
                continue
            status, value = torch.load(path, weights_only=False)
            if status == "ok":
                results[r] = value
            else:
                errors.append(f"rank {r} failed:\n{value}")
        if errors:
            raise AssertionError("\n".join(errors))
        codes = [p.exitcode for p in procs]
        assert codes == [0] * world_size, f"ranks exited with {codes}"
        return [results[r] for r in range(world_size)]


def rm_ds_command(*args: str, ranks: int = 1) -> list[str]:
    """``python -m rm_ds.cli ARGS``; with ``ranks`` > 1, under the real deepspeed launcher on this host
    (``ranks`` CPU processes, a free port): what a user types as ``deepspeed --num_gpus N --module rm_ds.cli``."""
    if ranks == 1:
        return [sys.executable, "-m", "rm_ds.cli", *args]
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "--module", "rm_ds.cli", *args]


def run_env(extra: dict | None = None) -> dict:
    """This process's environment with the CPU run-time environment (``ENV``) and ``extra`` on top."""
    return {**os.environ, **ENV, **(extra or {})}


def run_rm_ds(args: list[str], *, ranks: int = 1, env: dict | None = None, timeout: float = 300,
              **kw) -> subprocess.CompletedProcess:
    """Run ``rm_ds_command(*args, ranks=ranks)`` to the end (output captured as text, no check); ``env``:
    variables on top of ``run_env()``; ``kw`` goes to ``subprocess.run`` (``cwd`` ...)."""
    return subprocess.run(rm_ds_command(*args, ranks=ranks), env=run_env(env), capture_output=True, text=True,
                          timeout=timeout, check=False, **kw)


def tiny_run(root, run_dir, *extra: str) -> list[str]:
    """The overrides of a tiny run on a ``make_tiny_setup`` folder: its model and pairs (no eval set),
    pairs capped at 64 tokens, no TensorBoard, the run in ``run_dir``; ``extra`` after them."""
    from pathlib import Path

    root = Path(root)
    return [f"model.name_or_path={root / 'model'}", f"data.train_path={root / 'pairs.jsonl'}", "data.eval_path=null",
            "data.max_length=64", f"logging.run_dir={run_dir}", "logging.tensorboard=false", *extra]


WORDS = ("the a dog cat runs quickly under over blue green small large animal plant river stone house "
         "light dark water fire tree bird fish moves sleeps eats grows").split()


def make_tiny_setup(root, *, n_pairs: int = 44, prompt_words: tuple[int, int] = (1, 25),
                    response_words: tuple[int, int] = (1, 30), seed: int = 0):
    """A tiny random Llama in ``root/model`` and ``root/pairs.jsonl`` of random-length pairs."""
    import json
    import random
    from pathlib import Path

    from rm_ds.builtin import build_tiny_llama

    root = Path(root)
    build_tiny_llama(root / "model", seed=seed)
    rng = random.Random(seed)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    with open(root / "pairs.jsonl", "w") as f:
        for i in range(n_pairs):
            f.write(json.dumps({"id": f"p{i}", "prompt": words(*prompt_words), "chosen": words(*response_words),
                                "rejected": words(*response_words)}) + "\n")
    return root


def load_split(cfg, tokenizer, path: str, *, split: str, max_pairs: int | None):
    """``rm_ds.data.dataset.load_split`` with the folders a run of ``cfg`` uses (the same tokenised cache)."""
    from rm_ds.builtin import rm_ds_home
    from rm_ds.data.dataset import cache_dir_for
    from rm_ds.data.dataset import load_split as _load_split

    home = rm_ds_home()
    return _load_split(cfg.data, tokenizer, path, split=split, max_pairs=max_pairs,
                       cache_dir=cache_dir_for(cfg.data, home=home), builtin_dir=home / "data",
                       objectives=cfg.model.objectives)
