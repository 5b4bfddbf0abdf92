"""``rm-ds serve``: the reward model over HTTP (FastAPI + uvicorn), with a web page at ``/``.

    rm-ds serve --model runs/default/export/final                     # http://127.0.0.1:8000/
    rm-ds serve --model A --model B --host 0.0.0.0 --api-key "$KEY"  # an ensemble, off loopback

Endpoints (``Authorization: Bearer KEY`` on ``/v1/*`` when an API key is set; docs/serving-api.md)::

    POST /v1/score    {"responses": [{"prompt": "...", "response": "..."}, ...]}
                      -> {"results": [{"reward": .., "reward_norm": .., "status": "ok", "truncated": false}, ...]}
    POST /v1/compare  {"pairs": [{"prompt": "...", "a": "...", "b": "..."}, ...]}
                      -> {"results": [{"reward_a": .., "reward_b": .., "p_a": P(a beats b), ...}, ...]}
    GET  /v1/info     models, objectives, calibration, input recipe, dtype (fp32 or bf16), limits, auth
    GET  /health      {"status": "ok", "queued": n, "batches": n}

Prompts and responses are strings or ``[{"role", "content"}]`` lists. Result keys are the columns of
``rm-ds score`` (``rm_ds.serve.scorer``), with chosen/rejected named a/b: per objective
``reward/<objective>``, per ensemble member ``reward@m<i>`` plus ``reward_std`` / ``margin_std`` and
``disagreement``. Every error answer (ours and FastAPI's own) is ``{"error": {"code", "message", "field"}}``.

A request's way through: the API key (middleware, before the body is read), the body limit, JSON and
schema validation, the checks pydantic cannot make (empty texts, lone surrogates, a continuation that
does not end with an assistant message), then encoding in a thread pool of its own (texts cut to the
model's window first, ``Scorer._cut``), so a bad request gets its own 422 naming the field and never
reaches a batch, and a large one does not hold up the batcher. Only token ids are queued. One worker
takes what arrived within ``max_batch_wait_ms`` and scores it together (length-sorted micro-batches
under the token budget, so a batch's scores equal the same inputs scored one by one) in one thread;
if that batch fails, its requests are scored one by one so that only the failing one answers 500.
A full queue answers 503 with ``Retry-After``. On SIGINT/SIGTERM uvicorn stops accepting, finishes
the requests in flight (the worker keeps running until they are answered), then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import logging
import math
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

import numpy as np
import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from rm_ds.errors import AddressInUse, ConfigError
from rm_ds.serve.scorer import (
    TRUNCATED,
    Encoded,
    Scorer,
    check_ensemble,
    load_scorer,
    pair_columns,
    resolve_model_dir,
    response_columns,
)

log = logging.getLogger(__name__)

WEB_PAGE = Path(__file__).resolve().parent / "web" / "index.html"
MAX_ITEMS_PER_BATCH = 2048
"""Most items one merged batch takes from the queue (the rest wait for the next)."""
ENCODE_THREADS = 2
"""Threads that validate and tokenise requests, off the batcher's thread."""


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    """Interface to bind; anything but loopback needs an api_key."""
    port: int = 8000
    """TCP port (0: any free one; the banner says which)."""
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


# ------------------------------------------------------------------------------------------ errors


def error(status: int, code: str, message: str, *, field: str | None = None, headers: dict | None = None):
    """The one error shape: ``{"error": {"code", "message", "field"}}`` (field: where in the body, or null)."""
    return JSONResponse({"error": {"code": code, "message": message, "field": field}}, status_code=status,
                        headers=headers)


HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
              413: "too_large", 415: "unsupported_media_type", 422: "invalid", 500: "internal", 503: "busy"}
"""``error.code`` per HTTP status (docs/serving-api.md)."""


class RequestError(Exception):
    """A request the server cannot take: its own 4xx, naming the field."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


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


def _check_unicode(text: str, where: str) -> None:
    """422 for a lone surrogate (json.loads lets ``"\\ud800"`` through; no tokenizer can encode it)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise RequestError(422, "invalid", f"lone surrogate {text[e.start]!r} at character {e.start} is not "
                               "valid Unicode (an unpaired \\ud800-\\udfff escape)", field=where) from None


