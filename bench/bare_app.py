"""The framework's own limit for bench/stages.py: FastAPI on uvicorn, POST /tag reads the body
and returns a fixed answer (the file in $BARE_ANSWER, a real answer of ner-serve's size)."""

import os
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response

ANSWER = Path(os.environ["BARE_ANSWER"]).read_bytes()
app = FastAPI()


@app.post("/tag")
async def tag(request: Request) -> Response:
    await request.body()
    return Response(ANSWER, media_type="application/json")


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}
