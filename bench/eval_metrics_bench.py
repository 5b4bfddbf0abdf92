# python bench/eval_metrics_bench.py [--n 1000000] [--repeats 5]
"""Time rm_ds.eval.metrics.pairwise_metrics on N synthetic pairs on one core; target: under 2 s for 1M pairs.

Prints the median wall time over a few runs, the number of metric keys, and PASS/FAIL against the
target (the exit status is 0 either way: this is a measurement, not a gate).
"""

import os

# one core: BLAS/OpenMP pools must be pinned before numpy is first imported
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

# run as a plain script from the repo root: make `rm_ds` importable without PYTHONPATH
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rm_ds.eval.metrics import pairwise_metrics  # noqa: E402

TARGET_S = 2.0
SOURCES = np.array(["anthropic_hh", "helpsteer2", "shp", "ultrafeedback", "code_pairs", "math_pairs"])


def synthetic_pairs(n: int, seed: int = 0) -> dict:
    """Rewards with a length bias and per-source skill, rounded to bf16-like precision so ties occur."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, SOURCES.size, n)
    chosen_len = rng.integers(16, 2048, n)
    rejected_len = rng.integers(16, 2048, n)
    skill = np.linspace(0.2, 1.5, SOURCES.size)[src]
    latent = rng.normal(0.0, 1.0, n)
    chosen = latent + skill + 1e-4 * chosen_len + rng.normal(0.0, 1.0, n)
    rejected = latent + 1e-4 * rejected_len + rng.normal(0.0, 1.0, n)
    return {
        "chosen": np.round(chosen, 3),
        "rejected": np.round(rejected, 3),
        "sources": SOURCES[src].tolist(),  # the gather hands back a list of strings
        "chosen_len": chosen_len,
        "rejected_len": rejected_len,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000, help="number of synthetic pairs")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    args = ap.parse_args()

    data = synthetic_pairs(args.n)
    kwargs = dict(beta=1.0, label_smoothing=0.05, reward_l2=1e-3, thresholds=(-1.0, 0.0, 1.0), temperature=1.3)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = pairwise_metrics(data["chosen"], data["rejected"], sources=data["sources"],
                               chosen_len=data["chosen_len"], rejected_len=data["rejected_len"], **kwargs)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)

    print(f"pairs={args.n} metrics={len(out)} median={median:.3f}s "
          f"(runs: {', '.join(f'{t:.3f}' for t in times)}) threads=1")
    for key in ("accuracy", "auc", "ece", "ece_calibrated", "len_corr_margin"):
        print(f"  {key} = {out[key]:.4f}")
    verdict = "PASS" if median < TARGET_S else "FAIL"
    target_note = f"target < {TARGET_S:g} s at 1M pairs" + ("" if args.n == 1_000_000 else f" (ran {args.n})")
    print(f"{verdict}: {median:.3f}s, {target_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
