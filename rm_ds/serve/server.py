"""``rm-ds serve``: the reward model over HTTP (FastAPI + uvicorn), with a web page at ``/``.

    rm-ds serve --model runs/default/export/final                     # http://127.0.0.1:8000/
    rm-ds serve --model A --model B --host 0.0.0.0 --api-key "$KEY"  # an ensemble, off loopback

Endpoints (``Authorization: Bearer KEY`` on ``/v1/*`` when an API key is set)::

    POST /v1/score    {"responses": [{"prompt": "...", "response": "..."}, ...]}
                      -> {"results": [{"reward": .., "reward_norm": .., "status": "ok", "truncated": false}, ...]}
    POST /v1/compare  {"pairs": [{"prompt": "...", "a": "...", "b": "..."}, ...]}
                      -> {"results": [{"reward_a": .., "reward_b": .., "p_a": P(a beats b), ...}, ...]}
    GET  /v1/info     models, objectives, calibration, input recipe, dtype (fp32 or bf16), limits
    GET  /health      {"status": "ok", "queued": n}

Prompts and responses are strings or ``[{"role", "content"}]`` lists. Result keys are the columns of
``rm-ds score`` (``rm_ds.serve.scorer``), with chosen/rejected named a/b: per objective
``reward/<objective>``, per ensemble member ``reward@m<i>`` plus ``reward_std`` / ``margin_std`` and
``disagreement``.

Dynamic batching: requests wait in a bounded queue; one worker takes what arrived within
``max_batch_wait_ms``, scores it together (length-sorted micro-batches under the token budget, so a
batch's scores equal the same inputs scored one by one) in one thread, and answers each request.
A full queue answers 503 with ``Retry-After``; invalid bodies 422 naming the field and the index;
bodies over ``max_body_bytes`` or with more than ``max_items`` items 413. Over-long inputs are cut
as the recipe says and the result's ``status`` says how. On SIGINT/SIGTERM uvicorn stops accepting,
finishes the requests in flight (the worker keeps running until they are answered), then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import math
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from rm_ds.serve.scorer import (
    TRUNCATED,
    Scorer,
    check_ensemble,
    load_scorer,
    pair_columns,
    response_columns,
)

log = logging.getLogger(__name__)

WEB_PAGE = Path(__file__).resolve().parent / "web" / "index.html"
MAX_ITEMS_PER_BATCH = 2048
"""Most items one merged batch takes from the queue (the rest wait for the next)."""


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    """Interface to bind; anything but loopback needs an api_key."""
    port: int = 8000
    """TCP port."""
    api_key: str | None = None
    """Bearer token required on /v1/* (None: no authentication, loopback only)."""
    max_batch_wait_ms: float = 5.0
    """How long the worker waits for more requests before scoring a batch."""
    max_queue: int = 256
    """Requests that may wait; one more gets 503."""
    max_items: int = 256
    """Responses or pairs per request; more gets 413."""
    max_body_bytes: int = 4 << 20
    """Request body limit in bytes; more gets 413."""
    retry_after_s: int = 1
    """Retry-After seconds sent with 503."""
    graceful_timeout_s: float = 30.0
    """How long shutdown waits for requests in flight."""


# ------------------------------------------------------------------------------------------ request bodies

Text = Annotated[str, StringConstraints(min_length=1)]


class Message(BaseModel):
    role: Text
    content: str


Content = str | list[Message]
UNION_TAGS = {"str", "constrained-str", "list[Message]"}
"""Union branch names pydantic adds to an error's location; dropped so the location names the field."""


class ResponseItem(BaseModel):
    prompt: str | list[Message] = ""
    response: Content


class PairItem(BaseModel):
    prompt: str | list[Message] = ""
    a: Content
    b: Content


class ScoreRequest(BaseModel):
    responses: Annotated[list[ResponseItem], Field(min_length=1)]


class CompareRequest(BaseModel):
    pairs: Annotated[list[PairItem], Field(min_length=1)]


def _plain(x):
    return [m.model_dump() for m in x] if isinstance(x, list) else x


# ------------------------------------------------------------------------------------------ batching


class QueueFull(Exception):
    pass


@dataclass
class _Job:
    kind: str
    """"responses" or "pairs"."""
    prompts: list
    first: list
    second: list | None
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class Batcher:
    """Merges requests that arrive within ``max_wait_s`` and scores them together in one thread."""

    def __init__(self, scorers: list[Scorer], *, max_wait_s: float, max_queue: int) -> None:
        self.scorers = scorers
        self.max_wait_s = max_wait_s
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rm-ds-score")
        self.task: asyncio.Task | None = None
        self.batches = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, kind: str, prompts: list, first: list, second: list | None):
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Job(kind, prompts, first, second, fut))
        except asyncio.QueueFull:
            raise QueueFull from None
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            n = len(jobs[0].prompts)
            while n < MAX_ITEMS_PER_BATCH:
                try:  # what is already queued is taken at once; only an empty queue waits (out the window)
                    job = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), left)
                    except TimeoutError:
                        break
                jobs.append(job)
                n += len(job.prompts)
            try:
                results = await loop.run_in_executor(self.executor, self._score, jobs)
            except Exception as e:  # answer every waiting request; keep serving
                log.exception("scoring a batch of %d requests failed", len(jobs))
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.batches += 1
            for j, res in zip(jobs, results):
                if not j.future.done():
                    j.future.set_result(res)

    def _score(self, jobs: list[_Job]) -> list[tuple[list[str], list[np.ndarray]]]:
        """Per job: (statuses, per-model reward arrays), all jobs of a kind scored as one input."""
        out: list = [None] * len(jobs)
        for kind in ("responses", "pairs"):
            sel = [i for i, j in enumerate(jobs) if j.kind == kind]
            if not sel:
                continue
            prompts = [p for i in sel for p in jobs[i].prompts]
            first = [x for i in sel for x in jobs[i].first]
            second = [x for i in sel for x in jobs[i].second] if kind == "pairs" else None
            per_model, statuses = [], None
            for s in self.scorers:
                items = s.encode_pairs(prompts, first, second) if second is not None else \
                    s.encode_responses(prompts, first)
                statuses = statuses or [e.status for e in items]
                per_model.append(s.score_encoded(items))
            start = 0
            for i in sel:
                n = len(jobs[i].prompts)
                out[i] = (statuses[start:start + n], [r[start:start + n] for r in per_model])
                start += n
        return out


# ------------------------------------------------------------------------------------------ the app


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes (by Content-Length, or counted as it arrives)."""

    def __init__(self, app, *, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._reject(send)
        if length is not None:
            return await self.app(scope, receive, send)
        # no Content-Length (chunked): read the body here, up to the limit, and replay it to the app
        chunks, seen = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            chunks.append(msg.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await self._reject(send)
            if not msg.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send):
        resp = JSONResponse({"error": f"request body larger than {self.limit} bytes"}, status_code=413)
        await resp({"type": "http"}, None, send)


def _loc(loc) -> str:
    out = ""
    for part in [p for p in loc if p not in UNION_TAGS]:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _result_rows(kind: str, scorers: list[Scorer], statuses: list[str], per_model: list[np.ndarray]) -> list[dict]:
    cols = pair_columns(scorers, per_model) if kind == "pairs" else response_columns(scorers, per_model)
    if kind == "pairs":
        cols = {k.replace("chosen", "a").replace("rejected", "b"): v for k, v in cols.items()}
    rows = []
    for i, st in enumerate(statuses):
        row = {k: (None if math.isnan(float(v[i])) else float(v[i])) for k, v in cols.items()}
        row["status"] = st
        row["truncated"] = st in TRUNCATED
        rows.append(row)
    return rows


def create_app(scorers: list[Scorer], opts: ServeOptions) -> FastAPI:
    """The FastAPI app for ``scorers`` (one model, or an ensemble)."""
    check_ensemble(scorers)
    batcher = Batcher(scorers, max_wait_s=opts.max_batch_wait_ms / 1000.0, max_queue=opts.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        await batcher.stop()  # uvicorn has answered the requests in flight by now

    app = FastAPI(title="rm_ds reward model", lifespan=lifespan)
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, limit=opts.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        errors, msgs = exc.errors(), []
        for e in errors[:10]:
            union = any(p in UNION_TAGS for p in e["loc"])
            what = "expected a string or a list of {role, content} messages" if union else e["msg"]
            m = f"{_loc(e['loc'])}: {what}"
            if m not in msgs:
                msgs.append(m)
        return JSONResponse({"error": "; ".join(msgs), "detail": [{"loc": list(e["loc"]), "msg": e["msg"]}
                                                                   for e in errors[:10]]}, status_code=422)

    async def auth(request: Request) -> None:
        if opts.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), opts.api_key.encode()):
            raise _Unauthorized

    @app.exception_handler(_Unauthorized)
    async def unauthorized(_request, _exc):
        return JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer KEY)"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    def empty_field(rows: list, names: tuple[str, ...], where: str):
        """422 for the first empty response (a blank string or no messages), naming its field and index."""
        for i, r in enumerate(rows):
            for name in names:
                v = getattr(r, name)
                if (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v):
                    return JSONResponse({"error": f"body.{where}[{i}].{name}: empty", "detail": [
                        {"loc": ["body", where, i, name], "msg": "empty"}]}, status_code=422)
        return None

    def too_many(n: int, what: str):
        return JSONResponse({"error": f"{n} {what} in one request; the limit is {opts.max_items}"}, status_code=413)

    async def run(kind: str, prompts: list, first: list, second: list | None):
        try:
            statuses, per_model = await batcher.submit(kind, prompts, first, second)
        except QueueFull:
            return JSONResponse({"error": f"server busy: {opts.max_queue} requests queued; retry later"},
                                status_code=503, headers={"Retry-After": str(opts.retry_after_s)})
        # a JSONResponse of plain floats/strings: skips FastAPI's jsonable_encoder walk over every result
        return JSONResponse({"results": _result_rows(kind, scorers, statuses, per_model),
                             "objectives": scorers[0].objectives, "models": [s.name for s in scorers]})

    @app.post("/v1/score", dependencies=[Depends(auth)])
    async def score(req: ScoreRequest):
        if len(req.responses) > opts.max_items:
            return too_many(len(req.responses), "responses")
        if (bad := empty_field(req.responses, ("response",), "responses")) is not None:
            return bad
        return await run("responses", [_plain(r.prompt) for r in req.responses],
                         [_plain(r.response) for r in req.responses], None)

    @app.post("/v1/compare", dependencies=[Depends(auth)])
    async def compare(req: CompareRequest):
        if len(req.pairs) > opts.max_items:
            return too_many(len(req.pairs), "pairs")
        if (bad := empty_field(req.pairs, ("a", "b"), "pairs")) is not None:
            return bad
        return await run("pairs", [_plain(p.prompt) for p in req.pairs], [_plain(p.a) for p in req.pairs],
                         [_plain(p.b) for p in req.pairs])

    @app.get("/v1/info", dependencies=[Depends(auth)])
    async def info():
        return {"models": [s.info() for s in scorers], "objectives": scorers[0].objectives,
                "ensemble": len(scorers) > 1, "dtype": scorers[0].dtype,
                "calibrated": all(s.calibrated for s in scorers),
                "limits": {"max_items": opts.max_items, "max_body_bytes": opts.max_body_bytes,
                           "max_queue": opts.max_queue, "max_batch_wait_ms": opts.max_batch_wait_ms,
                           "max_length": min(s.recipe.max_length for s in scorers),
                           "token_budget": min(s.token_budget for s in scorers)},
                "auth": opts.api_key is not None}

    @app.get("/health")
    async def health():
        return {"status": "ok", "queued": batcher.queue.qsize(), "batches": batcher.batches}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(WEB_PAGE.read_text())

    return app


class _Unauthorized(Exception):
    pass


class GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a SIGINT/SIGTERM it handled (stop accepting, finish the requests in
    flight, run the lifespan shutdown) ends the process with exit code 0 instead of being re-raised."""

    @contextlib.contextmanager
    def capture_signals(self):
        old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(models: list[str], opts: ServeOptions, *, step: str | None = None, token_budget: int | None = None,
         allow_pad_eq_eos: bool = False, dtype: str = "fp32") -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not is_loopback(opts.host) and not opts.api_key:
        raise ValueError(f"--host {opts.host}: binding an interface other than loopback needs --api-key "
                         "(or RM_DS_API_KEY)")
    scorers = [load_scorer(m, step=step, token_budget=token_budget, allow_pad_eq_eos=allow_pad_eq_eos, dtype=dtype)
               for m in models]
    app = create_app(scorers, opts)
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning",
                            timeout_graceful_shutdown=opts.graceful_timeout_s)
    server = GracefulServer(config)
    print(f"rm-ds serve: {', '.join(models)} on http://{opts.host}:{opts.port}/ "
          f"({dtype}, auth {'on' if opts.api_key else 'off'})", flush=True)
    server.run()
    print("rm-ds serve: stopped", flush=True)
