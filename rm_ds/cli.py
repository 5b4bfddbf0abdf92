"""The ``rm-ds`` console script.

    rm-ds train [--config NAME_OR_YAML] [key.sub=value ...]
    rm-ds eval  [--config NAME_OR_YAML] model.name_or_path=DIR data.eval_path=FILE [key.sub=value ...]
    rm-ds export --run-dir RUN_DIR [--step final|best|step_NNNNNNNN] [--out DIR] [--adapter]
    rm-ds compare RUN_DIR... [--out DIR]      (or one parent directory of runs)
    rm-ds score  --model DIR [--model DIR2 ...] [--step best] --input FILE --out FILE.jsonl|.parquet
    rm-ds serve  --model DIR [--model DIR2 ...] [--host 127.0.0.1] [--port 8000] [--api-key KEY]
    rm-ds select --model DIR [--model DIR2 ...] --pool FILE --k N --by margin|ensemble_std|entropy [--dedupe]
    rm-ds sample --prompts FILE --out FILE [--model builtin:smollm2 --num-responses 2 --temperature 1 --top-p 1 ...]
    rm-ds label --gold MODEL --samples FILE --out-scored FILE [--out-pairs FILE --tie-eps 0 --margin]
    rm-ds match --proxy MODEL --heldout FILE [--train FILE] --out DIR
    rm-ds inspect FILE [--tokenizer builtin:minilm --max-length 256 --skip-invalid]

Under ``mpirun`` add ``--mpi`` (rank, world size and master come from MPI through mpi4py)::

    mpirun -np 2 python -m rm_ds.cli train --mpi --config tiny

Under the ``deepspeed`` launcher, run it as a module (the launcher adds ``--local_rank=N``)::

    deepspeed --num_gpus 2 --master_addr 127.0.0.1 --module rm_ds.cli train --config default

Exit codes: 0 success, 2 a config error (also a bad command line), 3 a data error. Those two print
one line, ``rm-ds: config error: <key>: ...`` or ``rm-ds: data error: <file> line N: field 'f': ...``,
once (on rank 0). 4: a peer rank died or stopped responding (``rm-ds: rank 0: a collective timed out
...: rank 1 (pid N) is stopped``), printed by each surviving rank. 5: a non-finite training step
(``rm-ds: step N: non-finite ...``, naming the rank, the pair ids and the last good checkpoint).
Anything else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rm_ds.config import load_config
from rm_ds.errors import EXIT_NON_FINITE, EXIT_PEER_LOST, UserError

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rm-ds", description="Bradley-Terry reward models on DeepSpeed.")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a reward model")
    t.add_argument("--config", default="default", help="a shipped config name (default, smollm2, tiny) or a YAML path")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.lr=1e-5")
    t.add_argument("--mpi", action="store_true", help="join the job through MPI (under mpirun), via mpi4py")
    e = sub.add_parser("eval", help="evaluate a saved model on a dataset (any number of ranks)")
    e.add_argument("--config", default="default", help="a shipped config name or a YAML path")
    e.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. model.name_or_path=runs/x/export")
    e.add_argument("--mpi", action="store_true", help="join the job through MPI (under mpirun), via mpi4py")
    x = sub.add_parser("export", help="export a run's checkpoint as a Hugging Face folder")
    x.add_argument("--run-dir", required=True, help="the training run directory (holds config.yaml, checkpoints/)")
    x.add_argument("--step", default="final", help="final, best, latest or a checkpoint tag like step_00000040")
    x.add_argument("--out", default=None, help="output folder (default RUN_DIR/export/STEP)")
    x.add_argument("--adapter", action="store_true", help="LoRA runs: write a PEFT adapter instead of merging")
    c = sub.add_parser("compare", help="compare runs: a table (CSV, Markdown) and eval curves (PNG)")
    c.add_argument("runs", nargs="+", type=Path, help="run directories, or one parent of run directories")
    c.add_argument("--out", type=Path, default=None,
                   help="where compare.csv, compare.md and the PNGs go (default: the runs' common parent)")
    s = sub.add_parser("score", help="score a file of responses or pairs (any number of ranks)")
    _model_args(s)
    s.add_argument("--input", required=True, help="responses (prompt+response, messages), scored rows or pairs")
    s.add_argument("--out", required=True, help="output .jsonl or .parquet")
    s.add_argument("--mpi", action="store_true", help="join the job through MPI (under mpirun), via mpi4py")
    _dtype_arg(s)
    v = sub.add_parser("serve", help="serve the model over HTTP (FastAPI + uvicorn) with a web page at /")
    _model_args(v)
    v.add_argument("--host", default="127.0.0.1", help="interface to bind (another than loopback needs --api-key)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--api-key", default=os.environ.get("RM_DS_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $RM_DS_API_KEY)")
    v.add_argument("--max-batch-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    v.add_argument("--max-queue", type=int, default=256, help="requests waiting before new ones get 503")
    v.add_argument("--max-items", type=int, default=256, help="responses or pairs per request (more: 413)")
    v.add_argument("--max-body-bytes", type=int, default=4 << 20, help="request body limit (more: 413)")
    _dtype_arg(v)
    a = sub.add_parser("select", help="pick the most informative unlabeled pairs for labelling")
    _model_args(a)
    a.add_argument("--pool", required=True, help="unlabeled pairs (prompt/chosen/rejected) or scored-responses rows")
    a.add_argument("--k", type=int, required=True, help="how many pairs to write")
    a.add_argument("--by", required=True, choices=["margin", "ensemble_std", "entropy"],
                   help="margin: smallest |r_a - r_b|; ensemble_std: largest std of the models' margins; "
                        "entropy: P(a > b) closest to 1/2")
    a.add_argument("--dedupe", action="store_true", help="skip pairs whose prompt is near-identical to a picked one")
    a.add_argument("--dedupe-threshold", type=float, default=0.8,
                   help="character-trigram Jaccard similarity at or above which prompts count as near-identical")
    a.add_argument("--out", required=True, help="output .jsonl (rm-ds train reads it once labels are checked)")
    _add_proxy_commands(sub)
    return p


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True,
                   help="exported folder, run directory or HF reward model folder; repeat for an ensemble")
    p.add_argument("--step", default=None, help="for run directories: final (default), best or a checkpoint tag")
    p.add_argument("--token-budget", type=int, default=None, help="tokens per forward (rows x padded length)")
    p.add_argument("--allow-pad-eq-eos", action="store_true",
                   help="accept pad == eos on a last-token-pooling model (the pooled token is then ambiguous)")


def _dtype_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="fp32: exact (default); bf16: forwards under bf16 autocast (fp32 weights), faster on "
                        "AMX CPUs and GPUs, rewards within ~1e-3 of fp32 (docs/scoring-and-serving.md)")


def _add_proxy_commands(sub) -> None:
    """Issue 13's sub-commands: sample, label, match, inspect."""
    s = sub.add_parser("sample", help="sample N responses per prompt from a causal LM (scored-responses JSONL)")
    s.add_argument("--prompts", required=True,
                   help="JSONL/JSON/parquet rows with 'prompt' (and 'id'), or builtin:wordnet/train|eval")
    s.add_argument("--out", required=True, help="output JSONL (parts and resume state in OUT.parts/)")
    s.add_argument("--model", default="builtin:smollm2", help="the policy: a causal LM folder or builtin:NAME")
    s.add_argument("--num-responses", dest="n", type=int, default=2, help="responses per prompt")
    s.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    s.add_argument("--max-new-tokens", type=int, default=64, help="cap on generated tokens per response")
    s.add_argument("--seed", type=int, default=0, help="base seed; each prompt's seed is derived from it and its id")
    s.add_argument("--batch-size", type=int, default=32, help="prompts per generation batch (x n rows)")
    s.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                   help="policy weights: bf16 (AMX matmuls, ~2x faster decode here) or fp32")
    s.add_argument("--max-prompts", type=int, default=None, help="use only the first N distinct prompts")
    s.add_argument("--no-chat-template", action="store_true", help="feed the prompt text without the chat template")
    s.add_argument("--mpi", action="store_true", help="join the job through MPI (under mpirun), via mpi4py")
    lb = sub.add_parser("label", help="score sampled responses with a gold RM; write rewards and winner pairs")
    lb.add_argument("--gold", required=True, help="the gold RM: an rm_ds export, a run directory or an HF RM folder")
    lb.add_argument("--step", default=None, help="for a run directory: final, best or a checkpoint tag")
    lb.add_argument("--samples", required=True, help="scored-responses JSONL (rm-ds sample)")
    lb.add_argument("--out-scored", required=True, help="the samples with gold 'rewards' added")
    lb.add_argument("--out-pairs", default=None, help="preference pairs: the higher gold reward is chosen")
    lb.add_argument("--tie-eps", type=float, default=0.0, help="gold differences <= this are ties (skipped, counted)")
    lb.add_argument("--margin", action="store_true", help="write the gold difference as each pair's 'margin'")
    lb.add_argument("--objective", type=int, default=None, help="multi-objective gold RM: the column to use")
    _dtype_arg(lb)
    m = sub.add_parser("match", help="proxy vs gold agreement, correlations, spread, scatter plots, diagnosis")
    m.add_argument("--proxy", required=True, help="the proxy RM: an rm_ds export, a run directory or an HF RM folder")
    m.add_argument("--step", default=None, help="for a run directory: final, best or a checkpoint tag")
    m.add_argument("--heldout", required=True, help="gold-labelled scored-responses JSONL of held-out prompts")
    m.add_argument("--train", default=None, help="gold-labelled scored-responses JSONL of the training prompts")
    m.add_argument("--out", required=True, type=Path, help="folder for match.json, scatter PNGs and tb/")
    m.add_argument("--tie-eps", type=float, default=0.0, help="gold differences <= this are not counted as pairs")
    _dtype_arg(m)
    i = sub.add_parser("inspect", help="the load summary of a dataset (pairs or scored responses), without training")
    i.add_argument("file", help="a pair file (.jsonl/.json/.parquet, builtin:wordnet/train) or scored-responses JSONL")
    i.add_argument("--tokenizer", default="builtin:minilm", help="tokenizer for truncation and lengths ('' skips)")
    i.add_argument("--max-length", type=int, default=256, help="token cap per sequence, as data.max_length")
    i.add_argument("--chat-template", action="store_true", help="render text pairs through the chat template")
    i.add_argument("--skip-invalid", action="store_true", help="exit 0 even when rows are invalid")
    i.add_argument("--prompt-field", default="prompt", help="as data.prompt_field")
    i.add_argument("--chosen-field", default="chosen", help="as data.chosen_field")
    i.add_argument("--rejected-field", default="rejected", help="as data.rejected_field")
    i.add_argument("--margin-field", default=None, help="as data.margin_field")
    i.add_argument("--tie-eps", type=float, default=0.0, help="scored files: gold differences <= this are ties")