def check_text(x, where: str, *, continuation: bool) -> None:
    """The checks pydantic does not make, for one prompt (``continuation=False``) or response: valid
    Unicode everywhere; a response not blank, and as messages ending with a non-empty assistant turn."""
    if isinstance(x, str):
        _check_unicode(x, where)
        if continuation and not x.strip():
            raise RequestError(422, "invalid", "empty or whitespace-only", field=where)
        return
    for k, m in enumerate(x):
        _check_unicode(m["role"], f"{where}[{k}].role")
        _check_unicode(m["content"], f"{where}[{k}].content")
    if not continuation:
        return
    if not x:
        raise RequestError(422, "invalid", "no messages", field=where)
    if x[-1]["role"] != "assistant":
        raise RequestError(422, "invalid", f"the last message must have role 'assistant', got {x[-1]['role']!r}",
                           field=f"{where}[{len(x) - 1}].role")
    if not x[-1]["content"].strip():
        raise RequestError(422, "invalid", "the last message's content is empty or whitespace-only",
                           field=f"{where}[{len(x) - 1}].content")


def encode_request(scorers: list[Scorer], kind: str, items: list[tuple]) -> list[list[Encoded]]:
    """Token ids of one request, per scorer: ``items`` are (prompt, first, second or None) with
    ``second`` None for ``kind == "responses"``. Raises RequestError naming the item that fails."""
    names = ("prompt", "response") if kind == "responses" else ("prompt", "a", "b")
    for i, item in enumerate(items):
        for name, x in zip(names, item):
            check_text(x, f"body.{kind}[{i}].{name}", continuation=name != "prompt")
    out = []
    for s in scorers:
        encoded = []
        for i, (p, a, b) in enumerate(items):
            try:
                encoded.append(s._encode(p, a, b))
            except Exception as e:  # this item cannot be encoded by this model: the client's input
                chat = [n for n, x in zip(names, (p, a, b)) if isinstance(x, list)]
                where = f"body.{kind}[{i}]" + (f".{chat[0]}" if len(chat) == 1 else "")
                raise RequestError(422, "unencodable", f"{type(e).__name__}: {e}", field=where) from None
        out.append(encoded)
    return out


# ------------------------------------------------------------------------------------------ batching


class QueueFull(Exception):
    pass


@dataclass
class _Job:
    kind: str
    """"responses" or "pairs"."""
    items: list[list[Encoded]]
    """Per scorer: this request's encoded items."""
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)

    @property
    def n(self) -> int:
        return len(self.items[0])


class Batcher:
    """Merges requests that arrive within ``max_wait_s`` and scores them together in one thread."""

    def __init__(self, scorers: list[Scorer], *, max_wait_s: float, max_queue: int) -> None:
        self.scorers = scorers
        self.max_wait_s = max_wait_s
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rm-ds-score")
        self.task: asyncio.Task | None = None
        self.batches = 0
        self.retried = 0
        """Batches that failed as a whole and were scored request by request."""

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

    async def submit(self, kind: str, items: list[list[Encoded]]):
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Job(kind, items, fut))
        except asyncio.QueueFull:
            raise QueueFull from None
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            n = jobs[0].n
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
                n += job.n
            try:
                results = await loop.run_in_executor(self.executor, self._score_isolated, jobs)
            except Exception as e:  # the executor itself failed: answer every waiting request; keep serving
                log.exception("scoring a batch of %d requests failed", len(jobs))
                results = [e] * len(jobs)
            self.batches += 1
            for j, res in zip(jobs, results):
                if j.future.done():
                    continue
                if isinstance(res, BaseException):
                    j.future.set_exception(res)
                else:
                    j.future.set_result(res)

    def _score_isolated(self, jobs: list[_Job]) -> list:
        """``_score`` of the whole batch; if it fails, of each job alone, so only the failing one fails."""
        try:
            return self._score(jobs)
        except Exception:
            if len(jobs) == 1:
                log.exception("scoring one request failed")
                return [sys.exc_info()[1]]
            log.warning("a batch of %d requests failed; scoring them one by one", len(jobs))
            self.retried += 1
        out = []
        for j in jobs:
            try:
                out.append(self._score([j])[0])
            except Exception as e:
                log.exception("scoring one request failed")
                out.append(e)
        return out

    def _score(self, jobs: list[_Job]) -> list[tuple[list[str], list[np.ndarray]]]:
        """Per job: (statuses, per-model reward arrays), all jobs of a kind scored as one input."""
        out: list = [None] * len(jobs)
        for kind in ("responses", "pairs"):
            sel = [i for i, j in enumerate(jobs) if j.kind == kind]
            if not sel:
                continue
            per_model = [s.score_encoded([e for i in sel for e in jobs[i].items[m]])
                         for m, s in enumerate(self.scorers)]
            statuses = [e.status for i in sel for e in jobs[i].items[0]]
            start = 0
            for i in sel:
                n = jobs[i].n
                out[i] = (statuses[start:start + n], [r[start:start + n] for r in per_model])
                start += n
        return out


# ------------------------------------------------------------------------------------------ middleware


