"""FastAPI app factory: the model is loaded in the lifespan, routes stay thin.

    uvicorn app.main:create_app --factory --port 8000      (what `make serve` runs)
"""


import asyncio
import hmac
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import orjson
import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.batcher import Batcher, BatchFailed, NotAccepting, QueueFull, QueueTimeout, wants_fault
from app.schemas import ErrorOut, TagRequest, TagResponse
from app.settings import Settings, get_settings
from model.artifact import read_metadata
from model.lexicon import Lexicon
from model.memory import freeze_long_lived_objects
from model.tagger import Tagger, check_tasks

log = logging.getLogger("app")

RETRY_AFTER_SECONDS = "1"
# Up to this many characters, texts are split into chunks on the event loop (about 1 ms);
# a thread hop would cost more than it saves. Model inputs are computed per batch, on the
# inference thread.
INLINE_PREPARE_CHARS = 1000
REQUEST_ID = re.compile(r"[\w.-]{1,64}")  # a client's X-Request-ID is logged only if it looks like an id
WARMUP_TEXT = "江泽民在北京大学发表讲话。"


class WithoutQueryString(logging.Filter):
    """Cuts the query string from uvicorn's access lines: a client may put a key or a token
    there (`?api_key=...`), and the log must not keep it."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn.access records carry (client, method, path with query, http version, status)
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            record.args = (*record.args[:2], record.args[2].split("?", 1)[0], *record.args[3:])
        return True


class ServiceState:
    """What the lifespan creates and the routes use."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.tagger: Tagger | None = None
        self.batcher: Batcher | None = None
        self.ready = False
        self.user_dict: dict[str, Any] | None = None


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class BodySizeLimit:
    """Refuse bodies over `limit` bytes with 413 before anything parses them."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    metrics.REJECTED.labels("body_too_large").inc()
                    raise _BodyTooLarge(413, self._message())
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"request body is larger than the limit of {self.limit} bytes (NER_MAX_BODY_BYTES)"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics.REJECTED.labels("body_too_large").inc()
        await error(413, self._message())(scope, receive, send)


class _BodyTooLarge(StarletteHTTPException):
    """A streamed body (no Content-Length) went over the limit.

    An HTTPException because FastAPI re-raises those from its body reading unchanged
    (any other exception there becomes a 400), so the handler answers 413.
    """


class RequestMetrics:
    """Count requests by endpoint and status and time them (pure ASGI: no per-request task).

    Outermost, so that 413s from BodySizeLimit are counted too; an exception that escapes
    the app counts as a 500, as the client sees it."""

    def __init__(self, app: ASGIApp, known_paths: set[str]):
        self.app = app
        self.known_paths = known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or (scope["path"] if scope["path"] in self.known_paths else "other")
            metrics.REQUESTS.labels(endpoint, str(status)).inc()
            metrics.REQUEST_DURATION.labels(endpoint).observe(time.perf_counter() - started)


def describe_device(tagger: Tagger) -> str:
    """"cpu", "cuda", or with the precision when it is not fp32 ("cpu-int8", "cuda-fp16"): the
    device label of ner_model_info."""
    return str(tagger.device) if tagger.precision == "fp32" else f"{tagger.device}-{tagger.precision}"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, WithoutQueryString) for f in access_log.filters):
        access_log.addFilter(WithoutQueryString())
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        torch.set_num_threads(settings.torch_threads)
        sys.setswitchinterval(settings.switch_interval_ms / 1000)
        lexicon = Lexicon()
        if settings.user_dict:
            added, rejected = lexicon.add_words(settings.user_dict)
            state.user_dict = {"path": settings.user_dict, "entries": added, "rejected_lines": len(rejected)}
            log.info("user dictionary %s: %d entries loaded, %d lines rejected", settings.user_dict, added, len(rejected))
            for line in rejected[:20]:
                log.warning("user dictionary %s: rejected line %r (expected: word [freq] [pos])", settings.user_dict, line)
        tagger = Tagger.load(settings.model_path, settings.device, lexicon, settings.precision)
        state.tagger = tagger
        state.batcher = Batcher(tagger, settings)
        state.batcher.start()
        metrics.MODEL_INFO.labels(tagger.name, tagger.version, describe_device(tagger)).set(1)
        metrics.QUEUE_CAPACITY.set(settings.queue_capacity)
        log.info("model %s %s loaded from %s on %s", tagger.name, tagger.version, settings.model_path, tagger.device)
        if tagger.precision == "fp16" and tagger.device.type == "cpu":
            log.warning("NER_PRECISION=fp16 on the CPU: half precision is meant for CUDA and runs slower here than int8 (the default) or fp32")
        warmup = asyncio.get_running_loop().create_task(_warm_up(state))
        yield
        warmup.cancel()
        state.ready = False
        await state.batcher.close()
        log.info("batcher drained; shutting down")

    app = FastAPI(
        title="Chinese tagging service",
        version="1.0.0",
        description="Word segmentation, POS tags (PKU tag set) and named entities (PER, LOC, ORG) for Chinese text. "
        "Offsets are code-point indices into the text as sent, end-exclusive.",
        lifespan=lifespan,
        responses={422: {"model": ErrorOut}, 413: {"model": ErrorOut}, 503: {"model": ErrorOut}},
        # Metrics are Prometheus (/metrics). FastAPI's native OpenTelemetry hooks looked up the
        # global providers on every request (about 10 % of the event loop's time per /tag).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = state
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)

    app.add_middleware(RequestMetrics, known_paths={"/tag", "/healthz", "/readyz", "/model", "/metrics", "/docs", "/openapi.json"})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type.lower():
            # FastAPI does not parse other content types, so the field errors would only confuse.
            return error(422, f"invalid request body: send JSON with Content-Type: application/json (got {content_type or 'no Content-Type'})")
        problems = []
        for item in exc.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {item.get('msg')}")
        detail = [{k: v for k, v in item.items() if k in ("loc", "msg", "type")} for item in exc.errors()]
        return error(422, "invalid request body: " + "; ".join(problems), detail=detail)

    # Starlette's class: also covers FastAPI's, the router's 404/405 and body-reading errors.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI could not decode the body (not UTF-8, nested too deeply, ...): an invalid body like bad JSON.
            cause = exc.__cause__
            return error(422, f"invalid request body: not readable as UTF-8 JSON ({type(cause).__name__}: {cause})")
        return error(exc.status_code, str(exc.detail), headers=exc.headers)

    # Dependencies are async: FastAPI runs plain `def` ones in a thread pool, a thread hop
    # per request for a check that takes microseconds.
    async def require_key(request: Request) -> None:
        if not settings.api_keys:
            return
        supplied = request.headers.get("x-api-key") or ""
        authorization = request.headers.get("authorization", "")
        if not supplied and authorization.lower().startswith("bearer "):
            supplied = authorization[7:].strip()
        if not supplied:
            raise HTTPException(401, "missing API key: send it in the X-API-Key header or as Authorization: Bearer <key>", headers={"WWW-Authenticate": "Bearer"})
        matches = [hmac.compare_digest(supplied.encode(), key.encode()) for key in settings.api_keys]
        if not any(matches):
            raise HTTPException(401, "wrong API key", headers={"WWW-Authenticate": "Bearer"})

    async def ready_tagger() -> Tagger:
        if not state.ready or state.tagger is None:
            raise HTTPException(503, "not ready: the model is still loading", headers={"Retry-After": RETRY_AFTER_SECONDS})
        return state.tagger

    Authorised = Depends(require_key)

    @app.post("/tag", response_model=TagResponse, dependencies=[Authorised], summary="Segment, POS-tag and find entities")
    async def tag(body: TagRequest, request: Request, tagger: Annotated[Tagger, Depends(ready_tagger)]) -> Response:
        texts = body.all_texts()
        if len(texts) > settings.max_texts:
            metrics.REJECTED.labels("too_many_texts").inc()
            raise HTTPException(413, f"too many texts: {len(texts)}, the limit is {settings.max_texts} per request (NER_MAX_TEXTS)")
        for index, text in enumerate(texts):
            if len(text) > settings.max_text_chars:
                metrics.REJECTED.labels("text_too_long").inc()
                raise HTTPException(413, f"text {index} has {len(text)} characters, the limit is {settings.max_text_chars} (NER_MAX_TEXT_CHARS)")
        tasks = check_tasks(body.tasks)
        if sum(len(text) for text in texts) <= INLINE_PREPARE_CHARS:
            prepared = [tagger.prepare(text) for text in texts]
        else:  # long input: keep the event loop free while it is split
            prepared = await asyncio.to_thread(lambda: [tagger.prepare(text) for text in texts])
        chunks = [chunk for p in prepared for chunk in p.chunks]
        assert state.batcher is not None
        try:
            labels = await unless_client_leaves(request, state.batcher.submit(chunks, tasks, wants_fault(texts, settings)))
        except QueueFull:
            metrics.REJECTED.labels("queue_full").inc()
            raise HTTPException(503, f"overloaded: the queue holds {settings.queue_capacity} sentences (NER_QUEUE_CAPACITY); retry later", headers={"Retry-After": RETRY_AFTER_SECONDS}) from None
        except QueueTimeout:
            metrics.REJECTED.labels("queue_timeout").inc()
            raise HTTPException(503, f"overloaded: the request waited more than {settings.request_timeout_s} s in the queue; retry later", headers={"Retry-After": RETRY_AFTER_SECONDS}) from None
        except NotAccepting:
            raise HTTPException(503, "shutting down: not accepting new requests", headers={"Retry-After": RETRY_AFTER_SECONDS}) from None
        except ClientLeft:
            return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; counted in ner_requests
        except BatchFailed as failure:
            return error(500, f"internal error while tagging; the error id {failure.error_id} is in the server log", error_id=failure.error_id)
        results, position = [], 0
        for p in prepared:
            result = tagger.assemble(p, labels[position : position + len(p.chunks)], tasks)
            position += len(p.chunks)
            results.append(result)  # orjson serialises the dataclasses directly
            metrics.CHARACTERS.inc(len(p.text))
            for entity in result.entities:
                metrics.ENTITIES.labels(entity.type).inc()
        if settings.log_texts:
            log.info("tagged %s", texts)
        payload = {"model": {"name": tagger.name, "version": tagger.version}, "results": results}
        supplied_id = request.headers.get("x-request-id", "")
        request_id = supplied_id if REQUEST_ID.fullmatch(supplied_id) else uuid.uuid4().hex[:16]
        # Sizes and ids only: texts stay out of the log unless NER_LOG_TEXTS is on (privacy).
        log.info("tag %s: %d texts, %d characters, %d sentences", request_id, len(texts), sum(len(t) for t in texts), len(chunks))
        return Response(orjson.dumps(payload), media_type="application/json", headers={"X-Request-ID": request_id})

    # HEAD too: load balancers and uptime checkers send it
    @app.api_route("/healthz", methods=["GET", "HEAD"], summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.api_route("/readyz", methods=["GET", "HEAD"], summary="Readiness: model loaded and warmed up", responses={503: {"model": ErrorOut}})
    async def readyz() -> JSONResponse:
        if not state.ready:
            return error(503, "not ready: the model is loading or warming up", headers={"Retry-After": RETRY_AFTER_SECONDS})
        return JSONResponse({"status": "ready"})

    @app.get("/model", dependencies=[Authorised], summary="The loaded model: labels, corpora, evaluation figures")
    async def model_info() -> dict:
        metadata = state.tagger.metadata if state.tagger else read_metadata(settings.model_path)
        return {
            "name": metadata["name"],
            "version": metadata["version"],
            "device": str(state.tagger.device) if state.tagger else None,
            "precision": state.tagger.precision if state.tagger else None,
            "labels": metadata["labels"],
            "max_len": metadata["max_len"],
            "config": metadata.get("config"),
            "corpora": metadata.get("corpora"),
            "evaluation": metadata.get("evaluation"),
            "training": metadata.get("training"),
            "user_dictionary": state.user_dict,
        }

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text exposition format)")
    async def prometheus_metrics(request: Request) -> Response:
        if settings.protect_metrics:
            await require_key(request)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app


T = TypeVar("T")
CLIENT_CLOSED_REQUEST = 499  # nginx's code for a client that went away before the answer


class ClientLeft(Exception):
    """The client disconnected before its request was answered."""


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`; if the client disconnects first, `work` is cancelled (its
    sentences leave the queue unprocessed) and ClientLeft is raised."""

    async def client_gone() -> None:
        # The body is read already, so the next message is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work_task.done():
            return work_task.result()
        raise ClientLeft()
    finally:
        watcher.cancel()
        work_task.cancel()  # no-op when done; else submit() marks its queued sentences cancelled


