"""`rm-ds serve` as a real process on 127.0.0.1: a bounded load test, 503 on a deliberately overfilled queue,
graceful shutdown, 422/413/401, and the web page in a real headless Chromium.

    PYTHONPATH=. python -m pytest tests/test_serve.py -q
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.harness import WORDS, free_port, rm_ds_command, run_env

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tiny_llama):
    return tiny_llama(seed=3)


def start_server(model: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(rm_ds_command("serve", "--model", str(model), "--port", str(port), *extra),
                            env=run_env({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not come up in 120 s")


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out


@pytest.fixture(scope="module")
def server(model):
    proc, url = start_server(model)
    yield proc, url
    stop(proc)


def texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def test_load_16_clients_2000_requests(server, model):
    """16 concurrent clients, 2,000 requests of 1-3 items: no errors, every answer = offline scores (1e-5)."""
    from rm_ds.serve.scorer import load_scorer

    _, url = server
    prompts, responses = texts(60, 1), texts(120, 2)
    scorer = load_scorer(str(model))
    offline = {(p, r): v for p, r, v in zip(*zip(*[(p, r) for p in prompts[:20] for r in responses]),
                                            scorer.score_responses([p for p in prompts[:20] for _ in responses],
                                                                   [r for _ in prompts[:20] for r in responses]))}
    rng = random.Random(0)
    plan = []
    for _ in range(2000):
        kind = rng.random() < 0.5
        items = [(rng.choice(prompts[:20]), rng.choice(responses), rng.choice(responses))
                 for _ in range(rng.randint(1, 3))]
        plan.append((kind, items))
    statuses, mismatches = [], []

    async def client(share):
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            for kind, items in share:
                if kind:
                    body = {"responses": [{"prompt": p, "response": a} for p, a, _ in items]}
                    res = await c.post("/v1/score", json=body)
                else:
                    body = {"pairs": [{"prompt": p, "a": a, "b": b} for p, a, b in items]}
                    res = await c.post("/v1/compare", json=body)
                statuses.append(res.status_code)
                if res.status_code != 200:
                    continue
                for (p, a, b), got in zip(items, res.json()["results"]):
                    if kind:
                        want = [offline[p, a]]
                        have = [got["reward"]]
                    else:  # pairs are scored prefix-shared, single responses padded: equal to 1e-5
                        want, have = [offline[p, a], offline[p, b]], [got["reward_a"], got["reward_b"]]
                    if not np.allclose(have, want, atol=1e-5):
                        mismatches.append((p, a, b, have, want))

    async def main():
        await asyncio.wait_for(asyncio.gather(*(client(plan[i::16]) for i in range(16))), timeout=300)

    t0 = time.perf_counter()
    asyncio.run(main())
    dt = time.perf_counter() - t0
    assert statuses.count(200) == 2000, {s: statuses.count(s) for s in set(statuses)}
    assert not mismatches, mismatches[:3]
    health = httpx.get(url + "/health").json()
    assert health["batches"] < 2000  # requests were merged into batches
    print(f"2000 requests in {dt:.1f}s ({2000 / dt:.0f}/s) in {health['batches']} batches")


def test_web_page_in_chromium(server, tmp_path):
    """As a person would: load /, type the prompt and three responses, click Score, read the numbers from the
    page and compare them with /v1/score and /v1/compare (Chromium driven over --remote-debugging-pipe)."""
    from tests.cdp import Chromium

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed"
    _, url = server
    prompt, rs = "What does the noun dog mean?", ["a domestic animal", "a large river", "a small green plant"]
    browser = Chromium(chromium, str(tmp_path / "profile"))
    try:
        page = browser.open_page(url + "/")
        page.wait_for("document.readyState === 'complete' && document.querySelectorAll('.response').length === 2")
        page.type("#prompt", prompt)
        page.click("#add")
        page.wait_for("document.querySelectorAll('.response').length === 3")
        for i, r in enumerate(rs):
            page.type(f"#response-{i}", r)
        assert page.eval("document.querySelector('#response-2').value") == rs[2]
        page.click("#submit")
        status = page.wait_for("(() => { const s = document.querySelector('#status');"
                               " return (s.textContent === 'done' || s.className === 'error') && s.textContent; })()",
                               timeout=60)
        assert status == "done", status
        values = dict(page.eval("[...document.querySelectorAll('[data-value]')].map((e) => [e.id, e.dataset.value])"))
        shot = page.screenshot()
    finally:
        browser.close()
    pairs = [(i, j) for i in range(3) for j in range(i + 1, 3)]
    compare = httpx.post(url + "/v1/compare", json={"pairs": [{"prompt": prompt, "a": rs[i], "b": rs[j]}
                                                               for i, j in pairs]}).json()["results"]
    score = httpx.post(url + "/v1/score", json={"responses": [{"prompt": prompt, "response": r}
                                                              for r in rs]}).json()["results"]
    for (i, j), res in zip(pairs, compare):
        assert float(values[f"p-{i}-{j}"]) == pytest.approx(res["p_a"], abs=1e-9)
        assert float(values[f"p-{j}-{i}"]) == pytest.approx(1 - res["p_a"], abs=1e-9)
    for i, res in enumerate(score):
        assert float(values[f"reward-{i}"]) == pytest.approx(res["reward"], abs=1e-9)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    if os.environ.get("RM_DS_KEEP_SCREENSHOT"):
        Path(os.environ["RM_DS_KEEP_SCREENSHOT"]).write_bytes(shot)


def test_overfilled_queue_gets_503_and_shutdown_is_graceful(model):
    """A queue of 1 and 48 simultaneous requests: some 503 with Retry-After, the others right; then SIGTERM
    while requests are in flight: they are all answered and the server exits cleanly."""
    from rm_ds.serve.scorer import load_scorer

    proc, url = start_server(model, "--max-queue", "1", "--max-batch-wait-ms", "0")
    prompts, responses = texts(64, 5), texts(64, 6)
    want = load_scorer(str(model)).score_responses(prompts, responses)
    body = {"responses": [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]}

    async def burst(n):
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/score", json=body) for _ in range(n)))

    try:
        got = asyncio.run(burst(48))
        codes = [r.status_code for r in got]
        assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) > 0, codes
        for r in got:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
            else:
                np.testing.assert_allclose([x["reward"] for x in r.json()["results"]], want, atol=1e-5)

        async def in_flight():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                tasks = [asyncio.create_task(c.post("/v1/score", json=body)) for _ in range(1)]
                await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks)

        last = asyncio.run(in_flight())
        assert [r.status_code for r in last] == [200]
        out = stop(proc)
        assert proc.returncode == 0, out[-2000:]
        assert "rm-ds serve: stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bad_requests_422_413_401(model):
    from fastapi.testclient import TestClient

    from rm_ds.serve.scorer import load_scorer
    from rm_ds.serve.server import ServeOptions, create_app
    from rm_ds.serve.server import main as serve_main

    scorer = load_scorer(str(model))
    opts = ServeOptions(max_items=4, max_body_bytes=2000)
    with TestClient(create_app([scorer], opts)) as c:
        ok = {"prompt": "p", "response": "r"}
        r = c.post("/v1/score", json={"responses": [ok, ok, {"prompt": "p"}]})
        assert r.status_code == 422 and r.json()["error"] == "body.responses[2].response: Field required"
        r = c.post("/v1/score", json={"responses": [ok, {"prompt": "p", "response": 3}]})
        assert r.status_code == 422 and r.json()["error"].startswith("body.responses[1].response: expected a string")
        r = c.post("/v1/compare", json={"pairs": [{"prompt": "p", "a": "x", "b": "x"},
                                                  {"prompt": "p", "a": "x", "b": " "}]})
        assert r.status_code == 422 and r.json()["error"] == "body.pairs[1].b: empty"
        r = c.post("/v1/score", json={"responses": []})
        assert r.status_code == 422 and "body.responses" in r.json()["error"]
        r = c.post("/v1/score", json={"responses": [ok] * 5})
        assert r.status_code == 413 and "limit is 4" in r.json()["error"]
        r = c.post("/v1/score", json={"responses": [{"prompt": "p" * 3000, "response": "r"}]})
        assert r.status_code == 413
        r = c.post("/v1/score", content=iter([b'{"responses": [', b" " * 2500, b"]}"]),
                   headers={"content-type": "application/json"})  # chunked: no Content-Length
        assert r.status_code == 413
        info = c.get("/v1/info").json()
        assert info["limits"]["max_items"] == 4 and info["models"][0]["recipe"]["max_length"] == 1024
    with TestClient(create_app([scorer], ServeOptions(api_key="s3cret"))) as c:
        body = {"responses": [{"prompt": "p", "response": "r"}]}
        assert c.post("/v1/score", json=body).status_code == 401
        assert c.post("/v1/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/info").status_code == 401
        assert c.post("/v1/score", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health").status_code == 200
    with TestClient(create_app([scorer], ServeOptions())) as c:  # truncation is reported
        r = c.post("/v1/score", json={"responses": [{"prompt": "dog " * 1100, "response": "cat"}]}).json()
        assert r["results"][0]["status"] == "prompt_truncated" and r["results"][0]["truncated"] is True
    with pytest.raises(ValueError, match="needs --api-key"):
        serve_main([str(model)], ServeOptions(host="0.0.0.0"))


def test_ensemble_server(model, tmp_path):
    """Two models: per-model rewards, their mean and std, mean probability and the share that disagree."""
    from fastapi.testclient import TestClient

    from rm_ds.builtin import build_tiny_llama
    from rm_ds.serve.scorer import load_scorer
    from rm_ds.serve.server import ServeOptions, create_app

    scorers = [load_scorer(str(model)), load_scorer(str(build_tiny_llama(tmp_path / "other", seed=9)))]
    prompts, a, b = texts(6, 7), texts(6, 8), texts(6, 9)
    with TestClient(create_app(scorers, ServeOptions())) as c:
        res = c.post("/v1/compare", json={"pairs": [{"prompt": p, "a": x, "b": y} for p, x, y in zip(prompts, a, b)]})
        got = res.json()["results"]
        info = c.get("/v1/info").json()
    assert info["ensemble"] is True and len(info["models"]) == 2
    ra = [s.score_pairs(prompts, a, b) for s in scorers]
    for i, g in enumerate(got):
        m = [ra[k][0][i] - ra[k][1][i] for k in range(2)]
        assert g["reward_a@m0"] == pytest.approx(ra[0][0][i], abs=1e-5)
        assert g["reward_b@m1"] == pytest.approx(ra[1][1][i], abs=1e-5)
        assert g["reward_a"] == pytest.approx((ra[0][0][i] + ra[1][0][i]) / 2, abs=1e-5)
        assert g["margin_std"] == pytest.approx(abs(m[0] - m[1]) / 2, abs=1e-5)
        assert g["p_a"] == pytest.approx(np.mean([1 / (1 + np.exp(-x)) for x in m]), abs=1e-5)
        assert g["disagreement"] == (0.5 if np.sign(m[0]) != np.sign(m[1]) else 0.0)