async def _send(send, response: JSONResponse) -> None:
    await response({"type": "http"}, None, send)


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
        await _send(send, error(413, "too_large", f"request body larger than {self.limit} bytes"))


class BearerAuth:
    """ASGI middleware: 401 on ``/v1/*`` without the right bearer token, before the body is read."""

    def __init__(self, app, *, api_key: str | None) -> None:
        self.app, self.key = app, api_key

    async def __call__(self, scope, receive, send):
        if self.key is None or scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key.encode()):
            return await _send(send, error(401, "unauthorized", "missing or wrong bearer token "
                                           "(Authorization: Bearer KEY)", headers={"WWW-Authenticate": "Bearer"}))
        await self.app(scope, receive, send)


class CatchAll:
    """ASGI middleware: an exception nothing else answered becomes a 500 in the error shape, and the
    kept-alive connection stays usable (Starlette's own handler re-raises, and uvicorn then closes it)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise
            await _send(send, error(500, "internal", f"internal error: {type(e).__name__}: {e}"))


# ------------------------------------------------------------------------------------------ the app


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


def validation_error(exc: RequestValidationError) -> JSONResponse:
    """400 for a body that is not JSON (with its line and column), else 422 naming the first bad field."""
    errors = exc.errors()
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:
        doc, pos = exc.body if isinstance(exc.body, str) else "", bad_json["loc"][-1]
        if isinstance(pos, int) and doc:
            line, col = doc.count("\n", 0, pos) + 1, pos - doc.rfind("\n", 0, pos)
            where = f" at line {line}, column {col}"
        else:
            where = ""
        return error(400, "bad_json", f"the body is not valid JSON{where}: "
                     f"{(bad_json.get('ctx') or {}).get('error', bad_json['msg'])}")
    msgs = []
    for e in errors[:10]:
        union = any(p in UNION_TAGS for p in e["loc"])
        what = "expected a string or a list of {role, content} messages" if union else e["msg"]
        m = f"{_loc(e['loc'])}: {what}"
        if m not in msgs:
            msgs.append(m)
    return error(422, "invalid", "; ".join(msgs), field=_loc(errors[0]["loc"]) if errors else None)


def create_app(scorers: list[Scorer], opts: ServeOptions) -> FastAPI:
    """The FastAPI app for ``scorers`` (one model, or an ensemble)."""
    check_ensemble(scorers)
    batcher = Batcher(scorers, max_wait_s=opts.max_batch_wait_ms / 1000.0, max_queue=opts.max_queue)
    encoder = ThreadPoolExecutor(max_workers=ENCODE_THREADS, thread_name_prefix="rm-ds-encode")

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        await batcher.stop()  # uvicorn has answered the requests in flight by now
        encoder.shutdown(wait=True)

    # /docs and /redoc load Swagger/ReDoc from a CDN (blank offline): off; /openapi.json stays
    app = FastAPI(title="rm_ds reward model", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, limit=opts.max_body_bytes)  # added first: innermost
    app.add_middleware(BearerAuth, api_key=opts.api_key)
    app.add_middleware(CatchAll)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        return validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        code = HTTP_CODES.get(exc.status_code) or HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"{_request.url.path}: no such endpoint (see GET /v1/info, docs/serving-api.md)"
        elif exc.status_code == 405:
            message = f"{_request.method} {_request.url.path}: method not allowed (allowed: " \
                      f"{next((v for k, v in (exc.headers or {}).items() if k.lower() == 'allow'), '?')})"
        return error(exc.status_code, code, message, headers=exc.headers)

    @app.exception_handler(RequestError)
    async def request_error(_request, exc: RequestError):
        return error(exc.status, exc.code, exc.message, field=exc.field)

    def too_many(n: int, what: str):
        return error(413, "too_large", f"{n} {what} in one request; the limit is {opts.max_items}",
                     field=f"body.{what}")

    async def run(kind: str, items: list[tuple]):
        loop = asyncio.get_running_loop()
        encoded = await loop.run_in_executor(encoder, encode_request, scorers, kind, items)
        try:
            statuses, per_model = await batcher.submit(kind, encoded)
        except QueueFull:
            return error(503, "busy", f"server busy: {opts.max_queue} requests queued; retry later",
                         headers={"Retry-After": str(opts.retry_after_s)})
        except Exception as e:  # the model failed on this request alone (its batch was retried one by one)
            return error(500, "model_error", f"scoring failed: {type(e).__name__}: {e}")
        # a JSONResponse of plain floats/strings: skips FastAPI's jsonable_encoder walk over every result
        return JSONResponse({"results": _result_rows(kind, scorers, statuses, per_model),
                             "objectives": scorers[0].objectives, "models": [s.name for s in scorers]})

    @app.post("/v1/score")
    async def score(req: ScoreRequest):
        if len(req.responses) > opts.max_items:
            return too_many(len(req.responses), "responses")
        return await run("responses", [(_plain(r.prompt), _plain(r.response), None) for r in req.responses])

    @app.post("/v1/compare")
    async def compare(req: CompareRequest):
        if len(req.pairs) > opts.max_items:
            return too_many(len(req.pairs), "pairs")
        return await run("pairs", [(_plain(p.prompt), _plain(p.a), _plain(p.b)) for p in req.pairs])

    @app.get("/v1/info")
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
        return {"status": "ok", "queued": batcher.queue.qsize(), "batches": batcher.batches,
                "auth": opts.api_key is not None}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(WEB_PAGE.read_text())

    return app


# ------------------------------------------------------------------------------------------ the command


class GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a SIGINT/SIGTERM it handled (stop accepting, finish the requests in
    flight, run the lifespan shutdown) ends the process with exit code 0 instead of being re-raised, and
    ``banner`` is printed once the socket listens and the app has started."""

    def __init__(self, config: uvicorn.Config, *, banner: str) -> None:
        super().__init__(config)
        self.banner = banner

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(self.banner, flush=True)

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


