# python bench/end_to_end.py --quick                  (a few minutes: MiniLM, WordNet, 1x2 layout, 1 round)
# python bench/end_to_end.py --out docs/end_to_end.json (the full setting: see --help)
"""The product against TRL as users run them: ``rm-ds train`` under the deepspeed launcher vs TRL's
RewardTrainer (plain python for one process, ``accelerate launch`` for two), on CPU, side by side.

Systems, per process layout (``PxT`` = P processes x T threads each):
  rm_ds       deepspeed --num_gpus P --module rm_ds.cli train --config default <overrides>
              (the README's command and default config; prefix sharing and packing on decoders)
  trl_ddp     TRL RewardTrainer; P=1: python, P>1: accelerate launch --multi_gpu (gloo DDP)
  trl_zero2   (P>1 only) TRL RewardTrainer with ``RewardConfig(deepspeed=<ZeRO-2 JSON>)`` under the same
              accelerate launch. Two CPU-host workarounds: ``accelerate launch --use_deepspeed`` silently ran
              plain DDP here, and with a DeepSpeed config the Trainer builds accelerate's state without a
              backend (it drops ``ddp_backend``), a world of one whose metrics gather fails ("ProcessGroupGloo::
              allgather: ... expected length 2, got 1"). So the worker builds that state first (DeepSpeed over
              gloo) and hands it over (``accelerator_config={"use_configured_state": True}``), and lets the
              Trainer's GPU-only bf16 check pass: DeepSpeed's bf16 (bf16 weights, fp32 master copy in its
              optimizer, TRL's precision under DeepSpeed) runs on CPU. The script checks that DeepSpeed really
              ran, and the process and thread counts.

Held equal: the model folder and its initial head (seeded the same way), the pairs and token stream
(rm_ds's tokenisation: ``tokenizer(prompt)`` + ``tokenizer("\\n" + response) + [eos]``; TRL gets the
same ids as ``chosen_ids = prompt_ids + chosen_ids``, since its own text path joins prompt and answer
with no separator and doubles [SEP] on MiniLM), the cap (pairs over it are removed up front, so neither
side truncates or drops), 16 pairs per optimizer step in total, AdamW (lr 5e-5, betas, eps, no weight
decay; torch's fused kernel on both sides, TRL's default ``adamw_torch_fused``), cosine schedule with
ceil(5% of steps) of warm-up, grad-norm clip 1.0, one epoch, the seed, dropout (rm_ds's default
``model.dropout``; TRL's ``disable_dropout`` only when that is 0), no activation checkpointing (TRL's
default is on: turned off, as rm_ds runs), precision (rm_ds's default ``model.dtype=bf16-mixed``, fp32
weights with bf16 autocast, against TRL's default ``bf16=True``, the same autocast; ``--rm-ds-overrides
model.dtype=fp32`` runs both in fp32), processes and threads per process. Evaluation only at the end.
Not held equal, because it is each system's own choice: the attention kernel (rm_ds's default config
picks eager attention, measured faster than SDPA under bf16 autocast on CPU; TRL runs the model's
default, SDPA).

Figures per (model, data, layout, system), medians over rounds (accuracy: mean over seeds):
  pairs/s   training pairs per second over the training steps only.
            rm_ds: ``summary.json`` train.pairs_per_s (per step: reading rows, collate, forward,
            backward, optimizer step, its all-reduces; not the per-step logging, eval or start-up).
            TRL: a callback sums on_step_begin -> on_step_end (forward, backward, clip, optimizer,
            schedule) plus the time its collator spent on training batches; not logging, eval, start-up.
  wall s    the whole command, launcher to exit: start-up (imports, model load, tokenisation,
            engine set-up), training, the final eval and what the system writes at the end
            (rm_ds: checkpoint + HF export; TRL: save_model).
  peak MiB  the largest peak RSS of any process of the command (getrusage of its process tree).
  accuracy  held-out pairwise accuracy (ties count half) on the eval pairs after one epoch.
Ratios are medians of same-round ratios rm_ds / TRL.

Data: ``wordnet`` (the default builtin WordNet pairs) and ``pydoc`` (real English text from the
Python standard library installed with the Debian python3 package, PSF licence: prompt "What does
the Python callable `json.dumps` do?", chosen its docstring's first paragraph, rejected another
callable's, half of them from the same module; split by a hash of the name).
Models: ``minilm`` (builtin:minilm, BERT encoder, [CLS] pooling) and ``llama12m`` (a random 11.8M
Llama with the MiniLM vocabulary, as in bench/throughput.py; rm_ds uses prefix sharing on it).
The machine must be otherwise idle for the figures to mean anything: the script records the share
of CPU other processes used during each run.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PAIRS_PER_STEP = 16
MAX_LENGTH = 128
LLAMA12M = dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=1024)
SYSTEMS = ("rm_ds", "trl_ddp", "trl_zero2")
PYDOC_MODULES = ("os", "os.path", "json", "re", "string", "collections", "itertools", "functools", "math",
                 "statistics", "random", "datetime", "pathlib", "shutil", "subprocess", "textwrap", "difflib",
                 "csv", "argparse", "logging", "urllib.parse", "email.utils", "heapq", "bisect", "inspect",
                 "typing", "decimal", "fractions", "zipfile", "tarfile", "gzip", "base64", "hashlib", "hmac",
                 "secrets", "uuid", "html", "xml.etree.ElementTree", "sqlite3", "socket", "threading", "queue",
                 "asyncio", "contextlib", "copy", "pprint", "operator", "glob", "fnmatch", "tempfile", "io",
                 "struct", "codecs", "unicodedata", "locale", "calendar", "time", "zlib", "pickle", "shelve",
                 "enum", "dataclasses", "abc", "types", "weakref", "traceback", "warnings", "timeit",
                 "unittest", "plistlib", "configparser", "tomllib", "platform", "sysconfig", "ipaddress",
                 "mimetypes", "http.client", "http.cookies", "urllib.request", "ftplib", "smtplib", "imaplib",
                 "mailbox", "binascii", "quopri", "array", "graphlib", "numbers", "cmath", "colorsys",
                 "wave", "filecmp", "linecache", "tokenize", "ast", "dis", "pdb", "cProfile", "pstats",
                 "signal", "selectors", "select", "mmap", "ctypes", "multiprocessing", "concurrent.futures",
                 "sched", "gettext", "shlex", "netrc", "optparse", "getopt", "zipimport", "pkgutil",
                 "importlib", "runpy", "compileall", "py_compile", "site", "code", "codeop", "keyword",
                 "reprlib", "stringprep", "textwrap", "turtle", "webbrowser", "xml.dom.minidom", "json.decoder")


# --------------------------------------------------------------------------- data and models (orchestrator)


def first_paragraph(doc: str) -> str:
    para = re.split(r"\n\s*\n", inspect.cleandoc(doc).strip())[0]
    return " ".join(para.split())


def pydoc_pairs(*, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, eval) pairs from the docstrings of the standard library's public callables."""
    import importlib
    import warnings

    entries: dict[str, tuple[str, str]] = {}  # qualified name -> (module, text)
    seen_text: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod_name in PYDOC_MODULES:
            try:
                mod = importlib.import_module(mod_name)
            except Exception:  # noqa: S112 - a module this Python lacks (e.g. turtle without tkinter)
                continue
            for name, obj in sorted(vars(mod).items()):
                if name.startswith("_") or not callable(obj) or getattr(obj, "__module__", mod_name) != mod_name:
                    continue
                members = [(name, obj)]
                if inspect.isclass(obj):
                    members += [(f"{name}.{m}", f) for m, f in sorted(vars(obj).items())
                                if not m.startswith("_") and callable(f)]
                for qual, o in members:
                    doc = getattr(o, "__doc__", None)
                    if not isinstance(doc, str):
                        continue
                    text = first_paragraph(doc)
                    words = text.split()
                    if len(words) < 4 or text in seen_text or qual.split(".")[-1] in text.split("(")[0]:
                        continue  # too short, a duplicate, or a signature line that names the callable
                    seen_text.add(text)
                    entries[f"{mod_name}.{qual}"] = (mod_name, " ".join(words[:60]))
    rng = random.Random(seed)
    names = sorted(entries)
    by_module: dict[str, list[str]] = {}
    for n in names:
        by_module.setdefault(entries[n][0], []).append(n)
    train, ev = [], []
    for n in names:
        mod, text = entries[n]
        same = [m for m in by_module[mod] if m != n]
        other = rng.choice(same) if same and rng.random() < 0.5 else rng.choice(names)
        while other == n:
            other = rng.choice(names)
        pair = {"id": n, "prompt": f"What does the Python callable `{n}` do?", "chosen": text,
                "rejected": entries[other][1], "source": "same_module" if entries[other][0] == mod else "random"}
        (ev if int(hashlib.sha256(n.encode()).hexdigest(), 16) % 5 == 0 else train).append(pair)
    rng.shuffle(train)
    rng.shuffle(ev)
    return train, ev


