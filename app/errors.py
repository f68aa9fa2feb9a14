"""Every error answer has one shape, {"error": "what was wrong, for a person", ...}."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def unreadable_body(cause: BaseException) -> str:
    """Why FastAPI could not decode a body, in words for the client: not Python's messages,
    which name interpreter internals (e.g. sys.set_int_max_str_digits)."""
    if isinstance(cause, UnicodeDecodeError):
        return f"invalid request body: not UTF-8 (byte {cause.start} is 0x{cause.object[cause.start]:02x}); send UTF-8 JSON"
    if isinstance(cause, RecursionError):
        return "invalid request body: JSON nested too deeply"
    if isinstance(cause, json.JSONDecodeError):
        return f"invalid request body: not valid JSON ({cause.msg} at line {cause.lineno}, column {cause.colno})"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "invalid request body: a number in it is too long (more than 4,300 digits)"
    return "invalid request body: not readable as UTF-8 JSON"


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


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400 and exc.__cause__ is not None:
        # FastAPI could not decode the body (not UTF-8, nested too deeply, ...): an invalid body like bad JSON.
        return error(422, unreadable_body(exc.__cause__))
    return error(exc.status_code, str(exc.detail), headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    # Starlette's class: also covers FastAPI's, the router's 404/405 and body-reading errors.
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
