# python bench/throughput.py --rounds 5 --out docs/throughput.json
"""Training throughput of rm_ds batch layouts side by side with TRL's RewardTrainer, on CPU.

Variants (one optimizer step = 16 pairs, one micro-batch per step for every variant):

  a  padded, fixed micro-batches: random order, chosen and rejected rows padded to the batch's longest
  b  token budget + length grouping (the sampler's mega-batch sort), padded rows
  c  prefix sharing: one [P|C|R] row per pair (block mask, R's positions continue from P), padded
  d  prefix sharing + packing: pairs packed block-diagonally into rows (each up to twice the step's
     longest pair, filled evenly), rows padded to the longest
  e  TRL RewardTrainer (pip install trl; skipped with a note when trl is missing)

Held equal: model weights (one saved folder, loaded the same way, sdpa, fp32, dropout 0), the token
stream (one tokenisation by rm_ds, pairs over the cap dropped up front so neither side truncates or
drops; TRL gets the same ids as ``chosen_ids = prompt + chosen``), the sequence cap, AdamW with the
same lr, betas, eps, no weight decay, constant schedule, grad-norm clip 1.0, no activation
checkpointing, threads, 16 pairs per step, warm-up steps, and the timed pairs (one epoch over the
same pairs; TRL: the same number of steps in random batches, as it samples). rm_ds variants use the
product's sampler, collate, reward (``rm_ds.model.rewards``) and loss code; the step around them is
``--engine torch`` (default): plain torch AdamW + clip_grad_norm_ in one process (the tests' reference
trainer, tests/reference.py), the machinery TRL's Trainer uses, so the comparison isolates the batch
layout; or ``--engine deepspeed``: the product's ``rm_ds.train.engine.train_step`` on a single-process
DeepSpeed ZeRO-0 engine (about 10% slower per step at world size 1: DeepSpeed still flattens and
"all-reduces" the gradients). Each (variant,
round) is a fresh subprocess (peak RSS is per variant); rounds interleave the variants (a b c d e
a b c d e ...); a run during which other processes took more than ``--quiet`` of the CPU is redone.
The table reports medians over rounds, and ratios as medians of same-round ratios. Timing includes
collation, as a training loop pays it.

Datasets: ``wordnet`` (the bundled WordNet definition pairs, cap 128) and ``long`` (the same pairs with
a multi-definition context prepended to every prompt: prompts of ~50-300 tokens, cap 384).
Models: ``tiny`` (builtin:tiny-llama, 2 layers, hidden 64) and ``llama12m`` (a random 11.8M Llama,
4 layers, hidden 256, MiniLM vocabulary); both tokenise with the MiniLM WordPiece tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

PAIRS_PER_STEP = 16
LR = 5e-5
VARIANTS = {
    "a": "padded, fixed micro-batches",
    "b": "token budget + length grouping",
    "c": "prefix sharing",
    "d": "prefix sharing + packing",
    "e": "TRL RewardTrainer",
}
DATASETS = {"wordnet": 128, "long": 384}  # name -> sequence cap (max_length)
MODELS = {"tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128),
          "llama12m": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=1024)}


# --------------------------------------------------------------------------- preparation (orchestrator)


def long_prompt_pairs(pairs: list[dict], *, seed: int) -> list[dict]:
    """Each WordNet pair with 3-14 other words' definitions prepended as context (a long shared prompt)."""
    rng = random.Random(seed)
    out = []
    for p in pairs:
        others = rng.sample(pairs, rng.randint(3, 14))
        lines = ["- " + o["prompt"].split('"')[1] + ": " + o["chosen"] for o in others]
        prompt = "Some definitions, for reference:\n" + "\n".join(lines) + "\n" + p["prompt"]
        out.append({**p, "prompt": prompt})
    return out


