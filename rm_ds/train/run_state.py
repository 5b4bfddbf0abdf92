"""What a training run carries from step to step and saves with every checkpoint.

    state = RunState(sampler=sampler, stopper=stopper)
    saved = state.state_dict()      # {"step", "sampler", "stopper", "rng"}
    state.load_state_dict(saved)    # the same run, resumed exactly

Step, sampler position (epoch, step in epoch), early stopping (best step, best metric, counter) and
this process's RNG streams (python, numpy, torch: dropout differs per rank). Pure: no engine, no ranks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from rm_ds.data.sampler import PairSampler
from rm_ds.train.selection import EarlyStopping


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as tensors, ints and tuples only, so that the file loads with
    ``torch.load(weights_only=True)`` (no pickled objects: rm_ds's own files never need a trusted source)."""
    version, keys, gauss = random.getstate()
    name, mt, pos, has_gauss, cached = np.random.get_state()
    return {"python": {"version": version, "state": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
            "numpy": {"name": name, "keys": torch.from_numpy(mt.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state()}


def set_rng_state(rng: dict) -> None:
    """Inverse of ``rng_state``."""
    py = rng["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = rng["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(rng["torch"])


@dataclass
class RunState:
    sampler: PairSampler | None
    """The training plan and its position (None when only evaluating)."""
    stopper: EarlyStopping
    """Best step, best metric and the early-stopping counter."""
    step: int = 0
    """Optimizer steps taken."""
    last_eval: tuple[int, dict] | None = None
    """(step, metrics) of the latest evaluation in this process (not saved)."""
    last_save: int = -1
    """Step of the newest checkpoint written by this process (not saved)."""
    stopped_early: bool = False
    """Early stopping ended the run (saved: a relaunch reports it and does not train on)."""

    @property
    def best_step(self) -> int | None:
        return self.stopper.best_step

    def state_dict(self) -> dict:
        """Step, sampler, early stopping (with the best metric) and this process's RNG states."""
        return {"step": self.step, "sampler": self.sampler.state_dict() if self.sampler is not None else None,
                "stopper": self.stopper.state_dict(), "early_stopped": self.stopped_early, "rng": rng_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned; ``rng`` may be absent (a checkpoint without it)."""
        self.step = state["step"]
        if self.sampler is not None and state.get("sampler") is not None:
            self.sampler.load_state_dict(state["sampler"])
        self.stopper.load_state_dict(state["stopper"])
        self.stopped_early = bool(state.get("early_stopped", False))
        if state.get("rng") is not None:
            set_rng_state(state["rng"])