async def _warm_up(state: ServiceState) -> None:
    """One batch through the whole path before /readyz says ready."""
    assert state.tagger is not None and state.batcher is not None
    prepared = state.tagger.prepare(WARMUP_TEXT)
    await state.batcher.submit(prepared.chunks, ("seg", "pos", "ner"))
    # Again, now that the app and the featuriser's tables exist: full collections hold the
    # GIL, and the event loop spent about 15 % of its time in them at 64 clients while the
    # inference thread waited.
    freeze_long_lived_objects()
    state.ready = True
    log.info("warm-up batch done; ready")


def serve(argv: list[str] | None = None) -> None:
    """Console script `ner-serve`: uvicorn with the NER_* settings (default 127.0.0.1:8000)."""
    import argparse
    import signal

    import uvicorn
    from pydantic import ValidationError

    parser = argparse.ArgumentParser(
        prog="ner-serve",
        description="Serve the Chinese tagger over HTTP (POST /tag). Configured by environment variables:",
        epilog="\n".join(setting_help()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as error:
        problems = "\n".join(f"  NER_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}" for e in error.errors())
        print(f"ner-serve: invalid settings, nothing started:\n{problems}\n(ner-serve --help lists them)", file=sys.stderr)
        raise SystemExit(2) from None
    # uvicorn drains on SIGTERM and then raises the signal again, so the process would die by it
    # (status -15); after a graceful drain, exit 0 instead, as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    metrics.prepare_multiprocess_dir(settings.workers)
    uvicorn.run("app.main:create_app", factory=True, host=settings.host, port=settings.port, workers=settings.workers, log_level=settings.log_level)


def setting_help() -> list[str]:
    """One line per setting for `ner-serve --help`: variable, default and meaning."""
    lines = []
    for name, field in Settings.model_fields.items():
        if name == "fault_injection":
            continue  # a test hook, not a user setting
        default = field.get_default(call_default_factory=True)
        lines.append(f"  NER_{name.upper():24s} default {default!r}: {field.description or ''}".rstrip(": "))
    return lines