def fitting_pairs(pairs: list[dict], tokenizer, n: int) -> list[dict]:
    """The first ``n`` pairs whose both sequences fit MAX_LENGTH with rm_ds's tokenisation."""
    from rm_ds.data.pairs import load_pairs
    from rm_ds.data.tokenize import TokenizeOptions, tokenize_pairs

    head = pairs[: 2 * n + 200]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.jsonl"
        path.write_text("".join(json.dumps(p) + "\n" for p in head))
        ds, report = load_pairs(str(path))
        tok, _ = tokenize_pairs(ds, tokenizer, TokenizeOptions(max_length=MAX_LENGTH, overlong="drop"))
        ok = {row for row, s in zip(ds["row"], tok["status"]) if s == "ok"}  # 1-based file lines
    if report.skipped:  # rows load_pairs refused (e.g. chosen == rejected) are left out, counted here
        print(f"data: {sum(report.skipped.values())} of {len(head)} candidate pairs refused by load_pairs: "
              f"{report.skipped}", flush=True)
    return [p for i, p in enumerate(head, start=1) if i in ok][:n]


def prepare(work: Path, *, models: list[str], datasets: list[str], n_train: int, n_eval: int) -> dict:
    """Model folders and train/eval JSONL files (only pairs that fit the cap untruncated)."""
    from rm_ds.builtin import build_tiny_llama, resolve_model, rm_ds_home
    from rm_ds.data.dataset import resolve_data_path
    from rm_ds.model import load_tokenizer

    paths = {}
    for m in models:
        if m == "minilm":
            paths[m] = resolve_model("builtin:minilm")
        else:
            paths[m] = str(build_tiny_llama(work / m, seed=0, **LLAMA12M))
    tokenizer = load_tokenizer(resolve_model("builtin:minilm"))  # both models use its vocabulary
    files = {}
    for d in datasets:
        if d == "wordnet":
            read = lambda split: [json.loads(x) for x in open(resolve_data_path(  # noqa: E731
                f"builtin:wordnet/{split}", builtin_dir=rm_ds_home() / "data"))]
            train, ev = read("train"), read("eval")
        else:
            train, ev = pydoc_pairs()
        out = {}
        for split, pairs, n in (("train", train, n_train), ("eval", ev, n_eval)):
            kept = fitting_pairs(pairs, tokenizer, n)
            f = work / f"{d}.{split}.jsonl"
            f.write_text("".join(json.dumps(p) + "\n" for p in kept))
            out[split] = (str(f), len(kept))
        files[d] = out
    return {"models": paths, "data": files}


