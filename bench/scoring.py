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

Fairness (``--fairness-rounds``, 0 skips it): on the fp32 server, the same ``--clients`` small clients
(one pair per ``/v1/compare``) alone, then beside one client that keeps posting a near-limit body (one
response of ~``--large-bytes`` of WordNet text to ``/v1/score``); the small clients' p50/p99 latency both
ways, side by side (interleaved rounds).

    PYTHONPATH=. python bench/scoring.py --pairs 256 --rounds 0 --fairness-rounds 2   # fairness only
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


def fairness_round(url: str, rows: list[dict], *, clients: int,
                   large_body: bytes | None) -> tuple[list[float], list[float]]:
    """The small clients' burst, alone (``large_body`` None) or beside one client posting ``large_body`` to
    /v1/score until they are done; (small latencies s, large latencies s)."""
    import httpx

    small: list[float] = []
    large: list[float] = []

    async def small_client(share):
        async with httpx.AsyncClient(base_url=url, timeout=300) as c:
            for r in share:
                t = time.perf_counter()
                res = await c.post("/v1/compare", json={"pairs": [{"prompt": r["prompt"], "a": r["chosen"],
                                                                   "b": r["rejected"]}]})
                res.raise_for_status()
                small.append(time.perf_counter() - t)

    async def large_client(stop: asyncio.Event):
        async with httpx.AsyncClient(base_url=url, timeout=300) as c:
            while not stop.is_set():
                t = time.perf_counter()
                res = await c.post("/v1/score", content=large_body, headers={"content-type": "application/json"})
                res.raise_for_status()
                large.append(time.perf_counter() - t)

    async def run_all():
        stop = asyncio.Event()
        big = asyncio.create_task(large_client(stop)) if large_body is not None else None
        if big is not None:
            await asyncio.sleep(0.5)  # the large client is under way when the small ones start
        await asyncio.gather(*(small_client(rows[i::clients]) for i in range(clients)))
        stop.set()
        if big is not None:
            await big

    asyncio.run(run_all())
    return small, large


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:minilm")
    ap.add_argument("--pairs", type=int, default=384)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every path (medians)")
    ap.add_argument("--fairness-rounds", type=int, default=2,
                    help="rounds of small clients alone / beside one large-body client (0: skip)")
    ap.add_argument("--large-bytes", type=int, default=(4 << 20) - (64 << 10),
                    help="body size of the large client's requests (the server's limit is 4 MiB)")
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
        dtypes = ("fp32", "bf16") if args.rounds else ("fp32",)  # fairness alone needs the fp32 server only
        for dt in dtypes if args.rounds else ():  # warm-up: first forwards pay for allocation and kernel selection
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
            fair: dict[str, list[float]] = {"alone": [], "beside": [], "large": []}
            if args.fairness_rounds:
                words = " ".join(r["chosen"] for r in rows)
                text = (words + " ") * (args.large_bytes // (len(words) + 1) + 1)
                body = json.dumps({"responses": [{"prompt": rows[0]["prompt"], "response": text}]})
                large_body = body[: args.large_bytes - 4].rsplit(" ", 1)[0].encode() + b'"}]}'
                json.loads(large_body)
                for _ in range(args.fairness_rounds):
                    fair["alone"].extend(fairness_round(urls["fp32"], rows, clients=args.clients, large_body=None)[0])
                    small, large = fairness_round(urls["fp32"], rows, clients=args.clients, large_body=large_body)
                    fair["beside"].extend(small)
                    fair["large"].extend(large)
    med = {k: float(np.median(v)) if v else float("nan") for k, v in figures.items()}
    base = med["naive"]
    if args.rounds:  # --rounds 0: the fairness run alone, no throughput table
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
        if len(ms):
            print(f"server {d} latency per request: p50 {np.percentile(ms, 50):.1f} ms, p99 "
                  f"{np.percentile(ms, 99):.1f} ms ({batches[d]} batches for {(args.rounds + 1) * len(rows)} "
                  "requests incl. warm-up)")
    if fair["alone"]:
        a, b = np.asarray(fair["alone"]) * 1000, np.asarray(fair["beside"]) * 1000
        print(f"\n== fairness: fp32 server, {args.clients} small clients (1 pair/request), alone vs beside one client "
              f"posting {args.large_bytes / 2**20:.2f} MiB bodies, {args.fairness_rounds} interleaved rounds ==")
        print(f"{'small clients':<28} {'alone':>10} {'beside large':>13} {'ratio':>7}")
        for q in (50, 99):
            pa, pb = np.percentile(a, q), np.percentile(b, q)
            print(f"{f'p{q} latency (ms)':<28} {pa:>10.1f} {pb:>13.1f} {pb / pa:>6.2f}x")
        if fair["large"]:
            print(f"large client: {len(fair['large'])} requests, median {np.median(fair['large']) * 1000:.0f} ms each")

if __name__ == "__main__":
    main()