def prepare(work: Path, *, n_pairs: int, models: list[str], datasets: list[str], seed: int) -> dict:
    """Model folders and tokenised pair files (rm_ds tokenisation, over-cap pairs dropped)."""
    from rm_ds.builtin import build_tiny_llama, resolve_model, rm_ds_home
    from rm_ds.data.pairs import load_pairs
    from rm_ds.data.dataset import resolve_data_path
    from rm_ds.model import load_tokenizer
    from rm_ds.data.tokenize import TokenizeOptions, tokenize_pairs

    paths = {}
    for m in models:
        if m == "tiny":
            paths[m] = resolve_model("builtin:tiny-llama")
        else:
            folder = work / m
            if not folder.exists():
                build_tiny_llama(folder, seed=0, **MODELS[m])
            paths[m] = str(folder)
    tokenizer = load_tokenizer(paths[models[0]])  # all models share the MiniLM WordPiece tokenizer
    train_file = resolve_data_path("builtin:wordnet/train", builtin_dir=rm_ds_home() / "data")
    src = [json.loads(line) for line in open(train_file)][: 3 * n_pairs]
    files = {}
    for name in datasets:
        raw = src if name == "wordnet" else long_prompt_pairs(src, seed=seed)
        jsonl = work / f"{name}.jsonl"
        jsonl.write_text("".join(json.dumps(p) + "\n" for p in raw))
        ds, _ = load_pairs(str(jsonl))
        tok, _ = tokenize_pairs(ds, tokenizer, TokenizeOptions(max_length=DATASETS[name], overlong="drop"))
        tok = tok.filter(lambda s: s == "ok", input_columns="status")  # nothing truncated on either side
        rows = [{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in tok.select(range(n_pairs))]
        out = work / f"{name}.tokens.json"
        out.write_text(json.dumps(rows))
        files[name] = str(out)
    return {"models": paths, "data": files}


# --------------------------------------------------------------------------- one measured run (subprocess)


def _cpu_busy_s() -> float:
    """Seconds of CPU time all cores spent busy so far (user..steal in /proc/stat)."""
    vals = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Window:
    """Wall time of the timed part, and the share of the machine's CPU that other processes used
    meanwhile (a run that shared its cores with something else is not a measurement)."""

    def start(self) -> None:
        self.t0, self.busy0, self.self0 = time.perf_counter(), _cpu_busy_s(), _self_cpu_s()

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        foreign = (_cpu_busy_s() - self.busy0) - (_self_cpu_s() - self.self0)
        return {"seconds": wall, "foreign_cpu": max(0.0, foreign) / (wall * (os.cpu_count() or 1))}


def run_rm_ds(spec: dict) -> dict:
    from rm_ds.cluster import dist
    from rm_ds.data.collate import make_collate
    from rm_ds.config import load_config
    from rm_ds.train.ds_config import build_ds_config
    from rm_ds.data.dataset import build_sampler
    from rm_ds.train.engine import build_engine, train_step
    from rm_ds.train.loss import make_loss_fn
    from rm_ds.model import build_reward_model, load_tokenizer, resolve_pad_token
    from rm_ds.data.tokenize import eos_id, token_columns

    v, cap = spec["variant"], spec["max_length"]
    rows = json.loads(Path(spec["data"]).read_text())
    shared, packing = v in "cd", v == "d"
    budget = PAIRS_PER_STEP * cap * (2 if shared else 1)  # a whole step fits one micro-batch in every layout
    cfg = load_config(None, [
        f"model.name_or_path={spec['model']}", "model.dropout=0.0", "model.attn_implementation=sdpa",
        f"data.max_length={cap}", f"data.prefix_sharing={str(shared).lower()}", f"data.packing={str(packing).lower()}",
        f"train.global_batch_pairs={PAIRS_PER_STEP}", f"train.lr={LR}", "train.weight_decay=0.0",
        "train.lr_scheduler=constant", "train.warmup_ratio=0.0", "train.max_grad_norm=1.0",
        f"train.micro_batching={'fixed' if v == 'a' else 'token_budget'}", f"train.token_budget={budget}",
        f"train.pairs_per_micro={PAIRS_PER_STEP}", f"train.length_grouping={str(v != 'a').lower()}",
        "deepspeed.config=zero0", f"train.seed={spec['seed']}"])
    tok = load_tokenizer(cfg.model.name_or_path)
    pad = resolve_pad_token(tok, cfg.model, last_token_pooling=True)
    t = cfg.train
    sampler = build_sampler(token_columns(rows), t, prefix_sharing=shared, packing=packing, world_size=1, rank=0)
    collate = make_collate(prefix_sharing=shared, packing=packing, pad_id=pad, eos_id=eos_id(tok),
                           row_tokens=spec.get("row_tokens") if packing else None)
    timed, warm = sampler.plan_epoch(0), sampler.plan_epoch(1)[: spec["warmup"]]
    steps = len(warm) + len(timed)
    model = build_reward_model(cfg.model, pad_token_id=pad)
    if spec["engine"] == "deepspeed":  # the product's step: pair-count scaling, DeepSpeed clip and step
        info = dist.init()
        ds_config = build_ds_config(cfg, world_size=1, max_micro_steps=max(len(s[0]) for s in timed + warm))
        engine = build_engine(model, ds_config, cfg.train, total_steps=steps)
        loss_fn = make_loss_fn(cfg.loss)

        def step(batches: list[dict]) -> int:
            return train_step(engine, batches, loss_fn=loss_fn, world_size=info.world_size).n_pairs
    else:  # plain torch around the same rewards/loss code: what TRL's Trainer does around its model
        from rm_ds.model import rewards
        from rm_ds.train.loss import bt_loss
        from tests.reference import ReferenceTrainer  # the tests' single-process reference (constant lr here)

        model.train()
        trainer = ReferenceTrainer(model, t, total_steps=steps)

        def share(b: dict, n: int):
            chosen, rejected = rewards(model, b)
            per_pair = bt_loss(chosen, rejected, margin=b["margin"], weight=b["weight"])
            return (per_pair * b["pair_mask"]).sum() / n

        def step(batches: list[dict]) -> int:
            n = sum(b["n_pairs"] for b in batches)
            trainer.step(batches, lambda b: share(b, n))
            return n

    def run(step_plan) -> tuple[int, int, int, int]:
        batches = [collate([rows[i] for i in mb]) for mb in step_plan[0]]
        n = step(batches)
        return (n, sum(b["real_tokens"] for b in batches), sum(b["computed_tokens"] for b in batches),
                sum(b["unshared_tokens"] for b in batches))

    for step_plan in warm:
        run(step_plan)
    totals = [0, 0, 0, 0]
    window = Window()
    window.start()
    for step_plan in timed:
        totals = [a + b for a, b in zip(totals, run(step_plan))]
    return {"pairs": totals[0], "real": totals[1], "computed": totals[2], "unshared": totals[3],
            "steps": len(timed), **window.stop()}


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from rm_ds.config import ModelConfig
    from rm_ds.model import build_reward_model, load_tokenizer, resolve_pad_token

    rows = json.loads(Path(spec["data"]).read_text())
    mcfg = ModelConfig(name_or_path=spec["model"], dropout=0.0, attn_implementation="sdpa")
    tok = load_tokenizer(mcfg.name_or_path)
    pad = resolve_pad_token(tok, mcfg, last_token_pooling=True)
    model = build_reward_model(mcfg, pad_token_id=pad)
    ds = Dataset.from_list([{"chosen_ids": r["prompt_ids"] + r["chosen_ids"],
                             "rejected_ids": r["prompt_ids"] + r["rejected_ids"]} for r in rows])
    n_steps = len(rows) // PAIRS_PER_STEP
    counts = {"real": 0, "computed": 0, "pairs": 0}
    stamps = {"timing": False, "window": Window(), "result": None}

    class CountingRewardTrainer(RewardTrainer):
        """Counts the tokens of the timed steps' batches (accelerate fetches one batch ahead, so the
        collator is the wrong place)."""

        def compute_loss(self, model, inputs, *a, **kw):
            if stamps["timing"]:
                counts["real"] += int(inputs["attention_mask"].sum())
                counts["computed"] += int(inputs["input_ids"].numel())
                counts["pairs"] += inputs["input_ids"].shape[0] // 2
            return super().compute_loss(model, inputs, *a, **kw)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == spec["warmup"]:
                stamps["timing"] = True
                stamps["window"].start()
            elif state.global_step == spec["warmup"] + n_steps:
                stamps["result"], stamps["timing"] = stamps["window"].stop(), False

    args = RewardConfig(
        output_dir=spec["tmp"], per_device_train_batch_size=PAIRS_PER_STEP, max_steps=spec["warmup"] + n_steps,
        learning_rate=LR, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, optim="adamw_torch",
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, max_length=spec["max_length"],
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[], seed=spec["seed"],
        dataloader_num_workers=0, disable_dropout=True, center_rewards_coefficient=None)
    trainer = CountingRewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                                    data_collator=DataCollatorForPreference(pad_token_id=pad), callbacks=[Clock()])
    trainer.train()
    assert torch.get_num_threads() == spec["threads"]
    return {"pairs": counts["pairs"], "real": counts["real"], "computed": counts["computed"],
            "unshared": counts["real"], "steps": n_steps, **stamps["result"]}


