"""``rm-ds compare``: put finished runs side by side (pure: reads run directories, no torch).

    rm-ds compare runs/ablation                      # every run under it (a dir with metrics.jsonl)
    rm-ds compare runs/a runs/b --out reports/ab     # named runs; output elsewhere

For each run it reads ``metrics.jsonl`` (train and eval rows), and ``summary.json`` when the run
finished, and prints one table row: best and final eval accuracy, AUC, ECE and loss, the
train-eval gap, steps, throughput (pairs/s, tokens/s), peak memory and trainable parameters ("-"
when a run does not report them). It writes the table as ``compare.csv`` and ``compare.md`` and
draws eval accuracy, AUC and ECE against step for all runs on shared axes
(``compare_accuracy.png``, ``compare_auc.png``, ``compare_ece.png``), into ``--out`` (default: the
runs' common parent).

A run that was resumed from a checkpoint logs the steps after that checkpoint twice; the later row
of a (split, step) wins, as it is the one the final model descends from.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rm_ds.data.jsonl import BadLine, iter_lines
from rm_ds.errors import ConfigError

TRAIN_WINDOW = 10
"""Final train accuracy/loss: the mean over the last this many logged train steps (one step is noise)."""

# (column, header, kind): kind picks the formatting; best = max for accuracy/auc, min for ece/loss
COLUMNS: list[tuple[str, str, str]] = [
    ("run", "run", "str"),
    ("steps", "steps", "int"),
    ("best_step", "best step", "int"),
    ("accuracy_best", "acc best", "float"),
    ("accuracy_final", "acc final", "float"),
    ("auc_best", "auc best", "float"),
    ("auc_final", "auc final", "float"),
    ("ece_best", "ece best", "float"),
    ("ece_final", "ece final", "float"),
    ("loss_best", "eval loss best", "float"),
    ("loss_final", "eval loss final", "float"),
    ("train_accuracy", "train acc", "float"),
    ("train_loss", "train loss", "float"),
    ("accuracy_gap", "acc gap (train-eval)", "float"),
    ("loss_gap", "loss gap (eval-train)", "float"),
    ("pairs_per_s", "pairs/s", "float"),
    ("tokens_per_s", "tokens/s", "int"),
    ("peak_mem_mib", "peak mem MiB", "int"),
    ("trainable_params", "trainable params", "int"),
]
PLOTS = {"accuracy": "eval accuracy", "auc": "eval ROC-AUC", "ece": "eval ECE"}
_BEST_IS_MAX = {"accuracy": True, "auc": True, "ece": False, "loss": False}


@dataclass
class Run:
    """One run directory as read from disk."""

    name: str
    path: Path
    train: list[dict] = field(default_factory=list)
    """Train rows of metrics.jsonl, one per step, in step order."""
    eval: list[dict] = field(default_factory=list)
    """Eval rows of metrics.jsonl, one per step, in step order."""
    summary: dict = field(default_factory=dict)
    """summary.json ({} while a run is unfinished)."""
    skipped_lines: int = 0
    """Lines of metrics.jsonl that are not JSON objects (cut short by a kill), left out."""

    def curve(self, metric: str) -> list[tuple[int, float]]:
        return [(r["step"], r[metric]) for r in self.eval if _num(r.get(metric)) is not None]


def _num(v) -> float | None:
    """A finite float, or None (missing, null, NaN, not a number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories: the paths themselves, or, for one path that is no run, every run below it."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and not (paths[0] / "metrics.jsonl").is_file():
        found = sorted(p.parent for p in paths[0].rglob("metrics.jsonl"))
        if not found:
            raise ConfigError(f"{paths[0]}: no metrics.jsonl in it or below it")
        return found
    missing = [str(p) for p in paths if not (p / "metrics.jsonl").is_file()]
    if missing:
        raise ConfigError(f"not run directories (no metrics.jsonl): {', '.join(missing)}")
    return paths


def common_parent(dirs: list[Path]) -> Path:
    """The deepest directory holding all runs (a single run's parent)."""
    return Path(os.path.commonpath([str(d.resolve().parent) for d in dirs]))


def load_run(path: Path, *, name: str | None = None) -> Run:
    rows: dict[tuple[str, int], dict] = {}
    skipped = 0
    for _, r in iter_lines(path / "metrics.jsonl"):
        if isinstance(r, BadLine):  # a line cut short by a kill: skipped and counted
            skipped += 1
        elif "split" in r and isinstance(r.get("step"), int):
            rows[(r["split"], r["step"])] = r  # the later row of a step wins (resumed runs)
    summary = {}
    if (path / "summary.json").is_file():
        summary = json.loads((path / "summary.json").read_text())
    by_step = sorted(rows.items(), key=lambda kv: kv[0][1])
    return Run(name=name or path.name, path=path, summary=summary, skipped_lines=skipped,
               train=[r for (s, _), r in by_step if s == "train"], eval=[r for (s, _), r in by_step if s == "eval"])


def summarize(run: Run) -> dict:
    """One table row: numbers (None where the run has no value)."""
    row: dict = {"run": run.name}
    s_train = run.summary.get("train", {}) if isinstance(run.summary.get("train"), dict) else {}
    for m, is_max in _BEST_IS_MAX.items():
        values = [v for _, v in run.curve(m)]
        row[f"{m}_best"] = (max(values) if is_max else min(values)) if values else None
        row[f"{m}_final"] = values[-1] if values else None
    best = run.summary.get("best", {}) if isinstance(run.summary.get("best"), dict) else {}
    if _num(best.get("step")) is not None:
        row["best_step"] = int(best["step"])
    else:  # by eval accuracy, the default selection metric
        curve = run.curve("accuracy")
        row["best_step"] = max(curve, key=lambda p: p[1])[0] if curve else None
    steps = _num(s_train.get("steps"))
    row["steps"] = int(steps) if steps is not None else (run.train[-1]["step"] if run.train else None)

    tail = run.train[-TRAIN_WINDOW:]
    for m in ("accuracy", "loss"):
        vals = [v for v in (_num(r.get(m)) for r in tail) if v is not None]
        row[f"train_{m}"] = sum(vals) / len(vals) if vals else None
    row["accuracy_gap"] = (row["train_accuracy"] - row["accuracy_final"]
                           if None not in (row["train_accuracy"], row["accuracy_final"]) else None)
    row["loss_gap"] = (row["loss_final"] - row["train_loss"]
                       if None not in (row["loss_final"], row["train_loss"]) else None)

    for m in ("pairs_per_s", "tokens_per_s"):  # the run's totals; per-step means while unfinished
        v = _num(s_train.get(m))
        if v is None:
            vals = [x for x in (_num(r.get(m)) for r in run.train) if x is not None]
            v = sum(vals) / len(vals) if vals else None
        row[m] = v
    peak = _num(s_train.get("peak_mem_mib"))
    if peak is None:
        vals = [x for x in (_num(r.get("peak_mem_mib")) for r in run.train) if x is not None]
        peak = max(vals) if vals else None
    row["peak_mem_mib"] = peak
    tp = _num(s_train.get("trainable_params"))
    if tp is None:
        vals = [x for x in (_num(r.get("trainable_params")) for r in run.train) if x is not None]
        tp = vals[-1] if vals else None
    row["trainable_params"] = int(tp) if tp is not None else None
    return row


def _fmt(v, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "str":
        return str(v)
    if kind == "int":
        return f"{int(round(v)):,}"
    return f"{v:.4g}"


def to_markdown(rows: list[dict]) -> str:
    header = [h for _, h, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if kind == "str" else "---:" for _, _, kind in COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c), kind) for c, _, kind in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def to_text(rows: list[dict]) -> str:
    """The same table, aligned for a terminal."""
    cells = [[h for _, h, _ in COLUMNS]] + [[_fmt(r.get(c), k) for c, _, k in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))) for row in cells) + "\n"


