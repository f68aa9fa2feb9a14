"""FastAPI app factory: the model is loaded in the lifespan, routes stay thin.

    uvicorn app.main:create_app --factory --port 8000      (what `make serve` runs)
"""


import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.batcher import Batcher, BatchFailed, NotAccepting, QueueFull, QueueTimeout, wants_fault
from app.schemas import ErrorOut, TagRequest, TagResponse
from app.settings import Settings, get_settings
from model.artifact import read_metadata
from model.lexicon import Lexicon
from model.tagger import Tagger, check_tasks

log = logging.getLogger("app")

RETRY_AFTER_SECONDS = "1"
WARMUP_TEXT = "江泽民在北京大学发表讲话。"


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
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics.REJECTED.labels("body_too_large").inc()
        response = error(413, f"request body is larger than the limit of {self.limit} bytes (NER_MAX_BODY_BYTES)")
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        torch.set_num_threads(settings.torch_threads)
        lexicon = Lexicon()
        if settings.user_dict:
            added, rejected = lexicon.add_words(settings.user_dict)
            state.user_dict = {"path": settings.user_dict, "entries": added, "rejected_lines": len(rejected)}
            log.info("user dictionary %s: %d entries loaded, %d lines rejected", settings.user_dict, added, len(rejected))
            for line in rejected[:20]:
                log.warning("user dictionary %s: rejected line %r (expected: word [freq] [pos])", settings.user_dict, line)
        tagger = Tagger.load(settings.model_path, settings.device, lexicon)
        state.tagger = tagger
        state.batcher = Batcher(tagger, settings)
        state.batcher.start()
        metrics.MODEL_INFO.labels(tagger.name, tagger.version, str(tagger.device)).set(1)
        log.info("model %s %s loaded from %s on %s", tagger.name, tagger.version, settings.model_path, tagger.device)
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
    )
    app.state.service = state
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)

    @app.middleware("http")
    async def record_metrics(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "other")
        metrics.REQUESTS.labels(endpoint, str(response.status_code)).inc()
        metrics.REQUEST_DURATION.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for item in exc.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {item.get('msg')}")
        detail = [{k: v for k, v in item.items() if k in ("loc", "msg", "type")} for item in exc.errors()]
        return error(422, "invalid request body: " + "; ".join(problems), detail=detail)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), headers=exc.headers)

    def require_key(request: Request) -> None:
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

    def ready_tagger() -> Tagger:
        if not state.ready or state.tagger is None:
            raise HTTPException(503, "not ready: the model is still loading", headers={"Retry-After": RETRY_AFTER_SECONDS})
        return state.tagger

    Authorised = Depends(require_key)

    @app.post("/tag", response_model=TagResponse, dependencies=[Authorised], summary="Segment, POS-tag and find entities")
    async def tag(body: TagRequest, tagger: Annotated[Tagger, Depends(ready_tagger)]) -> Response:
        texts = body.all_texts()
        if len(texts) > settings.max_texts:
            metrics.REJECTED.labels("too_many_texts").inc()
            raise HTTPException(413, f"too many texts: {len(texts)}, the limit is {settings.max_texts} per request (NER_MAX_TEXTS)")
        for index, text in enumerate(texts):
            if len(text) > settings.max_text_chars:
                metrics.REJECTED.labels("text_too_long").inc()
                raise HTTPException(413, f"text {index} has {len(text)} characters, the limit is {settings.max_text_chars} (NER_MAX_TEXT_CHARS)")
        tasks = check_tasks(body.tasks)
        prepared = await asyncio.to_thread(lambda: [tagger.prepare(text) for text in texts])
        chunks = [chunk for p in prepared for chunk in p.chunks]
        assert state.batcher is not None
        try:
            labels = await state.batcher.submit(chunks, tasks, wants_fault(texts, settings))
        except QueueFull:
            metrics.REJECTED.labels("queue_full").inc()
            raise HTTPException(503, f"overloaded: the queue holds {settings.queue_capacity} sentences (NER_QUEUE_CAPACITY); retry later", headers={"Retry-After": RETRY_AFTER_SECONDS}) from None
        except QueueTimeout:
            metrics.REJECTED.labels("queue_timeout").inc()
            raise HTTPException(503, f"overloaded: the request waited more than {settings.request_timeout_s} s in the queue; retry later", headers={"Retry-After": RETRY_AFTER_SECONDS}) from None
        except NotAccepting:
            raise HTTPException(503, "shutting down: not accepting new requests", headers={"Retry-After": RETRY_AFTER_SECONDS}) from None
        except BatchFailed as failure:
            return error(500, f"internal error while tagging; the error id {failure.error_id} is in the server log", error_id=failure.error_id)
        results, position = [], 0
        for p in prepared:
            result = tagger.assemble(p, labels[position : position + len(p.chunks)], tasks)
            position += len(p.chunks)
            results.append(result.to_dict())
            metrics.CHARACTERS.inc(len(p.text))
            for entity in result.entities:
                metrics.ENTITIES.labels(entity.type).inc()
        if settings.log_texts:
            log.info("tagged %s", texts)
        payload = {"model": {"name": tagger.name, "version": tagger.version}, "results": results}
        return Response(orjson.dumps(payload), media_type="application/json")

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: model loaded and warmed up", responses={503: {"model": ErrorOut}})
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
            "labels": metadata["labels"],
            "max_len": metadata["max_len"],
            "config": metadata.get("config"),
            "corpora": metadata.get("corpora"),
            "evaluation": metadata.get("evaluation"),
            "training": metadata.get("training"),
            "user_dictionary": state.user_dict,
        }

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus_metrics(request: Request) -> Response:
        if settings.protect_metrics:
            require_key(request)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app


async def _warm_up(state: ServiceState) -> None:
    """One batch through the whole path before /readyz says ready."""
    assert state.tagger is not None and state.batcher is not None
    prepared = state.tagger.prepare(WARMUP_TEXT)
    await state.batcher.submit(prepared.chunks, ("seg", "pos", "ner"))
    state.ready = True
    log.info("warm-up batch done; ready")


def serve() -> None:
    """Console script `ner-serve`: uvicorn on NER_HOST:NER_PORT (default 127.0.0.1:8000)."""
    import os

    import uvicorn

    metrics.prepare_multiprocess_dir()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=os.environ.get("NER_HOST", "127.0.0.1"),
        port=int(os.environ.get("NER_PORT", "8000")),
        workers=int(os.environ.get("NER_WORKERS", "1")),
        log_level=get_settings().log_level,
    )
