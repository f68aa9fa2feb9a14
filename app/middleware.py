"""Pure-ASGI middlewares (no per-request task), outermost first as `create_app` adds them:
RequestMetrics, CORS, BodySizeLimit, ApiKeyAuth, ContentEncodingCheck (innermost comes
POST /tag's fast path, app/routes.py TagFastPath). Checks that must come before the body is
read live here: FastAPI reads and parses a body before it runs any dependency, so a
dependency could not answer 401 or 415 before a 422."""

from __future__ import annotations

import hmac
import time

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.errors import error


class RequestMetrics:
    """Count requests by endpoint and status and time them.

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
            metrics.REJECTED.labels("body_too_large").inc()
            await error(413, self._message())(scope, receive, send)
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


class _BodyTooLarge(StarletteHTTPException):
    """A streamed body (no Content-Length) went over the limit.

    An HTTPException because FastAPI re-raises those from its body reading unchanged
    (any other exception there becomes a 400), so the handler answers 413.
    """


def supplied_key(scope: Scope) -> str:
    """The key in X-API-Key, else in Authorization: Bearer; "" when there is none."""
    headers = dict(scope["headers"])
    supplied = headers.get(b"x-api-key", b"").decode("latin-1")
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    if not supplied and authorization.lower().startswith("bearer "):
        supplied = authorization[7:].strip()
    return supplied


def key_matches(supplied: str, keys: list[str]) -> bool:
    # Every key is compared, in constant time: neither the time nor the position leaks.
    matches = [hmac.compare_digest(supplied.encode(), key.encode()) for key in keys]
    return any(matches)


class ApiKeyAuth:
    """401 for a request to a protected path without a valid key, before its body is read."""

    def __init__(self, app: ASGIApp, keys: list[str], protected_paths: set[str]):
        self.app = app
        self.keys = keys
        self.protected_paths = protected_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] not in self.protected_paths:
            await self.app(scope, receive, send)
            return
        supplied = supplied_key(scope)
        if not supplied:
            message = "missing API key: send it in the X-API-Key header or as Authorization: Bearer <key>"
        elif not key_matches(supplied, self.keys):
            message = "wrong API key"
        else:
            await self.app(scope, receive, send)
            return
        await error(401, message, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)


class ContentEncodingCheck:
    """415 for a compressed body (Content-Encoding other than identity): it would reach the
    JSON parser as bytes that are not UTF-8 and get a misleading answer."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            encoding = dict(scope["headers"]).get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
            if encoding not in ("", "identity"):
                metrics.REJECTED.labels("content_encoding").inc()
                await error(415, f"Content-Encoding {encoding!r} is not supported: send the JSON body uncompressed")(scope, receive, send)
                return
        await self.app(scope, receive, send)
