"""Scoring in bf16 (``--dtype bf16``: fp32 weights, forwards under bf16 autocast) against fp32.

bf16 is not exact: these tests measure how far it lands from fp32 and bound that, on a tiny
decoder (prefix-shared pairs and single responses), on builtin:minilm (the default encoder), and
through a real `rm-ds serve --dtype bf16` where a merged batch must equal the same inputs scored
one by one.

    PYTHONPATH=. python -m pytest tests/test_scoring_bf16.py -q
"""

from __future__ import annotations

import asyncio
import random

import httpx
import numpy as np
import pytest

from tests.harness import WORDS
from tests.test_serve import start_server, stop

TINY_BF16_TOL = 2e-3
"""|bf16 - fp32| on the tiny random decoder (24 pairs + 24 responses): measured max 1.1e-3."""
MINILM_BF16_TOL = 1e-3
"""|bf16 - fp32| on builtin:minilm with a seeded random head: measured max 3.7e-4 over the 8 pairs here,
4.2e-4 over 256 WordNet eval pairs."""
BATCH_BF16_TOL = 2e-3
"""bf16, one merged server batch of 48 requests vs each pair scored alone (other padding and batch shapes
change bf16 rounding; in fp32 the two agree to 1e-5): measured max 6.1e-4."""


def texts(n: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(seed)
    words = list(WORDS)

    def sent(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    return [sent(2, 20) for _ in range(n)], [sent(1, 30) for _ in range(n)], [sent(1, 30) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return tiny_llama(seed=3)


def test_bf16_close_to_fp32_on_a_tiny_decoder(tiny):
    from rm_ds.serve.scorer import load_scorer

    prompts, chosen, rejected = texts(24, seed=0)
    s32, s16 = load_scorer(str(tiny)), load_scorer(str(tiny), dtype="bf16")
    assert s16.info()["dtype"] == "bf16" and s32.info()["dtype"] == "fp32"
    assert s16.prefix_sharing  # the shared [P|C|R] layout runs under autocast too
    c32, r32 = s32.score_pairs(prompts, chosen, rejected)
    c16, r16 = s16.score_pairs(prompts, chosen, rejected)
    one32, one16 = s32.score_responses(prompts, chosen), s16.score_responses(prompts, chosen)
    assert c16.dtype == np.float64 and np.isfinite(c16).all()
    diff = max(np.abs(c16 - c32).max(), np.abs(r16 - r32).max(), np.abs(one16 - one32).max())
    print(f"tiny decoder: max |bf16 - fp32| = {diff:.2e}")
    assert 0 < diff < TINY_BF16_TOL  # > 0: bf16 really ran
    with pytest.raises(ValueError, match="dtype 'fp16'"):
        load_scorer(str(tiny), dtype="fp16")


def test_bf16_close_to_fp32_on_minilm(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rm_ds.builtin import resolve_model
    from rm_ds.serve.scorer import load_scorer

    torch.manual_seed(0)
    path = resolve_model("builtin:minilm")
    AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).save_pretrained(tmp_path / "m")
    AutoTokenizer.from_pretrained(path).save_pretrained(tmp_path / "m")
    prompts, chosen, rejected = texts(8, seed=1)
    s32, s16 = load_scorer(str(tmp_path / "m")), load_scorer(str(tmp_path / "m"), dtype="bf16")
    c32, r32 = s32.score_pairs(prompts, chosen, rejected)
    c16, r16 = s16.score_pairs(prompts, chosen, rejected)
    diff = max(np.abs(c16 - c32).max(), np.abs(r16 - r32).max())
    print(f"minilm: max |bf16 - fp32| = {diff:.2e}")
    assert 0 < diff < MINILM_BF16_TOL


def test_server_bf16_batch_equals_one_by_one(tiny):
    from rm_ds.serve.scorer import load_scorer

    prompts, a, b = texts(48, seed=2)
    one = load_scorer(str(tiny), dtype="bf16")
    want = [one.score_pairs([p], [x], [y]) for p, x, y in zip(prompts, a, b)]  # one pair per forward
    proc, url = start_server(tiny, "--dtype", "bf16", "--max-batch-wait-ms", "20")
    try:
        info = httpx.get(url + "/v1/info").json()
        assert info["dtype"] == "bf16" and info["models"][0]["dtype"] == "bf16"

        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                return await asyncio.gather(*(c.post("/v1/compare", json={"pairs": [
                    {"prompt": p, "a": x, "b": y}]}) for p, x, y in zip(prompts, a, b)))

        answers = asyncio.run(burst())
        batches = httpx.get(url + "/health").json()["batches"]
    finally:
        stop(proc)
    assert all(r.status_code == 200 for r in answers)
    assert batches < len(prompts)  # requests really were merged
    got = np.array([[r.json()["results"][0]["reward_a"], r.json()["results"][0]["reward_b"]] for r in answers])
    ref = np.array([[c[0], r[0]] for c, r in want])
    diff = np.abs(got - ref).max()
    print(f"server bf16: {batches} batches for {len(prompts)} requests, max |batch - one by one| = {diff:.2e}")
    assert diff < BATCH_BF16_TOL
