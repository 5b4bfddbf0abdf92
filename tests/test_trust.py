"""Nothing rm_ds writes needs unpickling to read, and no model code runs unless the config asks.

Run: ``PYTHONPATH=. python -m pytest tests/test_trust.py -q``
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from rm_ds.train.run_state import rng_state, set_rng_state
from rm_ds.config import load_config

PACKAGE = Path(__file__).resolve().parents[1] / "rm_ds"


def test_rng_state_round_trips_through_weights_only_load(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    np.random.randn()  # leaves a cached gaussian in NumPy's state
    torch.manual_seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.randn(), torch.rand(2).tolist())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.randn(), torch.rand(2).tolist()) == expected


def test_trust_remote_code_is_a_config_field_off_by_default(monkeypatch) -> None:
    from rm_ds import model

    seen = []

    def spy(name):
        def f(*args, **kwargs):
            seen.append((name, kwargs.get("trust_remote_code", "absent")))
            raise StopIteration
        return f

    for name in ("AutoTokenizer", "AutoConfig", "AutoModelForSequenceClassification"):
        monkeypatch.setattr(getattr(model, name), "from_pretrained", spy(name))
    for value in (False, True):
        mc = load_config(None, ["model.name_or_path=builtin:tiny-llama", f"model.trust_remote_code={value}"]).model
        for call, args, kwargs in ((model.load_tokenizer, (mc.name_or_path,),
                                    {"trust_remote_code": mc.trust_remote_code}),
                                   (model.load_model_config, (mc,), {"pad_token_id": 0})):
            try:
                call(*args, **kwargs)
            except StopIteration:
                pass
    assert seen == [("AutoTokenizer", False), ("AutoConfig", False), ("AutoTokenizer", True), ("AutoConfig", True)]
    assert load_config(None, []).model.trust_remote_code is False


def test_no_module_hardcodes_trust_remote_code_or_unpickles() -> None:
    for f in PACKAGE.rglob("*.py"):
        text = f.read_text()
        assert not re.search(r"trust_remote_code\s*=\s*True", text), f
        assert "weights_only=False" not in text, f