def bind(host: str, port: int) -> socket.socket:
    """The listening socket's bind, done before any model loads: a taken port is ``AddressInUse`` (exit
    6); another failure to bind (no such interface, a privileged port) a config error."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise AddressInUse(f"{host}:{port} is already taken (another rm-ds serve?); pick another --port") from None
        raise ConfigError(f"--host {host} --port {port}: cannot listen there: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def check_models(models: list[str], step: str | None) -> None:
    """Every ``--model`` resolves to a folder that exists, before any loads (one line, config error)."""
    from rm_ds.builtin import resolve_model

    for m in models:
        try:
            path = Path(resolve_model(m))
        except (ValueError, FileNotFoundError, OSError) as e:
            raise ConfigError(f"--model {m}: {e}") from None
        if not path.exists():
            raise ConfigError(f"--model {m}: no such file or directory")
        if not path.is_dir():
            raise ConfigError(f"--model {m}: not a directory (expected an exported model or run directory)")
        if not (path / "config.yaml").exists() or not (path / "checkpoints").is_dir():
            try:
                resolve_model_dir(m, step=step)
            except (ValueError, FileNotFoundError) as e:
                raise ConfigError(f"--model {e}") from None


def quiet_progress_bars() -> None:
    """No progress bars (weight loading, downloads) unless stderr is a terminal: they fill logs."""
    if sys.stderr.isatty():
        return
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()


def main(models: list[str], opts: ServeOptions, *, step: str | None = None, token_budget: int | None = None,
         allow_pad_eq_eos: bool = False, dtype: str = "fp32") -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not is_loopback(opts.host) and not opts.api_key:
        raise ConfigError(f"--host {opts.host}: binding an interface other than loopback needs --api-key "
                          "(or RM_DS_API_KEY)")
    check_models(models, step)
    sock = bind(opts.host, opts.port)
    quiet_progress_bars()
    scorers = []
    for m in models:
        try:
            scorers.append(load_scorer(m, step=step, token_budget=token_budget, allow_pad_eq_eos=allow_pad_eq_eos,
                                       dtype=dtype))
        except (ValueError, FileNotFoundError) as e:  # pad == eos, a bad recipe, --dtype: the command line's
            raise ConfigError(f"--model {m}: {e}") from None
    try:
        app = create_app(scorers, opts)
    except ValueError as e:  # an ensemble of multi-objective models
        raise ConfigError(f"--model: {e}") from None
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=opts.graceful_timeout_s)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    server = GracefulServer(config, banner=f"rm-ds serve: {', '.join(models)} on http://{url_host}:{port}/ "
                                           f"({dtype}, auth {'on' if opts.api_key else 'off'})")
    server.run(sockets=[sock])
    print("rm-ds serve: stopped", flush=True)


def command(args) -> int:
    """``rm-ds serve`` from its parsed command line (rm_ds.cli); user errors propagate to the CLI."""
    main(args.model, ServeOptions(host=args.host, port=args.port, api_key=args.api_key,
                                  max_batch_wait_ms=args.max_batch_wait_ms, max_queue=args.max_queue,
                                  max_items=args.max_items, max_body_bytes=args.max_body_bytes),
         step=args.step, token_budget=args.token_budget, allow_pad_eq_eos=args.allow_pad_eq_eos, dtype=args.dtype)
    return 0
