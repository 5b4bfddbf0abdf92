"""Best-step selection and early stopping on one eval metric (pure Python, checkpointable).

    >>> es = EarlyStopping(metric="loss", mode="min", patience=2)
    >>> [es.update(step, {"loss": v}) for step, v in [(10, 0.5), (20, 0.4), (30, 0.45), (40, 0.41)]]
    [True, True, False, False]
    >>> es.best_step, es.best_value, es.should_stop
    (20, 0.4, True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class EarlyStopping:
    metric: str
    """Eval metric that ranks steps (e.g. accuracy, auc, loss, ece)."""
    mode: str = "max"
    """max: larger is better; min: smaller is better."""
    patience: int = 0
    """Stop after this many evals without improvement (0: never stop early)."""
    min_delta: float = 0.0
    """Improvement smaller than this does not count."""
    best_step: int | None = None
    best_value: float | None = None
    best_metrics: dict = field(default_factory=dict)
    bad_evals: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"eval.mode: expected 'min' or 'max', got {self.mode!r}")

    def update(self, step: int, metrics: dict[str, float]) -> bool:
        """Record one eval; returns True when this step is the new best."""
        if self.metric not in metrics:
            raise KeyError(f"eval.metric: {self.metric!r} is not an eval metric (have: {', '.join(sorted(metrics))})")
        value = float(metrics[self.metric])
        if math.isnan(value):
            improved = False
        elif self.best_value is None:
            improved = True
        elif self.mode == "max":
            improved = value > self.best_value + self.min_delta
        else:
            improved = value < self.best_value - self.min_delta
        if improved:
            self.best_step, self.best_value, self.best_metrics, self.bad_evals = step, value, dict(metrics), 0
        else:
            self.bad_evals += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
