"""Service configuration, read from environment variables prefixed NER_ (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

import model

DEFAULT_MODEL = str(Path(model.__file__).parent / "artifacts" / "default")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NER_", env_file=None, extra="ignore")

    host: str = Field("127.0.0.1", description="Address `ner-serve` listens on (0.0.0.0 for all interfaces).")
    port: int = Field(8000, ge=1, le=65535, description="Port `ner-serve` listens on.")
    workers: int = Field(1, ge=1, description="Worker processes of `ner-serve` (each loads the model).")
    # uvicorn's supervisor kills a worker that does not answer its health check in time and starts
    # another; its 5 s default was shorter than a worker's imports on a busy 2-core host, so
    # workers were killed in a loop and the service never came up.
    worker_healthcheck_s: int = Field(
        30, ge=1, description="With several workers: how long a worker may leave the supervisor's health check unanswered (while starting, or busy) before it is killed and replaced."
    )
    model_path: str = Field(DEFAULT_MODEL, description="Bundle folder (network.pt + metadata.json).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else the CPU.")
    # int8 ran 1.17x to 1.34x faster in-process than fp32 on the 2-core benchmark machine (best batch
    # each) and moved every test F1 by at most 0.0003 (model card). On CUDA int8 means fp32;
    # fp16 gave the same test F1 on an H200 but no speed-up (README, Performance).
    precision: Literal["fp32", "int8", "fp16"] = Field(
        "int8", description="int8: dynamic quantisation on the CPU (fp32 on CUDA); fp16: half-precision encoder, for CUDA; fp32: the weights as exported."
    )
    torch_threads: int = Field(1, ge=1, description="Intra-op threads of the inference thread; 1 avoids oversubscription.")
    # The event loop and the inference thread share the GIL. The model thread gives it up at
    # every numpy/torch call and must win it back from the busy event loop, which by default
    # keeps it up to 5 ms; at 0.1 ms one worker served 28 % more requests/s (c=64, 2 cores).
    switch_interval_ms: float = Field(0.1, gt=0, description="Python's thread switch interval (sys.setswitchinterval), in ms.")
    user_dict: str | None = Field(None, description="User dictionary: word [freq] [pos] [type] per line (jieba's format plus an optional PER/LOC/ORG/O column); reloaded on SIGHUP.")
    user_dict_mode: Literal["forced", "features"] = Field(
        "forced", description="forced: every occurrence of an entry is one token with its POS and entity type; features: entries only feed the dictionary features, as jieba words."
    )
    max_request_entries: int = Field(100, ge=0, description="Most user-dictionary entries one request may add (`user_dict` in POST /tag); 0 turns them off.")
    whole_names: bool = Field(False, description="Merge the tokens inside a person's name into one token tagged nr (a request's `whole_names` overrides it).")

    max_batch_sentences: int = Field(64, ge=1, description="At most this many sentences (chunks) per batch; 1 turns batching off.")
    max_batch_chars: int = Field(12000, ge=1, description="At most this many characters per batch (a longer chunk runs alone).")
    max_wait_ms: float = Field(2.0, ge=0, description="How long a sentence that finds the model idle waits for others to join its batch.")
    queue_capacity: int = Field(4096, ge=1, description="Sentences that may wait; beyond it requests get 503.")
    request_timeout_s: float = Field(30.0, gt=0, description="A request still queued after this long gets 503.")

    max_text_chars: int = Field(100_000, ge=1, description="Longest text accepted (characters); longer gets 413.")
    max_texts: int = Field(256, ge=1, description="Most texts in one request; more gets 413.")
    max_body_bytes: int = Field(4_000_000, ge=1, description="Largest request body (bytes); larger gets 413 before parsing.")
    # Protocol limits (app/protocol.py, `ner-serve` only): without them an endless header held the
    # event loop for seconds and idle or 1-byte/s connections stayed open for good.
    max_header_bytes: int = Field(65_536, ge=1024, description="Largest request line plus headers (bytes); larger gets 431 and the connection is closed.")
    max_headers: int = Field(100, ge=1, description="Most header lines in one request; more gets 431.")
    header_timeout_s: float = Field(10.0, gt=0, description="A request's headers must be complete this long after the connection opens (or its first byte arrives); else 408 and the connection is closed.")
    body_timeout_s: float = Field(30.0, gt=0, description="A request's body must be complete this long after its headers; else the connection is closed.")
    # uvicorn's own default is 5 s, the same as httpx's client-side expiry: a client that reused a
    # connection just as the server closed it got no answer (ReadError, seen in a 200-client
    # flood). The server must keep idle connections longer than its clients and any load balancer
    # in front (AWS ALB: 60 s) do, so that they close first; 75 s is nginx's default.
    keep_alive_s: float = Field(75.0, gt=0, description="How long an idle kept-alive connection stays open; longer than clients' and load balancers' idle timeouts, so that they close first.")

    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Comma-separated keys; empty = no authentication.")
    protect_metrics: bool = Field(False, description="Require an API key on /metrics too.")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Comma-separated origins; empty = CORS off.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="Log level of the service and uvicorn.")
    log_texts: bool = Field(False, description="Log request texts (off by default for privacy).")
    # One wrk run of 10 s wrote 44,677 access lines: at thousands of requests/s the per-request
    # lines are most of the log and cost the event loop; the metrics count every request anyway.
    access_log: bool = Field(False, description="One log line per request (uvicorn's access line, and each /tag request's id, sizes and sentences).")
    fault_injection: bool = Field(False, description="Test hook: a text containing FAULT_MARKER makes its batch fail.")

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _no_blank_keys(cls, value: object) -> object:
        # " , " or "key," would otherwise leave fewer keys than meant, or none: authentication
        # silently off. Unset or empty still means no authentication.
        if isinstance(value, str) and value.strip() and any(not item.strip() for item in value.split(",")):
            raise ValueError(f"NER_API_KEYS has a blank key ({value!r}): list keys separated by commas, without empty entries, or leave it unset for no authentication")
        return value


FAULT_MARKER = "\u2063__ner_fault__"


@lru_cache
def get_settings() -> Settings:
    return Settings()
