"""FastAPI app factory: the model is loaded in the lifespan, routes stay thin.

    ner-serve      (what `make serve` and the image run: uvicorn with app/protocol.py's limits)
    uvicorn app.main:create_app --factory --http app.protocol:GuardedHttpToolsProtocol --timeout-keep-alive 75 --port 8000
"""


import asyncio
import faulthandler
import logging
import os
import signal
import sys
import time
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from uvicorn.supervisors.multiprocess import Multiprocess

from app import metrics
from app.batcher import Batcher
from app.deps import ServiceState
from app.errors import install_error_handlers
from app.middleware import ApiKeyAuth, BodySizeLimit, ContentEncodingCheck, RequestMetrics
from app.protocol import GuardedHttpToolsProtocol
from app.routes import TagFastPath, router
from app.schemas import EXAMPLE_TEXT, ErrorOut
from app.settings import Settings, get_settings
from model.lexicon import Lexicon
from model.memory import freeze_long_lived_objects
from model.tagger import TASKS, Tagger
from model.user_dict import UserDictionary, UserDictionaryError

log = logging.getLogger("app")


class WithoutQueryString(logging.Filter):
    """Cuts the query string from uvicorn's access lines: a client may put a key or a token
    there (`?api_key=...`), and the log must not keep it."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn.access records carry (client, method, path with query, http version, status)
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            record.args = (*record.args[:2], record.args[2].split("?", 1)[0], *record.args[3:])
        return True


def describe_device(tagger: Tagger) -> str:
    """"cpu", "cuda", or with the precision when it is not fp32 ("cpu-int8", "cuda-fp16"): the
    device label of ner_model_info."""
    return str(tagger.device) if tagger.precision == "fp32" else f"{tagger.device}-{tagger.precision}"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # jieba logs through a stderr handler of its own at DEBUG and also passes its records to
    # ours: every start-up line came out twice. Through ours only, at NER_LOG_LEVEL.
    jieba_log = logging.getLogger("jieba")
    jieba_log.handlers.clear()
    jieba_log.setLevel(logging.NOTSET)
    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, WithoutQueryString) for f in access_log.filters):
        access_log.addFilter(WithoutQueryString())
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        torch.set_num_threads(settings.torch_threads)
        sys.setswitchinterval(settings.switch_interval_ms / 1000)
        tagger = Tagger.load(settings.model_path, settings.device, Lexicon(), settings.precision)
        state.tagger = tagger
        if settings.user_dict:
            load_user_dict(state, strict=False)
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_user_dict(state)))
        except (ValueError, RuntimeError):  # not the main thread (an in-process test client)
            log.debug("no SIGHUP handler outside the main thread")
        state.batcher = Batcher(tagger, settings)
        state.batcher.start()
        metrics.MODEL_INFO.labels(tagger.name, tagger.version, describe_device(tagger)).set(1)
        log.info("model %s %s loaded from %s on %s", tagger.name, tagger.version, settings.model_path, tagger.device)
        if tagger.precision == "fp16" and tagger.device.type == "cpu":
            log.warning("NER_PRECISION=fp16 on the CPU: half precision is meant for CUDA and runs slower here than int8 (the default) or fp32")
        # Before the yield: uvicorn accepts connections only after the lifespan's start-up, so a
        # request never meets a cold worker (it answered /tag 503 while warming up, even after
        # another worker had said ready to the readiness probe; with several workers, requests
        # sent meanwhile wait in the shared socket's backlog for a warm one).
        await _warm_up(state)
        metrics.QUEUE_CAPACITY.set(settings.queue_capacity)  # summed over workers: those taking requests
        yield
        state.ready = False
        await state.batcher.close()
        log.info("batcher drained; shutting down")

    # FastAPIOffline: /docs and /redoc load their scripts from this service, not from a CDN,
    # so they work on hosts without internet access.
    app = FastAPIOffline(
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
    # Added innermost first: a request meets RequestMetrics, CORS, the body limit, the key check
    # and the encoding check in that order, all before FastAPI (or TagFastPath) reads the body.
    app.add_middleware(TagFastPath)
    app.add_middleware(ContentEncodingCheck)
    app.add_middleware(ApiKeyAuth, keys=settings.api_keys, protected_paths={"/tag", "/model"} | ({"/metrics"} if settings.protect_metrics else set()))
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    if settings.cors_origins:  # outside the checks, so that browsers can read their errors too
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(RequestMetrics, known_paths={"/tag", "/healthz", "/readyz", "/model", "/metrics", "/docs", "/redoc", "/openapi.json"})

    install_error_handlers(app)
    app.include_router(router)
    return app


def load_user_dict(state: ServiceState, strict: bool) -> None:
    """Read NER_USER_DICT into the tagger and record the outcome for GET /model. Raises
    UserDictionaryError when the file cannot be read, or (`strict`, on reload) when a line is
    rejected: the dictionary in use then stays."""
    settings, tagger = state.settings, state.tagger
    assert settings.user_dict and tagger is not None
    path = settings.user_dict
    user_dict = UserDictionary.read(path)
    own_tags = sorted({entry.pos for entry in user_dict.entries.values() if entry.pos and entry.pos not in tagger.pos_tags})
    if own_tags:  # allowed (jieba's nrfg, a user's own tags), but a typo would hide here
        log.warning("user dictionary %s: POS tags outside the model's tag set, given to the tokens as they are: %s", path, ", ".join(own_tags))
    for rejected in user_dict.rejected[:20]:
        log.warning("user dictionary %s line %d rejected (%s): %r", path, rejected.line_number, rejected.reason, rejected.line)
    if strict and user_dict.rejected:
        raise UserDictionaryError(f"user dictionary {path}: {len(user_dict.rejected)} lines rejected (first: line {user_dict.rejected[0].line_number}, {user_dict.rejected[0].reason})")
    tagger.use_dictionary(user_dict, forced=settings.user_dict_mode == "forced")
    state.user_dict = {
        "path": path,
        "mode": settings.user_dict_mode,
        "entries": len(user_dict),
        "rejected_lines": len(user_dict.rejected),
        "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "last_reload_error": None,
    }
    log.info("user dictionary %s: %d entries loaded (%s), %d lines rejected", path, len(user_dict), settings.user_dict_mode, len(user_dict.rejected))


async def reload_user_dict(state: ServiceState) -> None:
    """On SIGHUP: the user dictionary read again; a file that cannot be read or has a rejected
    line leaves the one in use, and says why in the log and in GET /model."""
    if not state.settings.user_dict or state.tagger is None:
        log.info("SIGHUP: no user dictionary to reload (NER_USER_DICT is not set)")
        return
    try:
        await asyncio.to_thread(load_user_dict, state, True)
    except UserDictionaryError as error:
        log.error("SIGHUP: %s; the dictionary loaded before stays in use", error)
        state.user_dict = {**(state.user_dict or {}), "last_reload_error": str(error)}


async def _warm_up(state: ServiceState) -> None:
    """One batch through the whole path before the worker takes requests."""
    assert state.tagger is not None and state.batcher is not None
    prepared = state.tagger.prepare(EXAMPLE_TEXT)
    await state.batcher.submit(prepared.chunks, TASKS)
    # Again, now that the app and the featuriser's tables exist: full collections hold the
    # GIL, and the event loop spent about 15 % of its time in them at 64 clients while the
    # inference thread waited.
    freeze_long_lived_objects()
    state.ready = True
    log.info("warm-up batch done; ready")


def serve(argv: list[str] | None = None) -> None:
    """Console script `ner-serve`: uvicorn with the NER_* settings (default 127.0.0.1:8000)."""
    import argparse

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
    # A crash in native code (a segfault in an extension, an abort) would end a worker without a
    # word in the log; faulthandler first writes every thread's Python stack to stderr. The
    # variable turns it on in the workers uvicorn spawns, enable() in this process; an operator's
    # own PYTHONFAULTHANDLER (empty: off) is kept.
    if os.environ.setdefault("PYTHONFAULTHANDLER", "1"):
        faulthandler.enable()
    metrics.prepare_multiprocess_dir(settings.workers)
    config = uvicorn.Config("app.main:create_app", factory=True, host=settings.host, port=settings.port, workers=settings.workers, log_level=settings.log_level, access_log=settings.access_log, http=GuardedHttpToolsProtocol, timeout_keep_alive=settings.keep_alive_s, timeout_worker_healthcheck=settings.worker_healthcheck_s)
    if settings.workers > 1:
        DrainingMultiprocess(config, sockets=[config.bind_socket()]).run()
        return
    # uvicorn drains on SIGTERM and then raises the signal again, so the process would die by it
    # (status -15); after a graceful drain, exit 0 instead, as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE: the model or the port failed


class DrainingMultiprocess(Multiprocess):
    """uvicorn's supervisor, closing its copy of the listening socket before it stops the workers.

    Each worker stops listening when told to shut down, but the parent's copy kept the socket
    open: the kernel went on accepting connections that no worker would serve, and they hung
    until the parent exited (then were reset). With every copy closed, a client is refused at
    once and can go elsewhere while the workers finish the requests they hold."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, self._stop_listening)

    def _stop_listening(self, signum: int, frame: Any) -> None:
        # At once, in the handler: uvicorn's loop reads its signal queue only every 0.5 s.
        for sock in self.sockets:
            sock.close()
        for process in self.processes:
            if process.pid is not None:
                try:
                    os.kill(process.pid, signal.SIGTERM)  # not Process.terminate: that closes the health-check pipes
                except ProcessLookupError:
                    pass  # died meanwhile; uvicorn's loop notices
        self.signal_queue.append(signum)  # uvicorn's own handling: log, stop, join

    def handle_hup(self) -> None:
        # uvicorn restarts every worker on SIGHUP; here it means "reload the user dictionary",
        # which each worker does in place, keeping its dictionary if the new file is bad.
        for process in self.processes:
            if process.pid is not None:
                try:
                    os.kill(process.pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass


def setting_help() -> list[str]:
    """One line per setting for `ner-serve --help`: variable, default and meaning."""
    lines = []
    for name, field in Settings.model_fields.items():
        if name == "fault_injection":
            continue  # a test hook, not a user setting
        default = field.get_default(call_default_factory=True)
        lines.append(f"  NER_{name.upper():24s} default {default!r}: {field.description or ''}".rstrip(": "))
    return lines
