"""`rm-ds serve` as a real process on 127.0.0.1: a bounded load test, 503 on a deliberately overfilled queue,
graceful shutdown, 422/413/401, and the web page in a real headless Chromium.

    PYTHONPATH=. python -m pytest tests/test_serve.py -q
"""

from __future__ import annotations

import asyncio
import json
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


def artifact_dir() -> Path:
    """Where tests keep files for a person to look at: $RM_DS_TEST_ARTIFACTS, else runs/test-artifacts/."""
    out = Path(os.environ.get("RM_DS_TEST_ARTIFACTS") or REPO / "runs" / "test-artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


def wait_status(page, timeout: float = 60) -> str:
    return page.wait_for("(() => { const s = document.querySelector('#status');"
                         " return (s.textContent === 'done' || s.className === 'error') && s.textContent; })()",
                         timeout=timeout)


def test_web_page_in_chromium(server, tmp_path):
    """As a person would: load /, type the prompt and four responses, remove one, press Ctrl+Enter; read the
    bars' widths, the winner and the legend from the page and compare them with /v1/score and /v1/compare;
    an edit clears the results. Chromium is driven over --remote-debugging-pipe; the screenshot is kept."""
    from tests.cdp import Chromium

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed"
    _, url = server
    prompt, rs = "What does the noun dog mean?", ["a domestic animal", "a large river", "a small green plant"]
    browser = Chromium(chromium, str(tmp_path / "profile"))
    try:
        page = browser.open_page(url + "/")
        page.wait_for("document.readyState === 'complete' && document.querySelectorAll('.response').length === 2"
                      " && !document.querySelector('#model').textContent.startsWith('loading')")
        assert page.eval("document.querySelector('#keybox').hidden") is True  # auth is off: no key box
        page.type("#prompt", prompt)
        page.click("#add")
        page.click("#add")
        page.wait_for("document.querySelectorAll('.response').length === 4")
        for i, r in enumerate(rs):
            page.type(f"#response-{i}", r)
        page.type("#response-3", "to be removed")
        page.click("#remove-3")
        page.wait_for("document.querySelectorAll('.response').length === 3")
        assert page.eval("document.querySelector('#response-2').value") == rs[2]
        page.click("#response-2")
        page.press("Enter", code=13, ctrl=True)  # Ctrl+Enter submits
        assert wait_status(page) == "done"
        values = dict(page.eval("[...document.querySelectorAll('[data-value]')].map((e) => [e.id, e.dataset.value])"))
        widths = page.eval("Object.fromEntries([...document.querySelectorAll('.bar')].map((b) => [b.id,"
                           " [Number(b.dataset.width), 100 * b.firstChild.getBoundingClientRect().width"
                           " / b.getBoundingClientRect().width]]))")
        legend = page.eval("document.querySelector('#legend').textContent")
        headers = page.eval("[...document.querySelectorAll('#ranking th')].map((e) => e.textContent)")
        winner = page.eval("document.querySelector('#winner').closest('tr').id")
        shot = page.screenshot()
        page.type("#response-1", " and more")  # an edit: the old numbers go
        page.wait_for("document.querySelector('#results').children.length === 0")
    finally:
        browser.close()
    out = artifact_dir() / "serve_page.png"
    out.write_bytes(shot)
    print(f"screenshot of the scored page: {out}")
    pairs = [(i, j) for i in range(3) for j in range(i + 1, 3)]
    compare = httpx.post(url + "/v1/compare", json={"pairs": [{"prompt": prompt, "a": rs[i], "b": rs[j]}
                                                               for i, j in pairs]}).json()["results"]
    score = httpx.post(url + "/v1/score", json={"responses": [{"prompt": prompt, "response": r}
                                                              for r in rs]}).json()["results"]
    p = {}
    for (i, j), res in zip(pairs, compare):
        assert float(values[f"p-{i}-{j}"]) == pytest.approx(res["p_a"], abs=1e-9)
        assert float(values[f"p-{j}-{i}"]) == pytest.approx(1 - res["p_a"], abs=1e-9)
        p[i, j], p[j, i] = res["p_a"], 1 - res["p_a"]
    rewards = [res["reward"] for res in score]
    for i, r in enumerate(rewards):
        assert float(values[f"reward-{i}"]) == pytest.approx(r, abs=1e-9)
    best = int(np.argmax(rewards))
    runner_up = max((i for i in range(3) if i != best), key=lambda i: rewards[i])
    assert winner == f"row-{best}"
    lo, hi = min(rewards), max(rewards)
    for i, r in enumerate(rewards):
        want_reward = 100 * (0.08 + 0.92 * (r - lo) / (hi - lo))
        want_p = 100 * p[i, runner_up if i == best else best]
        for bar_id, want in ((f"bar-reward-{i}", want_reward), (f"bar-p-{i}", want_p)):
            declared, drawn = widths[bar_id]
            assert declared == pytest.approx(want, abs=0.01), bar_id
            assert drawn == pytest.approx(want, abs=1.0), bar_id  # as laid out on screen
    assert widths[f"bar-reward-{best}"][0] == pytest.approx(100.0)
    assert legend.startswith("Reward: the model's score") and "probability that people prefer" in legend
    assert headers[:4] == ["Response", "Text", "Reward (higher is better)", "Chance it beats the best"]
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000


def test_web_page_with_api_key(model, tmp_path):
    """A server that needs a key: the page shows the key box; scoring without the key shows the server's own
    message; with the key typed in, the results come (the key is never put into the URL)."""
    from tests.cdp import Chromium

    proc, url = start_server(model, "--api-key", "s3cret")
    browser = Chromium(shutil.which("chromium"), str(tmp_path / "profile"))
    try:
        page = browser.open_page(url + "/?prompt=hi&r=one&r=two&key=s3cret")
        page.wait_for("document.readyState === 'complete' && !document.querySelector('#keybox').hidden")
        assert "key=" not in page.eval("location.href")  # an old link's key is dropped from the address bar
        assert page.eval("document.querySelector('#key').value") == ""
        page.click("#submit")
        assert wait_status(page) == "missing or wrong bearer token (Authorization: Bearer KEY)"
        assert page.eval("document.querySelector('#results').children.length") == 0
        page.type("#key", "s3cret")
        page.click("#submit")
        assert wait_status(page) == "done"
        assert "key" not in page.eval("location.href")
    finally:
        browser.close()
        stop(proc)


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
                assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "busy"
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

    from rm_ds.config import ConfigError
    from rm_ds.serve.scorer import load_scorer
    from rm_ds.serve.server import ServeOptions, create_app
    from rm_ds.serve.server import main as serve_main

    scorer = load_scorer(str(model))
    opts = ServeOptions(max_items=4, max_body_bytes=2000)
    with TestClient(create_app([scorer], opts)) as c:
        ok = {"prompt": "p", "response": "r"}
        r = c.post("/v1/score", json={"responses": [ok, ok, {"prompt": "p"}]})
        assert r.status_code == 422 and r.json()["error"] == {
            "code": "invalid", "message": "body.responses[2].response: Field required",
            "field": "body.responses[2].response"}
        r = c.post("/v1/score", json={"responses": [ok, {"prompt": "p", "response": 3}]})
        assert r.status_code == 422 and r.json()["error"]["message"].startswith(
            "body.responses[1].response: expected a string")
        r = c.post("/v1/compare", json={"pairs": [{"prompt": "p", "a": "x", "b": "x"},
                                                  {"prompt": "p", "a": "x", "b": " "}]})
        assert r.status_code == 422 and r.json()["error"]["field"] == "body.pairs[1].b"
        assert r.json()["error"]["message"] == "empty or whitespace-only"
        r = c.post("/v1/score", json={"responses": []})
        assert r.status_code == 422 and r.json()["error"]["field"] == "body.responses"
        r = c.post("/v1/score", json={"responses": [ok] * 5})
        assert r.status_code == 413 and "limit is 4" in r.json()["error"]["message"]
        r = c.post("/v1/score", json={"responses": [{"prompt": "p" * 3000, "response": "r"}]})
        assert r.status_code == 413
        r = c.post("/v1/score", content=iter([b'{"responses": [', b" " * 2500, b"]}"]),
                   headers={"content-type": "application/json"})  # chunked: no Content-Length
        assert r.status_code == 413
        info = c.get("/v1/info").json()
        assert info["limits"]["max_items"] == 4 and info["models"][0]["recipe"]["max_length"] == 1024
        r = c.post("/v1/score", content=b'{"responses": [,]}', headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == {
            "code": "bad_json", "message": "the body is not valid JSON at line 1, column 16: Expecting value",
            "field": None}
        for r, status, code in ((c.get("/nope"), 404, "not_found"), (c.get("/v1/score"), 405, "method_not_allowed"),
                                (c.get("/docs"), 404, "not_found")):  # FastAPI's own errors, one shape
            assert r.status_code == status and r.json()["error"]["code"] == code, r.text
            assert set(r.json()["error"]) == {"code", "message", "field"}
    with TestClient(create_app([scorer], ServeOptions(api_key="s3cret", max_body_bytes=2000))) as c:
        body = {"responses": [{"prompt": "p", "response": "r"}]}
        for bad in (b"{not json", b"[]", b"x" * 5000):  # the key is checked before the body
            r = c.post("/v1/score", content=bad, headers={"content-type": "application/json"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
        assert c.post("/v1/score", json=body).status_code == 401
        assert c.post("/v1/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/info").status_code == 401
        assert c.post("/v1/score", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health").status_code == 200
    with TestClient(create_app([scorer], ServeOptions())) as c:  # truncation is reported
        r = c.post("/v1/score", json={"responses": [{"prompt": "dog " * 1100, "response": "cat"}]}).json()
        assert r["results"][0]["status"] == "prompt_truncated" and r["results"][0]["truncated"] is True
    with pytest.raises(ConfigError, match="needs --api-key"):
        serve_main([str(model)], ServeOptions(host="0.0.0.0"))


def test_ensemble_server(model, tmp_path):
    """Two models: per-model rewards, their mean and std, mean probability and the share that disagree."""
    from fastapi.testclient import TestClient

    from rm_ds.builtin import build_tiny_llama
    from rm_ds.serve.scorer import load_scorer
    from rm_ds.serve.server import ServeOptions, create_app

    scorers = [load_scorer(str(model)), load_scorer(str(build_tiny_llama(tmp_path / "other", seed=9)))]
    for s, (mean, std) in zip(scorers, ((0.1, 2.0), (-0.3, 0.5))):  # as an export's calibration record
        s.calibration = {"reward_mean": mean, "reward_std": std, "temperature": 1.0}
    prompts, a, b = texts(6, 7), texts(6, 8), texts(6, 9)
    pairs = {"pairs": [{"prompt": p, "a": x, "b": y} for p, x, y in zip(prompts, a, b)]}
    responses = {"responses": [{"prompt": p, "response": x} for p, x in zip(prompts, a)]}
    with TestClient(create_app(scorers, ServeOptions())) as c:
        got = c.post("/v1/compare", json=pairs).json()["results"]
        scored = c.post("/v1/score", json=responses).json()["results"]
        info = c.get("/v1/info").json()
    with TestClient(create_app(scorers[:1], ServeOptions())) as c:
        single = c.post("/v1/compare", json=pairs).json()["results"]
        single_scored = c.post("/v1/score", json=responses).json()["results"]
    assert info["ensemble"] is True and len(info["models"]) == 2
    # an ensemble answers every field one model does, plus the members' spread
    assert set(single[0]) <= set(got[0]) and set(single_scored[0]) <= set(scored[0])
    assert {"reward_norm", "reward_std", "reward_norm_std"} <= set(scored[0]) and "margin_std" in got[0]
    r = [s.score_responses(prompts, a) for s in scorers]
    for i, g in enumerate(scored):
        z = [(r[0][i] - 0.1) / 2.0, (r[1][i] + 0.3) / 0.5]
        assert g["reward_norm"] == pytest.approx(np.mean(z), abs=1e-5)
        assert g["reward_norm_std"] == pytest.approx(abs(z[0] - z[1]) / 2, abs=1e-5)
        assert g["reward_std"] == pytest.approx(abs(r[0][i] - r[1][i]) / 2, abs=1e-5)
    ra = [s.score_pairs(prompts, a, b) for s in scorers]
    for i, g in enumerate(got):
        m = [ra[k][0][i] - ra[k][1][i] for k in range(2)]
        assert g["reward_a@m0"] == pytest.approx(ra[0][0][i], abs=1e-5)
        assert g["reward_b@m1"] == pytest.approx(ra[1][1][i], abs=1e-5)
        assert g["reward_a"] == pytest.approx((ra[0][0][i] + ra[1][0][i]) / 2, abs=1e-5)
        assert g["margin_std"] == pytest.approx(abs(m[0] - m[1]) / 2, abs=1e-5)
        assert g["p_a"] == pytest.approx(np.mean([1 / (1 + np.exp(-x)) for x in m]), abs=1e-5)
        assert g["disagreement"] == (0.5 if np.sign(m[0]) != np.sign(m[1]) else 0.0)
        assert g["reward_a_norm"] == pytest.approx(((ra[0][0][i] - 0.1) / 2.0 + (ra[1][0][i] + 0.3) / 0.5) / 2,
                                                   abs=1e-5)


def post_raw(c, path: str, body) -> object:
    """POST ``body`` as JSON with non-ASCII escaped (so lone surrogates travel as "\\ud800"), or raw bytes."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return c.post(path, content=content, headers={"content-type": "application/json"})


BAD_ITEMS = [  # (endpoint, body, field named in the 422)
    ("/v1/score", {"responses": [{"prompt": "p", "response": "\ud800"}]}, "body.responses[0].response"),
    ("/v1/compare", {"pairs": [{"prompt": "a\udfffb", "a": "x", "b": "y"}]}, "body.pairs[0].prompt"),
    ("/v1/score", {"responses": [{"prompt": "p", "response": [{"role": "assistant", "content": 3}]}]},
     "body.responses[0].response"),  # (messages on a model without a chat template are scored: HH's text rule)
    ("/v1/score", {"responses": [{"prompt": "p", "response": [{"role": "assistant", "content": ""}]}]},
     "body.responses[0].response[0].content"),
    ("/v1/score", {"responses": [{"prompt": "p", "response": [{"role": "user", "content": "hi"}]}]},
     "body.responses[0].response[0].role"),
    ("/v1/compare", {"pairs": [{"prompt": "p", "a": "x", "b": "   "}]}, "body.pairs[0].b"),
]


def test_one_bad_request_fails_only_itself(server, model):
    """16 good requests and the bad ones of the issue sent at once (merged into the same batches): every good
    one gets its exact score, every bad one its own 422 naming the field, and the kept-alive connection is
    not closed by any answer."""
    from rm_ds.serve.scorer import load_scorer

    _, url = server
    prompts, responses = texts(16, 21), texts(16, 22)
    want = load_scorer(str(model)).score_responses(prompts, responses)

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            good = [c.post("/v1/score", json={"responses": [{"prompt": p, "response": r}]})
                    for p, r in zip(prompts, responses)]
            bad = [post_raw(c, path, body) for path, body, _ in BAD_ITEMS]
            got = await asyncio.gather(*good, *bad)
            after = await c.post("/v1/score", json={"responses": [{"prompt": prompts[0], "response": responses[0]}]})
            return got[:16], got[16:], after

    good, bad, after = asyncio.run(main())
    for r, w in zip(good, want):
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["reward"] == pytest.approx(w, abs=1e-5)
    for r, (_, _, where) in zip(bad, BAD_ITEMS):
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == where, r.text
        assert r.headers.get("connection", "").lower() != "close"
    assert after.status_code == 200 and after.json()["results"][0]["reward"] == pytest.approx(want[0], abs=1e-5)


def fuzz_bodies():
    from hypothesis import strategies as st

    text = st.one_of(st.text(max_size=40), st.sampled_from(["\ud800", "a\udfffb", "", "   ", "\x00", "\u202e"]))
    message = st.dictionaries(st.sampled_from(["role", "content", "name"]),
                              st.one_of(text, st.sampled_from(["user", "assistant", "system"]), st.integers(),
                                        st.none(), st.lists(st.integers(), max_size=2)), max_size=3)
    content = st.one_of(text, st.lists(message, max_size=3), st.integers(), st.floats(), st.none(), st.booleans(),
                        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
    item = st.one_of(st.dictionaries(st.sampled_from(["prompt", "response", "a", "b", "extra"]), content, max_size=4),
                     content)
    body = st.one_of(st.fixed_dictionaries({"responses": st.one_of(st.lists(item, max_size=4), content)}),
                     st.fixed_dictionaries({"pairs": st.one_of(st.lists(item, max_size=4), content)}),
                     st.dictionaries(st.text(max_size=8), content, max_size=3), content, st.binary(max_size=60))
    return st.tuples(st.sampled_from(["/v1/score", "/v1/compare", "/v1/info", "/health", "/v1/nope"]), body)


def test_fuzzed_bodies_beside_good_requests(server, model):
    """Hypothesis draws request bodies (wrong types, missing and extra keys, lone surrogates, messages in any
    shape, bytes that are not JSON); each draw of 8 is fired at once with 8 good requests. Every good request
    gets its exact score; every other answer is a 4xx in the documented shape, or a 200 for a body that
    happens to be valid; nothing answers 5xx."""
    from hypothesis import HealthCheck, given, settings

    from rm_ds.serve.scorer import load_scorer

    _, url = server
    prompts, responses = texts(8, 31), texts(8, 32)
    want = load_scorer(str(model)).score_responses(prompts, responses)
    seen: dict[int, int] = {}

    @settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st_draw=__import__("hypothesis").strategies.lists(fuzz_bodies(), min_size=8, max_size=8))
    def check(st_draw):
        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                good = [c.post("/v1/score", json={"responses": [{"prompt": p, "response": r}]})
                        for p, r in zip(prompts, responses)]
                fuzz = [post_raw(c, path, body) if path.startswith("/v1/s") or path == "/v1/compare"
                        else c.request("POST" if isinstance(body, bytes) else "GET", path)
                        for path, body in st_draw]
                return await asyncio.gather(*good, *fuzz)

        got = asyncio.run(main())
        for r, w in zip(got[:8], want):
            assert r.status_code == 200 and r.json()["results"][0]["reward"] == pytest.approx(w, abs=1e-5)
        for r, (path, body) in zip(got[8:], st_draw):
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (path, body, r.status_code, r.text)
            if r.status_code >= 400:
                assert set(r.json()["error"]) == {"code", "message", "field"}, r.text
            elif path in ("/v1/score", "/v1/compare"):
                n = len(body["responses" if path == "/v1/score" else "pairs"])
                assert len(r.json()["results"]) == n

    check()
    print(f"fuzzed answers by status: {dict(sorted(seen.items()))}")
    assert seen.get(422, 0) > 0


def test_a_failing_batch_is_retried_one_by_one(model):
    """The model raises on one input (a stand-in for an input that breaks a forward): that request answers 500
    in the error shape; the requests batched with it get their exact scores; the connection stays usable."""
    import threading

    import uvicorn

    from rm_ds.serve.scorer import load_scorer
    from rm_ds.serve.server import ServeOptions, bind, create_app

    scorer, reference = load_scorer(str(model)), load_scorer(str(model))
    marker = scorer._encode("", "BOOM BOOM BOOM", None).chosen_ids
    forward = scorer.forward_batch

    def flaky(items):
        if any(e.chosen_ids == marker for e in items):
            raise RuntimeError("the model broke on this input")
        return forward(items)

    scorer.forward_batch = flaky
    app = create_app([scorer], ServeOptions(max_batch_wait_ms=300))
    sock = bind("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    prompts, responses = texts(8, 41), texts(8, 42)
    want = reference.score_responses(prompts, responses)
    try:
        while not srv.started:
            time.sleep(0.05)

        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                good = [c.post("/v1/score", json={"responses": [{"prompt": p, "response": r}]})
                        for p, r in zip(prompts, responses)]
                boom = c.post("/v1/score", json={"responses": [{"prompt": "p", "response": "BOOM BOOM BOOM"}]})
                got = await asyncio.gather(*good, boom)
                after = await c.post("/v1/score", json={"responses": [{"prompt": prompts[0],
                                                                       "response": responses[0]}]})
                return got, after

        got, after = asyncio.run(main())
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
    for r, w in zip(got[:8], want):
        assert r.status_code == 200 and r.json()["results"][0]["reward"] == pytest.approx(w, abs=1e-5)
    assert got[8].status_code == 500 and got[8].json()["error"]["code"] == "model_error"
    assert "the model broke on this input" in got[8].json()["error"]["message"]
    assert got[8].headers.get("connection", "").lower() != "close"
    assert after.status_code == 200
    assert app.state.batcher.retried >= 1  # the boom shared a batch and was isolated by the retry


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(rm_ds_command("serve", *args), capture_output=True, text=True,
                          env=run_env({"PYTHONPATH": str(REPO)}), timeout=timeout)


def test_command_line_errors_are_one_line(model, tmp_path):
    """A missing model folder and a non-loopback bind without a key: exit 2, one line, before any model loads;
    a port in use: exit 6, one line, no banner."""
    import socket

    r = run_cli("--model", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"rm-ds: config error: --model {tmp_path / 'nowhere'}: no such file or directory"], r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("--model", str(tmp_path / "empty"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no config.json" in r.stderr, r.stderr
    r = run_cli("--model", str(model), "--host", "0.0.0.0")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "needs --api-key" in r.stderr, r.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("--model", str(model), "--port", str(port))
    assert r.returncode == 6 and r.stderr.strip().splitlines() == [
        f"rm-ds: port in use: 127.0.0.1:{port} is already taken (another rm-ds serve?); pick another --port"]
    assert "serving" not in r.stdout and "http://" not in r.stdout


def test_banner_once_listening_and_no_progress_bars(model, tmp_path):
    """--port 0: the banner names the port it got and is printed once the server answers (no polling needed);
    with stderr not a terminal, nothing draws progress bars into the log."""
    log_file = tmp_path / "stderr.log"
    with open(log_file, "w") as err:
        proc = subprocess.Popen(rm_ds_command("serve", "--model", str(model), "--port", "0"),
                                env=run_env({"PYTHONPATH": str(REPO)}), stdout=subprocess.PIPE,
                                stderr=err, text=True)
        try:
            banner = proc.stdout.readline()
            assert banner.startswith("rm-ds serve: ") and "auth off" in banner, banner
            url = banner.split(" on ")[1].split()[0].rstrip("/")
            assert httpx.get(url + "/health", timeout=5).json()["status"] == "ok"  # at once, no retry
        finally:
            out = stop(proc)
    assert proc.returncode == 0 and "rm-ds serve: stopped" in out
    log_text = log_file.read_text()
    assert "Loading weights" not in log_text and "it/s" not in log_text and "\r" not in log_text, log_text[-2000:]
