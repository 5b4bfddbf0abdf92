"""The ``rm-ds`` console script.

    rm-ds train [--config NAME_OR_YAML] [key.sub=value ...]

Under the ``deepspeed`` launcher, run it as a module (the launcher adds ``--local_rank=N``)::

    deepspeed --num_gpus 2 --master_addr 127.0.0.1 --module rm_ds.cli train --config default
"""

from __future__ import annotations

import argparse
import sys

from rm_ds.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rm-ds", description="Bradley-Terry reward models on DeepSpeed.")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a reward model")
    t.add_argument("--config", default="default", help="a shipped config name (default, smollm2, tiny) or a YAML path")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.lr=1e-5")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the deepspeed launcher puts --local_rank=N before the sub-command; accept it anywhere
    argv = [a for a in argv if not a.startswith("--local_rank")]
    args = _parser().parse_args(argv)
    if args.command == "train":
        try:
            cfg = load_config(args.config, args.overrides)
        except ConfigError as e:
            sys.exit(f"rm-ds: config error: {e}")
        from rm_ds.train import main as train_main

        train_main(cfg)


if __name__ == "__main__":
    main()
