"""Fixtures shared by the tests: tiny random Llama reward models, alone or with random pairs.

Markers (registered in pytest.ini, strict): ``slow`` (a test taking more than a few seconds) and
``cluster`` (a test that starts several processes: gloo ranks, the deepspeed launcher, mpirun, Slurm).

    python -m pytest -q tests                 # everything (what launch/test.sh and CI run)
    python -m pytest -q -m "not slow" tests   # the fast half
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import make_tiny_setup


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """``tiny_llama(seed=0)``: the folder of a tiny random Llama reward model (``build_tiny_llama``),
    built once per seed per session; tests only read it."""
    from rm_ds.builtin import build_tiny_llama

    built: dict[int, Path] = {}

    def get(seed: int = 0) -> Path:
        if seed not in built:
            built[seed] = build_tiny_llama(tmp_path_factory.mktemp(f"tiny_llama{seed}") / "model", seed=seed)
        return built[seed]

    return get


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory):
    """``tiny_setup(name, **kw)``: a fresh folder ``make_tiny_setup(**kw)`` fills (``model/``, a tiny random
    Llama, and ``pairs.jsonl``, random pairs); one per call, so a test may rewrite its pairs."""

    def make(name: str, **kw) -> Path:
        return make_tiny_setup(tmp_path_factory.mktemp(name), **kw)

    return make