def _options(cls: type, args: argparse.Namespace):
    """The typed options object of a sub-command, from the fields its parser defines."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.mpi:
        from rm_ds.cluster import dist

        # train/eval then find the process group already formed
        dist.init(mpi_discovery=True, timeout_s=cfg.dist.timeout_s, wait_timeout_s=cfg.dist.wait_timeout_s)
    from rm_ds.train.recipe import main as train_main

    train_main(cfg, command=args.command)
    return 0


def _export(args: argparse.Namespace) -> int:
    from rm_ds.train import export

    return export.main(_options(export.ExportOptions, args))


def _compare(args: argparse.Namespace) -> int:
    from rm_ds.eval import compare

    return compare.main(_options(compare.CompareOptions, args))


def _score(args: argparse.Namespace) -> int:
    from rm_ds.serve import score_file

    return score_file.main(_options(score_file.ScoreOptions, args))


def _serve(args: argparse.Namespace) -> int:
    from rm_ds.serve import server

    return server.command(args)


def _select(args: argparse.Namespace) -> int:
    from rm_ds.serve import select

    return select.main(_options(select.SelectOptions, args))


def _sample(args: argparse.Namespace) -> int:
    from rm_ds.proxy import sample

    return sample.main(_options(sample.SampleOptions, args))


def _label(args: argparse.Namespace) -> int:
    from rm_ds.proxy import label

    return label.main(_options(label.LabelOptions, args))


def _match(args: argparse.Namespace) -> int:
    from rm_ds.proxy import match

    return match.main(_options(match.MatchOptions, args))


def _inspect(args: argparse.Namespace) -> int:
    from rm_ds.data import inspect
    from rm_ds.model import load_tokenizer

    return inspect.main(_options(inspect.InspectOptions, args), load_tokenizer=load_tokenizer)


@dataclass(frozen=True)
class Command:
    run: Callable[[argparse.Namespace], int]
    """Builds the command's typed options from the parsed arguments and runs it; returns the exit code."""