def to_csv(rows: list[dict]) -> str:
    """Full-precision numbers; an empty cell where a run has no value."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c for c, _, _ in COLUMNS])
    for r in rows:
        w.writerow(["" if r.get(c) is None else r[c] for c, _, _ in COLUMNS])
    return buf.getvalue()


def compare(paths: list[Path], *, out: Path | None = None) -> tuple[list[dict], dict[str, Path]]:
    """Read the runs, write compare.csv/.md and the PNGs to ``out``; return the rows and the files."""
    from rm_ds.eval.plots import curves_png

    dirs = find_runs(paths)
    parent = common_parent(dirs)
    names = [str(d.resolve().relative_to(parent)) for d in dirs]
    runs = [load_run(d, name=n) for d, n in zip(dirs, names)]
    for r in runs:
        if r.skipped_lines:
            print(f"rm-ds compare: {r.path / 'metrics.jsonl'}: {r.skipped_lines} torn lines left out", file=sys.stderr)
    rows = [summarize(r) for r in runs]
    out = Path(out) if out is not None else parent
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "compare.csv", "md": out / "compare.md"}
    files["csv"].write_text(to_csv(rows))
    files["md"].write_text(to_markdown(rows))
    for metric, label in PLOTS.items():
        files[metric] = out / f"compare_{metric}.png"
        files[metric].write_bytes(curves_png({r.name: r.curve(metric) for r in runs},
                                             title=f"{label} by step", ylabel=label))
    return rows, files


@dataclass(frozen=True)
class CompareOptions:
    """``rm-ds compare``'s command line (``rm_ds.cli``)."""

    runs: list[Path]
    out: Path | None = None


def main(opts: CompareOptions) -> int:
    """The ``rm-ds compare`` entry."""
    rows, files = compare(opts.runs, out=opts.out)
    print(to_text(rows), end="")
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0
