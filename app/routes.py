"""The routes: thin functions over the tagger and the batcher (`create_app` includes the router).

Each error is an HTTPException with a message for people (app/errors.py shapes it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable
from typing import TypeVar

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.batcher import BatchFailed, NotAccepting, QueueFull, QueueTimeout, TooManySentences, wants_fault
from app.deps import RETRY_AFTER_SECONDS, State, ready_tagger, service_state
from app.errors import error, http_error
from app.schemas import ErrorOut, TagRequest, TagResponse
from model.artifact import read_metadata
from model.tagger import check_tasks
from model.user_dict import DictEntry, UserDictionary

log = logging.getLogger("app")
router = APIRouter()

# Up to this many characters, texts are split into chunks on the event loop (about 1 ms);
# a thread hop would cost more than it saves. Model inputs are computed per batch, on the
# inference thread.
INLINE_PREPARE_CHARS = 1000
REQUEST_ID = re.compile(r"[\w.-]{1,64}")  # a client's X-Request-ID is logged only if it looks like an id


@router.post("/tag", response_model=TagResponse, summary="Segment, POS-tag and find entities")
async def tag(body: TagRequest, request: Request) -> Response:
    state = await service_state(request)
    tagger = ready_tagger(state)
    settings = state.settings
    texts = body.all_texts()
    if len(texts) > settings.max_texts:
        metrics.REJECTED.labels("too_many_texts").inc()
        raise HTTPException(413, f"too many texts: {len(texts)}, the limit is {settings.max_texts} per request (NER_MAX_TEXTS)")
    for index, text in enumerate(texts):
        if len(text) > settings.max_text_chars:
            metrics.REJECTED.labels("text_too_long").inc()
            raise HTTPException(413, f"text {index} has {len(text)} characters, the limit is {settings.max_text_chars} (NER_MAX_TEXT_CHARS)")
    tasks = check_tasks(body.tasks)
    request_dict = request_dictionary(body, settings.max_request_entries)
    if sum(len(text) for text in texts) <= INLINE_PREPARE_CHARS:
        prepared = [tagger.prepare(text, request_dict) for text in texts]
    else:  # long input: keep the event loop free while it is split
        prepared = await asyncio.to_thread(lambda: [tagger.prepare(text, request_dict) for text in texts])
    chunks = [chunk for p in prepared for chunk in p.chunks]
    assert state.batcher is not None
    try:
        spans = await unless_client_leaves(request, state.batcher.submit(chunks, tasks, wants_fault(texts, settings)))
    except TooManySentences as refusal:
        metrics.REJECTED.labels("too_many_sentences").inc()
        raise HTTPException(413, f"the texts split into {refusal.sentences} sentences, more than the queue holds ({settings.queue_capacity}, NER_QUEUE_CAPACITY): send them in several requests") from None
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
    whole_names = settings.whole_names if body.whole_names is None else body.whole_names
    for p in prepared:
        result = tagger.assemble(p, spans[position : position + len(p.chunks)], tasks, whole_names, body.report_dictionary)
        position += len(p.chunks)
        results.append(result)  # orjson serialises the dataclasses directly
        metrics.CHARACTERS.inc(len(p.text))
        for entity in result.entities:
            metrics.ENTITIES.labels(entity.type).inc()
    if settings.log_texts:
        log.info("tagged %s", texts)
    payload = {"model": {"name": tagger.name, "version": tagger.version}, "results": results}
    supplied_id = request.headers.get("x-request-id", "")
    request_id = supplied_id if REQUEST_ID.fullmatch(supplied_id) else os.urandom(8).hex()
    # Sizes and ids only: texts stay out of the log unless NER_LOG_TEXTS is on (privacy).
    if settings.access_log:
        log.info("tag %s: %d texts, %d characters, %d sentences", request_id, len(texts), sum(len(t) for t in texts), len(chunks))
    return Response(orjson.dumps(payload), media_type="application/json", headers={"X-Request-ID": request_id})


def request_dictionary(body: TagRequest, limit: int) -> UserDictionary | None:
    """The request's own dictionary entries, if any; 413 over the limit."""
    if not body.user_dict:
        return None
    if len(body.user_dict) > limit:
        metrics.REJECTED.labels("too_many_entries").inc()
        raise HTTPException(413, f"too many user_dict entries: {len(body.user_dict)}, the limit is {limit} per request (NER_MAX_REQUEST_ENTRIES)")
    return UserDictionary(DictEntry.make(entry.word, None, entry.pos, entry.type) for entry in body.user_dict)


# HEAD too: load balancers and uptime checkers send it. A route of its own, after GET's and
# left out of the schema as HTTP implies it: with api_route(methods=["GET", "HEAD"]) both
# operations took the id of whichever method a set yielded first, which varied by process.
@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", summary="Readiness: model loaded and warmed up", responses={503: {"model": ErrorOut}})
async def readyz(state: State) -> JSONResponse:
    if not state.ready:
        return error(503, "not ready: the model is not loaded, or the service is shutting down", headers={"Retry-After": RETRY_AFTER_SECONDS})
    return JSONResponse({"status": "ready"})


@router.get("/model", summary="The loaded model: labels, corpora, evaluation figures")
async def model_info(state: State) -> dict:
    description = state.tagger.description if state.tagger else read_metadata(state.settings.model_path)
    return {
        "name": description.name,
        "version": description.version,
        "device": str(state.tagger.device) if state.tagger else None,
        "precision": state.tagger.precision if state.tagger else None,
        **description.model_dump(include={"labels", "max_len", "config", "corpora", "evaluation", "training"}),
        "user_dictionary": state.user_dict,
    }


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text exposition format)")
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


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

    work_task = asyncio.ensure_future(work)  # Batcher.submit's future as it is
    watcher = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work_task.done():
            return work_task.result()
        raise ClientLeft()
    finally:
        watcher.cancel()
        work_task.cancel()  # no-op when done; else submit() marks its queued sentences cancelled


class TagFastPath:
    """POST /tag with a JSON body straight to `tag`, past FastAPI's routing, dependency solving
    and body parsing: the event loop's CPU time per request fell by about a third (64 clients,
    one sentence each; docs/performance.md). pydantic parses and validates the body in one call
    (`model_validate_json`). A body it does not accept, and any other request, goes on to
    FastAPI unchanged, so every error keeps its shape and wording. It is the innermost
    middleware, so the others' checks and metrics apply as before; the route stays declared
    for the OpenAPI schema."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/tag" or not json_content(scope):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            body = await request.body()
        except ClientDisconnect:
            await Response(status_code=CLIENT_CLOSED_REQUEST)(scope, receive, send)
            return
        except StarletteHTTPException as refusal:  # BodySizeLimit, on a streamed body
            await (await http_error(request, refusal))(scope, receive, send)
            return
        try:
            parsed = TagRequest.model_validate_json(body)
        except ValidationError:  # FastAPI finds the same problem and words it as it always has
            await self.app(scope, replaying(body, receive), send)
            return
        try:
            response = await tag(parsed, request)
        except StarletteHTTPException as refusal:
            response = await http_error(request, refusal)
        await response(scope, receive, send)


def json_content(scope: Scope) -> bool:
    """Whether the body is declared application/json. Other types (application/x+json, or none,
    which FastAPI refuses) take FastAPI's way."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` with the body already read in front of it."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_again() -> Message:
        return pending.pop() if pending else await receive()

    return receive_again
