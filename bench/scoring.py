"""Scoring throughput: `rm-ds score` and `rm-ds serve` against a naive one-response-per-forward loop.

    PYTHONPATH=. python bench/scoring.py [--model builtin:minilm] [--pairs 384] [--clients 16] [--threads 2] \
        [--rounds 3]

Same model (the backbone with a seeded random 1-output head, saved as a plain HF folder), same
WordNet eval pairs, same thread count, in one run:

- naive: ``model(**tokenizer(prompt + "\\n" + response))`` once per response, as most tutorials do;
- `rm-ds score --dtype fp32|bf16`: ``rm_ds.serve.score_file.run`` on a JSONL file of the pairs (its own timer:
  tokenisation, length-sorted micro-batches under the token budget, forwards; model load and file
  writing excluded);
- server: real `rm-ds serve --dtype fp32` and `--dtype bf16` processes on 127.0.0.1, ``--clients``
  concurrent httpx clients each posting one pair per ``/v1/compare`` request; pairs/s over each
  burst, p50/p99 request latency over all rounds.

Each round runs naive, then score and a server burst per dtype; the table shows medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_folder(name: str, out: Path) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rm_ds.builtin import resolve_model

    path = resolve_model(name)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    return out


def naive(folder: Path, rows: list[dict]) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for r in rows:
            for resp in (r["chosen"], r["rejected"]):
                model(**tok(r["prompt"] + "\n" + resp, return_tensors="pt")).logits[0, 0].item()
    return len(rows) / (time.perf_counter() - t0)


@contextlib.contextmanager
def server(folder: Path, *, dtype: str, threads: int):
    """A real `rm-ds serve --dtype DTYPE` process on 127.0.0.1; yields its URL once /health answers."""
    import httpx

    from tests.harness import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rm_ds.cli", "serve", "--model", str(folder), "--port", str(port),
                             "--dtype", dtype],
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def burst(url: str, rows: list[dict], *, clients: int) -> tuple[float, list[float]]:
    """``clients`` concurrent httpx clients, each posting one pair per /v1/compare; (pairs/s, latencies s)."""
    import httpx

    latencies: list[float] = []

    async def client(share):
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            for r in share:
                t = time.perf_counter()
                res = await c.post("/v1/compare", json={"pairs": [{"prompt": r["prompt"], "a": r["chosen"],
                                                                   "b": r["rejected"]}]})
                res.raise_for_status()
                latencies.append(time.perf_counter() - t)

    async def run_all():
        await asyncio.gather(*(client(rows[i::clients]) for i in range(clients)))

    t0 = time.perf_counter()
    asyncio.run(run_all())
    return len(rows) / max(time.perf_counter() - t0, 1e-9), latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:minilm")
    ap.add_argument("--pairs", type=int, default=384)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every path (medians)")
    args = ap.parse_args()
    from rm_ds.cluster.runtime_env import DEFAULTS  # launch/env.sh's defaults (offline hub), unless set

    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from rm_ds.builtin import rm_ds_home
    from rm_ds.serve.score_file import run
    from rm_ds.data.wordnet import build_wordnet_pairs

    wn = rm_ds_home() / "data" / "wordnet"
    build_wordnet_pairs(wn)
    rows = [json.loads(line) for line in (wn / "eval.jsonl").read_text().splitlines()[: args.pairs]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(args.model, Path(tmp) / "model")
        pairs = Path(tmp) / "pairs.jsonl"
        pairs.write_text("".join(json.dumps({k: r[k] for k in ("id", "prompt", "chosen", "rejected")}) + "\n"
                                 for r in rows))
        dtypes = ("fp32", "bf16")
        for dt in dtypes:  # warm-up: first forwards pay for allocation and kernel selection
            run([str(folder)], str(pairs), str(Path(tmp) / "warm.jsonl"), show_progress=False, dtype=dt)
        figures: dict[str, list[float]] = {k: [] for k in ("naive", *[f"score {d}" for d in dtypes],
                                                           *[f"serve {d}" for d in dtypes])}
        lat: dict[str, list[float]] = {d: [] for d in dtypes}
        batches: dict[str, int] = {}
        with contextlib.ExitStack() as stack:
            urls = {d: stack.enter_context(server(folder, dtype=d, threads=args.threads)) for d in dtypes}
            for d in dtypes:
                burst(urls[d], rows, clients=args.clients)  # warm-up burst
            for _ in range(args.rounds):  # interleaved, medians: the machine may be shared
                figures["naive"].append(naive(folder, rows))
                for d in dtypes:
                    figures[f"score {d}"].append(run([str(folder)], str(pairs), str(Path(tmp) / "scores.jsonl"),
                                                     show_progress=False, dtype=d)["per_s"])
                    per_s, lats = burst(urls[d], rows, clients=args.clients)
                    figures[f"serve {d}"].append(per_s)
                    lat[d].extend(lats)
            import httpx

            batches = {d: httpx.get(urls[d] + "/health").json()["batches"] for d in dtypes}
    med = {k: float(np.median(v)) for k, v in figures.items()}
    base = med["naive"]
    print(f"\n== scoring throughput: {args.model}, {len(rows)} WordNet eval pairs, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds ==")
    print(f"{'path':<48} {'pairs/s':>8} {'vs naive':>9}")
    print(f"{'naive loop (fp32, one response per forward)':<48} {base:>8.1f} {1.0:>8.2f}x")
    for d in dtypes:
        print(f"{f'rm-ds score --dtype {d}':<48} {med[f'score {d}']:>8.1f} {med[f'score {d}'] / base:>8.2f}x")
    for d in dtypes:
        label = f"rm-ds serve --dtype {d}, {args.clients} clients, 1 pair/req"
        print(f"{label:<48} {med[f'serve {d}']:>8.1f} {med[f'serve {d}'] / base:>8.2f}x")
    for d in dtypes:
        ms = np.asarray(lat[d]) * 1000
        print(f"server {d} latency per request: p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms "
              f"({batches[d]} batches for {(args.rounds + 1) * len(rows)} requests incl. warm-up)")

if __name__ == "__main__":
    main()
