"""Run logging on rank 0: TensorBoard events, ``metrics.jsonl`` and ``metrics.csv``.

Other ranks get a logger that does nothing, so callers never branch on rank.
``metrics.jsonl`` has one JSON object a line: ``{"split": "train"|"eval", "step": N, ...scalars}``.
``metrics.csv`` has the eval rows only (one column per metric, the header fixed by the first row).
"""

from __future__ import annotations

import csv
import io
import json
import math
import resource
import time
from pathlib import Path


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RunLogger:
    def __init__(self, run_dir: str | Path, *, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._tb = None
        self._csv_fields: list[str] | None = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def log(self, split: str, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items() if v is not None}
        rec = {"split": split, "step": step, "time": time.time(),
               **{k: (v if math.isfinite(v) else None) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if math.isfinite(v):
                    self._tb.add_scalar(f"{split}/{k}", v, step)
        if split == "eval":
            self._append_csv(step, clean)

    def _append_csv(self, step: int, scalars: dict[str, float]) -> None:
        path = self.run_dir / "metrics.csv"
        if self._csv_fields is None:
            if path.exists():
                with open(path) as f:
                    self._csv_fields = next(csv.reader(f), None)
            if not self._csv_fields:
                self._csv_fields = ["step", *scalars.keys()]
                with open(path, "w", newline="") as f:
                    csv.writer(f).writerow(self._csv_fields)
        with open(path, "a", newline="") as f:
            row = {"step": step, **scalars}
            csv.writer(f).writerow([row.get(k, "") for k in self._csv_fields])

    def image(self, tag: str, png: bytes, step: int, *, filename: str | None = None) -> None:
        """Log a PNG both as a TensorBoard image and (optionally) as a file in the run directory."""
        if not self.enabled:
            return
        if filename:
            (self.run_dir / filename).parent.mkdir(parents=True, exist_ok=True)
            (self.run_dir / filename).write_bytes(png)
        if self._tb is not None:
            import numpy as np
            from PIL import Image

            arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            self._tb.add_image(tag, arr, step, dataformats="HWC")

    def histogram(self, tag: str, values, step: int) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_histogram(tag, values, step)

    def write_json(self, name: str, obj) -> None:
        if self.enabled:
            (self.run_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (self.run_dir / name).write_text(json.dumps(obj, indent=1))

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def throughput(*, pairs: int, real: int, computed: int, unshared: int, seconds: float) -> dict[str, float]:
    """Speed figures of a step or a run: pairs and real (unpadded) tokens per second, the share of the
    computed tokens that are real, and the share of tokens prefix sharing saved."""
    t = max(seconds, 1e-9)
    return {"pairs_per_s": pairs / t, "tokens_per_s": real / t, "useful_token_ratio": real / max(1, computed),
            "prompt_reuse_share": 1.0 - real / max(1, unshared)}