def worker(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    result = run_trl(spec) if spec["variant"] == "e" else run_rm_ds(spec)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("RESULT " + json.dumps(result), flush=True)
    if spec["variant"] != "e" and spec["engine"] == "deepspeed":
        from rm_ds.cluster import dist

        dist.shutdown(0)


# --------------------------------------------------------------------------- orchestration and table


def trl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def row_tokens(arg: str) -> int | None:
    return None if arg == "auto" else 10**9 if arg == "one" else int(arg)


def wait_for_quiet(limit: float, *, max_wait_s: float = 600.0) -> float:
    """Wait until other processes use at most ``limit`` of the machine's CPU over 2 s; returns the
    last share seen (the run goes ahead after ``max_wait_s`` anyway, and its share is recorded)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, t0 = _cpu_busy_s(), time.perf_counter()
        time.sleep(2.0)
        share = (_cpu_busy_s() - b0) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))
        if share <= limit or time.monotonic() > deadline:
            return share


def measure(spec: dict, env: dict, *, quiet: float, tries: int) -> dict:
    """One run in a fresh process; repeated (up to ``tries``) while other processes took more than
    ``quiet`` of the CPU during its timed part. Returns the last try, with how many it took."""
    for attempt in range(1, tries + 1):
        wait_for_quiet(quiet)
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, cwd=str(REPO),
                              capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"variant {spec['variant']} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        result = json.loads(lines[-1][len("RESULT "):])
        result["tries"] = attempt
        if result["foreign_cpu"] <= quiet:
            break
    return result


def summarise(runs: list[dict], *, a_runs: list[dict] | None, trl_runs: list[dict] | None) -> dict:
    """Medians over rounds; the ratios are medians of same-round ratios (a round's runs are minutes
    apart, so a slow spell of the machine hits the numerator and denominator alike)."""
    med = lambda key: statistics.median(key(r) for r in runs)  # noqa: E731
    pps = lambda r: r["pairs"] / r["seconds"]  # noqa: E731

    def ratio(base: list[dict] | None) -> float | None:
        return statistics.median(pps(r) / pps(b) for r, b in zip(runs, base)) if base else None

    return {"pairs_per_s": med(pps), "x_a": ratio(a_runs), "x_trl": ratio(trl_runs),
            "tokens_per_s": med(lambda r: r["real"] / r["seconds"]),
            "useful": med(lambda r: r["real"] / r["computed"]),
            "reuse": med(lambda r: 1 - r["real"] / r["unshared"]),
            "peak_rss_mib": med(lambda r: r["peak_rss_mib"]),
            "foreign_cpu_max": max(r["foreign_cpu"] for r in runs),
            "rounds": len(runs), "all_pairs_per_s": [round(r["pairs"] / r["seconds"], 2) for r in runs]}


def table(results: dict, variants: list[str]) -> str:
    lines = []
    for (model, data), per in results.items():
        lines.append(f"\n{model} on {data} (medians of {next(iter(per.values()))['rounds']} rounds)")
        lines.append(f"{'variant':<34} {'pairs/s':>8} {'tok/s':>8} {'useful':>7} {'reuse':>6} {'peak MiB':>9} "
                     f"{'x (a)':>6} {'x TRL':>6}")
        for v in variants:
            if v not in per:
                continue
            s = per[v]
            xa = f"{s['x_a']:.2f}" if s["x_a"] else "-"
            xt = f"{s['x_trl']:.2f}" if s["x_trl"] else "-"
            lines.append(f"({v}) {VARIANTS[v]:<30} {s['pairs_per_s']:8.1f} {s['tokens_per_s']:8.0f} {s['useful']:7.3f} "
                         f"{s['reuse']:6.3f} {s['peak_rss_mib']:9.0f} {xa:>6} {xt:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant (median reported)")
    ap.add_argument("--pairs", type=int, default=320, help="timed pairs per run (one epoch of them)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads of every variant")
    ap.add_argument("--models", default="tiny,llama12m", help=f"comma list of {list(MODELS)}")
    ap.add_argument("--datasets", default="wordnet,long", help=f"comma list of {list(DATASETS)}")
    ap.add_argument("--variants", default="abcde", help="letters of the variants to run")
    ap.add_argument("--row-tokens", default="auto",
                    help="(d) only: packed rows of at most this many tokens; 'auto' (rm_ds's default): twice the "
                         "micro-batch's longest pair; 'one': all pairs of a step in one row")
    ap.add_argument("--quiet", type=float, default=0.05,
                    help="redo a run when other processes used more than this share of the CPU while it was timed")
    ap.add_argument("--tries", type=int, default=4, help="at most this many tries per run")
    ap.add_argument("--engine", choices=("deepspeed", "torch"), default="torch",
                    help="rm_ds variants: the product's DeepSpeed ZeRO-0 step (train_step) or a plain torch "
                         "AdamW step around the same collate/rewards/loss code")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return

    variants = [v for v in args.variants if v in VARIANTS]
    if "e" in variants and not trl_available():
        print("NOTE: trl is not installed (pip install -c <(echo torch==2.13.0) trl): variant (e) skipped, "
              "x TRL columns empty", flush=True)
        variants.remove("e")
    models, datasets = args.models.split(","), args.datasets.split(",")
    from rm_ds.cluster.runtime_env import RUNTIME  # launch/env.sh's CPU environment, then this benchmark's thread count

    env = {**os.environ, **RUNTIME, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TRANSFORMERS_OFFLINE": "1", "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(k, None)
    with tempfile.TemporaryDirectory(prefix="rm_ds_bench_") as tmp:
        work = Path(tmp)
        assets = prepare(work, n_pairs=args.pairs, models=models, datasets=datasets, seed=args.seed)
        print(f"machine: {os.cpu_count()} cores; threads {args.threads}; rm_ds engine {args.engine}; "
              f"{args.pairs} timed pairs per run, "
              f"{args.warmup} warm-up steps, {PAIRS_PER_STEP} pairs per step; variants {''.join(variants)} "
              f"interleaved x {args.rounds} rounds", flush=True)
        results: dict = {}
        for model in models:
            for data in datasets:
                raw: dict[str, list] = {v: [] for v in variants}
                for rnd in range(args.rounds):
                    for v in variants:
                        spec = {"variant": v, "model": assets["models"][model], "data": assets["data"][data],
                                "max_length": DATASETS[data], "warmup": args.warmup, "threads": args.threads,
                                "seed": args.seed, "row_tokens": row_tokens(args.row_tokens),
                                "tmp": str(work / "trl_out"), "engine": args.engine}
                        r = measure(spec, env, quiet=args.quiet, tries=args.tries)
                        raw[v].append(r)
                        print(f"  {model}/{data} round {rnd + 1} ({v}): {r['pairs'] / r['seconds']:.1f} pairs/s, "
                              f"useful {r['real'] / r['computed']:.3f}, peak {r['peak_rss_mib']:.0f} MiB, "
                              f"other processes {100 * r['foreign_cpu']:.0f}% CPU (try {r['tries']})", flush=True)
                results[(model, data)] = {v: summarise(rs, a_runs=raw.get("a"), trl_runs=raw.get("e"))
                                          for v, rs in raw.items()}
    print(table(results, variants), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({f"{m}/{d}": per for (m, d), per in results.items()}, indent=1))


if __name__ == "__main__":
    main()
