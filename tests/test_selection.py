"""Best-step selection and early stopping."""

from __future__ import annotations

import doctest

import pytest

import rm_ds.train.selection
from rm_ds.train.selection import EarlyStopping


def test_docstring_example():
    assert doctest.testmod(rm_ds.train.selection, raise_on_error=False).failed == 0


def test_max_mode_min_delta_and_state_round_trip():
    es = EarlyStopping(metric="accuracy", mode="max", patience=3, min_delta=0.01)
    assert es.update(1, {"accuracy": 0.60})
    assert not es.update(2, {"accuracy": 0.605})  # within min_delta: not an improvement
    assert es.update(3, {"accuracy": 0.70})
    again = EarlyStopping(metric="accuracy")
    again.load_state_dict(es.state_dict())
    assert (again.best_step, again.best_value, again.bad_evals, again.patience) == (3, 0.70, 0, 3)
    assert not again.update(4, {"accuracy": float("nan")}) and again.bad_evals == 1
    assert not again.should_stop


def test_unknown_metric_names_the_key():
    with pytest.raises(KeyError, match="eval.metric: 'acc' is not an eval metric"):
        EarlyStopping(metric="acc").update(1, {"accuracy": 0.5})