# --------------------------------------------------------------------------- TRL worker (its own process)


def trl_worker(spec: dict) -> None:
    """TRL's RewardTrainer on the spec's pairs; rank 0 writes the result JSON to spec["out"]."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from rm_ds.config import ModelConfig
    from rm_ds.data.pairs import load_pairs
    from rm_ds.model import build_reward_model, load_tokenizer, resolve_pad_token
    from rm_ds.data.tokenize import TokenizeOptions, tokenize_pairs

    mcfg = ModelConfig(name_or_path=spec["model"], dropout=spec["dropout"])
    tok = load_tokenizer(mcfg.name_or_path)
    pad = resolve_pad_token(tok, mcfg, last_token_pooling=spec["model_kind"] == "decoder")

    def ids(path: str) -> list[dict]:
        ds, _ = load_pairs(path)
        t, _ = tokenize_pairs(ds, tok, TokenizeOptions(max_length=MAX_LENGTH))
        return [{"chosen_ids": p + c, "rejected_ids": p + r}
                for p, c, r in zip(t["prompt_ids"], t["chosen_ids"], t["rejected_ids"])]

    train, ev = ids(spec["train"]), ids(spec["eval"])
    torch.manual_seed(spec["seed"])  # the head's initialisation, as rm_ds seeds it
    model = build_reward_model(mcfg, pad_token_id=pad)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if spec.get("deepspeed") and world > 1:
        # the gloo workaround: with a DeepSpeed config the Trainer builds accelerate's state without a backend
        # (it drops ddp_backend), which on a CPU host means a world of one. Build it first, DeepSpeed over gloo,
        # and let the Trainer use it (accelerator_config use_configured_state). Its bf16 check knows GPUs only:
        # DeepSpeed's bf16 runs on CPU (rm_ds's engine tests use it).
        import transformers.training_args
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
        transformers.training_args.is_torch_bf16_gpu_available = lambda: True
    steps = math.ceil(len(train) / PAIRS_PER_STEP)
    timing = {"step": 0.0, "collate": 0.0, "t0": None, "steps": 0}
    collator = DataCollatorForPreference(pad_token_id=pad)

    def timed_collate(examples):
        t0 = time.perf_counter()
        out = collator(examples)
        timing["collate"] += time.perf_counter() - t0
        return out

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            timing["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            timing["step"] += time.perf_counter() - timing["t0"]
            timing["steps"] += 1

    args = RewardConfig(
        output_dir=spec["out_dir"], per_device_train_batch_size=PAIRS_PER_STEP // world, num_train_epochs=1,
        learning_rate=5e-5, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        lr_scheduler_type="cosine", warmup_steps=math.ceil(0.05 * steps), max_grad_norm=1.0, max_length=MAX_LENGTH,
        gradient_checkpointing=False, bf16=spec["bf16"], fp16=False, use_cpu="deepspeed" not in spec,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[], seed=spec["seed"],
        dataloader_num_workers=0, disable_dropout=spec["dropout"] == 0.0, ddp_backend="gloo" if world > 1 else None,
        deepspeed=spec.get("deepspeed"),
        accelerator_config={"use_configured_state": True} if spec.get("deepspeed") and world > 1 else None)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(train), processing_class=tok,
                            data_collator=timed_collate, callbacks=[Clock()])
    trainer.train()
    collate_train = timing["collate"]
    trainer.save_model(spec["out_dir"])
    if trainer.is_world_process_zero():
        m = trainer.model
        m.eval()
        correct = 0.0
        with torch.no_grad():
            for i in range(0, len(ev), 32):
                b = collator(ev[i: i + 32])
                r = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.squeeze(-1)
                n = r.shape[0] // 2
                d = r[:n] - r[n:]
                correct += float((d > 0).sum() + 0.5 * (d == 0).sum())
        secs = timing["step"] + collate_train
        pairs = timing["steps"] * PAIRS_PER_STEP  # every step takes a full global batch but maybe the last
        pairs -= steps * PAIRS_PER_STEP - len(train) if timing["steps"] == steps else 0
        Path(spec["out"]).write_text(json.dumps({
            "pairs_per_s": pairs / secs, "train_s": secs, "steps": timing["steps"], "pairs": pairs,
            "accuracy": correct / len(ev), "threads": torch.get_num_threads(), "world": world,
            "deepspeed": bool(trainer.is_deepspeed_enabled)}))


# --------------------------------------------------------------------------- running one command


def _cpu_busy_s() -> float:
    vals = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def measured(cmd: list[str], env: dict, log: Path) -> dict:
    """Run ``cmd`` in a wrapper process that reports the peak RSS and CPU time of its process tree; wall
    time and the share of the machine's CPU that other processes used meanwhile."""
    wrapper = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "ru = resource.getrusage(resource.RUSAGE_CHILDREN); "
               "print('MAXRSS', ru.ru_maxrss, rc, ru.ru_utime + ru.ru_stime)")
    busy0, t0 = _cpu_busy_s(), time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                              stderr=f, text=True)
    wall = time.perf_counter() - t0
    busy = _cpu_busy_s() - busy0
    line = [x for x in proc.stdout.splitlines() if x.startswith("MAXRSS")][-1].split()
    rc = int(line[2])
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"command failed (exit {rc}): {' '.join(cmd)}\n--- log tail ({log}) ---\n{tail}")
    foreign = max(0.0, busy - float(line[3]))  # CPU time of everything but this command's process tree
    return {"wall_s": wall, "peak_mib": int(line[1]) / 1024.0, "other_cpu": foreign / (wall * (os.cpu_count() or 1))}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(system: str, *, procs: int, threads: int, model: str, model_path: str, data: dict, seed: int,
            work: Path, extra: list[str], dropout: float, bf16: bool) -> dict:
    from rm_ds.cluster.runtime_env import RUNTIME  # launch/env.sh's CPU environment, then this run's thread count

    env = {**os.environ, **RUNTIME, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR"):
        env.pop(k, None)
    tag = f"{system}-{model}-{procs}x{threads}-s{seed}-{time.monotonic_ns()}"
    out_dir = work / "runs" / tag
    log = work / "logs" / f"{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if system == "rm_ds":
        decoder = model != "minilm"
        cmd = ["deepspeed", "--num_gpus", str(procs), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "--module", "rm_ds.cli", "train", "--config", "default", f"model.name_or_path={model_path}",
               f"data.train_path={data['train'][0]}", f"data.eval_path={data['eval'][0]}",
               "data.max_train_pairs=null", "data.max_eval_pairs=null", f"data.max_length={MAX_LENGTH}",
               f"data.prefix_sharing={str(decoder).lower()}", f"data.packing={str(decoder).lower()}",
               f"train.seed={seed}", "eval.every_steps=0",
               f"logging.run_dir={out_dir}", "logging.progress=false", *extra]
        m = measured(cmd, env, log)
        s = json.loads((out_dir / "summary.json").read_text())
        return {**m, "pairs_per_s": s["train"]["pairs_per_s"], "accuracy": s["eval"]["accuracy"],
                "train_s": s["train"]["train_time_s"], "pairs": s["train"]["pairs"]}
    spec = {"model": model_path, "model_kind": "encoder" if model == "minilm" else "decoder", "seed": seed,
            "train": data["train"][0], "eval": data["eval"][0], "out_dir": str(out_dir), "dropout": dropout,
            "out": str(out_dir / "result.json"), "bf16": bf16}
    out_dir.mkdir(parents=True, exist_ok=True)
    if system == "trl_zero2":  # the Trainer's own DeepSpeed path (accelerate's --use_deepspeed on CPU ran plain DDP)
        ds = {"zero_optimization": {"stage": 2, "overlap_comm": False, "contiguous_gradients": True},
              # no train_batch_size: the Trainer would fill it for a world of one on a CPU host; DeepSpeed
              # derives it (micro x accumulation x its real world size)
              "train_micro_batch_size_per_gpu": PAIRS_PER_STEP // procs,
              "gradient_accumulation_steps": 1, "gradient_clipping": 1.0, "bf16": {"enabled": spec["bf16"]},
              "zero_allow_untested_optimizer": True}
        (out_dir / "ds_zero2.json").write_text(json.dumps(ds))
        spec["deepspeed"] = str(out_dir / "ds_zero2.json")
    spec_file = out_dir / "spec.json"
    spec_file.write_text(json.dumps(spec))
    me = [str(Path(__file__).resolve()), "--trl-worker", str(spec_file)]
    if procs == 1 and system == "trl_ddp":
        cmd = [sys.executable, *me]
    else:
        if system == "trl_ddp":
            env["ACCELERATE_USE_CPU"] = "true"
        base = ["accelerate", "launch", "--num_processes", str(procs), "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", str(free_port())]
        cmd = [*base, "--multi_gpu", *me]
    m = measured(cmd, env, log)
    result = {**m, **json.loads(Path(spec["out"]).read_text())}
    if result["world"] != procs or result["threads"] != threads or result["deepspeed"] != (system == "trl_zero2"):
        raise RuntimeError(f"{system}: ran as {result['world']} processes x {result['threads']} threads, deepspeed "
                           f"{result['deepspeed']}; asked for {procs}x{threads} (see {log})")
    return result


# --------------------------------------------------------------------------- orchestration and table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,llama12m", help="comma list of minilm, llama12m")
    ap.add_argument("--datasets", default="wordnet,pydoc", help="comma list of wordnet, pydoc")
    ap.add_argument("--layouts", default="1x2,2x1", help="comma list of PROCESSESxTHREADS")
    ap.add_argument("--systems", default="rm_ds,trl_ddp,trl_zero2",
                    help="comma list of " + ", ".join(SYSTEMS) + " (trl_zero2 at layouts of 2+ processes only)")
    ap.add_argument("--max-pairs", type=int, default=3000, help="training pairs per run (one epoch)")
    ap.add_argument("--eval-pairs", type=int, default=1000, help="held-out pairs scored at the end")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (speed: medians)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1, one per round in turn (accuracy: mean)")
    ap.add_argument("--rm-ds-overrides", default="", help="extra key=value overrides for rm-ds train (space-separated)")
    ap.add_argument("--quick", action="store_true",
                    help="a few minutes: minilm, wordnet, 1x2, 320 train / 200 eval pairs, 1 round, 1 seed")
    ap.add_argument("--out", default=None, help="also write every run and the summary as JSON here")
    ap.add_argument("--trl-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.trl_worker:
        trl_worker(json.loads(Path(args.trl_worker).read_text()))
        return
    if args.quick:
        args.models, args.datasets, args.layouts = "minilm", "wordnet", "1x2"
        args.max_pairs, args.eval_pairs, args.rounds, args.seeds = 320, 200, 1, 1
    models, datasets = args.models.split(","), args.datasets.split(",")
    layouts = [tuple(int(x) for x in lay.split("x")) for lay in args.layouts.split(",")]
    systems = args.systems.split(",")
    extra = args.rm_ds_overrides.split()
    from rm_ds.config import load_config

    rm_cfg = load_config("default", extra)
    dropout = rm_cfg.model.dropout
    bf16 = rm_cfg.model.dtype != "fp32"  # TRL's bf16 (autocast) when rm_ds trains in bf16, fp32 against fp32
    dropout = 0.1 if dropout is None else dropout  # the models' own value (MiniLM's config: 0.1)
    with tempfile.TemporaryDirectory(prefix="rm_ds_e2e_") as tmp:
        work = Path(tmp)
        assets = prepare(work, models=models, datasets=datasets, n_train=args.max_pairs, n_eval=args.eval_pairs)
        print(f"machine: {os.cpu_count()} cores; {PAIRS_PER_STEP} pairs/step, cap {MAX_LENGTH}, dropout {dropout}, "
              f"rm_ds {rm_cfg.model.dtype} / TRL bf16={bf16}; "
              f"rounds {args.rounds}, seeds {args.seeds}", flush=True)
        for d, f in assets["data"].items():
            print(f"data {d}: {f['train'][1]} train / {f['eval'][1]} eval pairs", flush=True)
        results, runs = [], []
        for model in models:
            for data in datasets:
                for procs, threads in layouts:
                    cell = [s for s in systems if not (s == "trl_zero2" and procs == 1)]
                    raw: dict[str, list] = {s: [] for s in cell}
                    for rnd in range(max(args.rounds, args.seeds)):
                        seed = rnd % args.seeds
                        for system in cell:  # interleaved: A B C A B C ...
                            r = run_one(system, procs=procs, threads=threads, model=model,
                                        model_path=assets["models"][model], data=assets["data"][data], seed=seed,
                                        work=work, extra=extra, dropout=dropout, bf16=bf16)
                            r.update(system=system, model=model, data=data, layout=f"{procs}x{threads}", seed=seed,
                                     round=rnd)
                            raw[system].append(r)
                            runs.append(r)
                            print(f"  {model}/{data} {procs}x{threads} round {rnd + 1} seed {seed} {system:<9} "
                                  f"{r['pairs_per_s']:6.1f} pairs/s  wall {r['wall_s']:6.1f}s  peak "
                                  f"{r['peak_mib']:6.0f} MiB  acc {r['accuracy']:.4f}  other processes "
                                  f"{100 * r['other_cpu']:.0f}% CPU", flush=True)
                    results.append(summarise(raw, model=model, data=data, layout=f"{procs}x{threads}"))
    print(table(results), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": results, "runs": runs}, indent=1))


def summarise(raw: dict[str, list], *, model: str, data: str, layout: str) -> dict:
    out = {"model": model, "data": data, "layout": layout, "systems": {}}
    base = raw.get("rm_ds")
    for system, rs in sorted(raw.items(), key=lambda kv: kv[0] != "rm_ds"):  # rm_ds first: the others refer to it
        per_seed: dict[int, list[float]] = {}
        for r in rs:
            per_seed.setdefault(r["seed"], []).append(r["accuracy"])
        s = {k: statistics.median(r[k] for r in rs) for k in ("pairs_per_s", "wall_s", "peak_mib")}
        s["accuracy"] = statistics.mean(statistics.mean(v) for v in per_seed.values())
        s["runs"] = len(rs)
        if base and system != "rm_ds":
            s["rm_ds_x_pairs_per_s"] = statistics.median(b["pairs_per_s"] / r["pairs_per_s"] for b, r in zip(base, rs))
            s["rm_ds_x_wall"] = statistics.median(r["wall_s"] / b["wall_s"] for b, r in zip(base, rs))
            s["rm_ds_minus_accuracy"] = out["systems"]["rm_ds"]["accuracy"] - s["accuracy"]
        out["systems"][system] = s
    return out


def table(results: list[dict]) -> str:
    lines = []
    for res in results:
        lines.append(f"\n{res['model']} on {res['data']}, {res['layout']} (processes x threads)")
        lines.append(f"{'system':<10} {'pairs/s':>8} {'wall s':>7} {'peak MiB':>9} {'accuracy':>9} "
                     f"{'rm_ds x pairs/s':>16} {'TRL wall / rm_ds':>17} {'rm_ds - acc':>12}")
        for system, s in res["systems"].items():
            def x(k: str, f: str, s: dict = s) -> str:
                return format(s[k], f) if k in s else "-"
            lines.append(f"{system:<10} {s['pairs_per_s']:8.1f} {s['wall_s']:7.1f} {s['peak_mib']:9.0f} "
                         f"{s['accuracy']:9.4f} {x('rm_ds_x_pairs_per_s', '.2f'):>16} "
                         f"{x('rm_ds_x_wall', '.2f'):>17} {x('rm_ds_minus_accuracy', '+.4f'):>12}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