COMMANDS: dict[str, Command] = {
    "train": Command(_train),
    "eval": Command(_train),
    "export": Command(_export),
    "compare": Command(_compare),
    "score": Command(_score),
    "serve": Command(_serve),
    "select": Command(_select),
    "sample": Command(_sample),
    "label": Command(_label),
    "match": Command(_match),
    "inspect": Command(_inspect),
}
"""Every sub-command; its arguments are defined in ``_parser``."""


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command and return its exit code; a ``UserError`` ends the process with one line and its
    exit code (``rm_ds.errors``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # the deepspeed launcher puts --local_rank=N before the sub-command; accept it anywhere
    argv = [a for a in argv if not a.startswith("--local_rank")]
    args = _parser().parse_args(argv)
    try:
        code = COMMANDS[args.command].run(args)
    except UserError as e:
        _fail(e.line(), e.exit_code)
    except RuntimeError as e:
        from rm_ds.cluster import dist
        from rm_ds.train.faults import NonFiniteStep

        if isinstance(e, NonFiniteStep):
            _fail(f"rm-ds: {e}", EXIT_NON_FINITE)
        diagnosis = dist.peer_failure(e)
        if diagnosis is None:
            raise
        dist.exit_peer_lost(f"rm-ds: {diagnosis}", EXIT_PEER_LOST)
    return code or 0


def _fail(message: str, code: int) -> None:
    from rm_ds.cluster import dist

    dist.exit_with_error(message, code)


if __name__ == "__main__":
    sys.exit(main())
