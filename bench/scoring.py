"""Scoring throughput: `rm-ds score` and `rm-ds serve` against a naive one-response-per-forward loop.

    PYTHONPATH=. python bench/scoring.py [--model builtin:minilm] [--pairs 384] [--clients 16] [--threads 2] [--rounds 3]

Same model (the backbone with a seeded random 1-output head, saved as a plain HF folder), same
WordNet eval pairs, same thread count, in one run:

- naive: ``model(**tokenizer(prompt + "\\n" + response))`` once per response, as most tutorials do;
- `rm-ds score`: ``rm_ds.score_file.run`` on a JSONL file of the pairs (its own timer: tokenisation,
  length-sorted micro-batches under the token budget, forwards; model load and file writing excluded);
- server: a real `rm-ds serve` process on 127.0.0.1, ``--clients`` concurrent httpx clients each
  posting one pair per ``/v1/compare`` request; pairs/s over the whole burst, p50/p99 request latency.
"""

from __future__ import annotations

import argparse
import asyncio
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


def served(folder: Path, rows: list[dict], *, clients: int, threads: int) -> tuple[float, float, float, int]:
    import httpx
    import numpy as np

    from tests.harness import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rm_ds.cli", "serve", "--model", str(folder), "--port", str(port)],
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
        latencies: list[float] = []

        async def client(share):
            async with httpx.AsyncClient(base_url=url, timeout=120) as c:
                for r in share:
                    t = time.perf_counter()
                    res = await c.post("/v1/compare", json={"pairs": [{"prompt": r["prompt"], "a": r["chosen"],
                                                                       "b": r["rejected"]}]})
                    res.raise_for_status()
                    latencies.append(time.perf_counter() - t)

        async def burst():
            await asyncio.gather(*(client(rows[i::clients]) for i in range(clients)))

        asyncio.run(burst())  # warm-up: first requests pay for allocation and caches
        latencies.clear()
        t0 = time.perf_counter()
        asyncio.run(burst())
        dt = time.perf_counter() - t0
        batches = httpx.get(url + "/health").json()["batches"]
        lat = np.asarray(latencies) * 1000
        return len(rows) / dt, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), batches
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:minilm")
    ap.add_argument("--pairs", type=int, default=384)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of naive and rm-ds score (medians)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from rm_ds.builtin import rm_ds_home
    from rm_ds.score_file import run
    from rm_ds.wordnet import build_wordnet_pairs

    wn = rm_ds_home() / "data" / "wordnet"
    build_wordnet_pairs(wn)
    rows = [json.loads(line) for line in (wn / "eval.jsonl").read_text().splitlines()[: args.pairs]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(args.model, Path(tmp) / "model")
        pairs = Path(tmp) / "pairs.jsonl"
        pairs.write_text("".join(json.dumps({k: r[k] for k in ("id", "prompt", "chosen", "rejected")}) + "\n"
                                 for r in rows))
        run([str(folder)], str(pairs), str(Path(tmp) / "warm.jsonl"), show_progress=False)  # warm-up
        bases, scores = [], []
        for _ in range(args.rounds):  # interleaved, medians: the machine is shared
            bases.append(naive(folder, rows))
            scores.append(run([str(folder)], str(pairs), str(Path(tmp) / "scores.jsonl"),
                              show_progress=False)["per_s"])
        base, score = float(np.median(bases)), float(np.median(scores))
        srv, p50, p99, batches = served(folder, rows, clients=args.clients, threads=args.threads)
    print(f"\n== scoring throughput: {args.model}, {len(rows)} WordNet eval pairs, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds (server: one burst after a warm-up) ==")
    print(f"{'path':<44} {'pairs/s':>8} {'vs naive':>9}")
    print(f"{'naive loop (one response per forward)':<44} {base:>8.1f} {1.0:>8.2f}x")
    print(f"{'rm-ds score':<44} {score:>8.1f} {score / base:>8.2f}x")
    print(f"{f'rm-ds serve, {args.clients} clients, 1 pair/request':<44} {srv:>8.1f} {srv / base:>8.2f}x")
    print(f"server latency per request: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({batches} batches for "
          f"{2 * len(rows)} requests incl. warm-up)")


if __name__ == "__main__":
    main()
