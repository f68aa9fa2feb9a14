"""uvicorn's httptools protocol with the limits a server exposed without a proxy needs.

uvicorn bounds neither the request head nor the time a client may take to send a request:
one connection sending an endless header held the event loop for seconds (httptools joins
the pieces of a header in Python, so time grows faster than size) and idle or 1-byte/s
connections stayed open for good. `ner-serve` runs this protocol instead (`--http` for
plain uvicorn: `uvicorn --http app.protocol:GuardedHttpToolsProtocol ...`):

- the request line and headers are cut off at NER_MAX_HEADER_BYTES (431) and
  NER_MAX_HEADERS header lines (431);
- a request whose head is not complete NER_HEADER_TIMEOUT_S after the connection opened (or
  after its first byte, on a kept-alive connection) gets 408 and the connection is closed;
  a connection that never sent a byte is closed without an answer (logged at INFO);
- a body not complete NER_BODY_TIMEOUT_S after the head ends closes the connection;
- the protocol's own errors (a malformed request) are JSON like the app's: {"error": ...}.
"""

from __future__ import annotations

import asyncio
import logging

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.settings import get_settings

log = logging.getLogger("app")


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()  # the worker's environment, as for the app
        self.max_header_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self.header_timeout_s = settings.header_timeout_s
        self.body_timeout_s = settings.body_timeout_s
        self.reading_head = True  # between the start of a request (or the connection) and the end of its headers
        self.head_bytes = 0  # bytes read while the head was incomplete: bounds a head that never ends
        # The parser has seen this request's first byte. A pipelined request can begin in the read
        # that ended the one before, whose bytes head_bytes did not count.
        self.request_begun = False
        self.head_size = 0  # the head's parsed size: URL, header names and values
        self.header_count = 0
        self.deadline: asyncio.TimerHandle | None = None

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own data_received, with the limits and JSON errors added
        self._unset_keepalive_if_required()
        if self.reading_head:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as problem:
            refusal = problem.__context__
            if isinstance(refusal, _Refused):  # raised by a callback below
                self._answer_and_close(refusal.status, refusal.message)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self._answer_and_close(400, f"invalid HTTP request: {problem}")
            return
        if self.reading_head and self.head_bytes > self.max_header_bytes:
            # the head goes on: refuse before httptools joins any more of it
            self._answer_and_close(431, self._too_large())

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.deadline is None:  # the next request on a kept-alive connection: time it from its first byte
            self._arm(self.header_timeout_s)
        self.request_begun = True
        self.header_count = 0
        self.head_size = 0

    def on_url(self, url: bytes) -> None:
        self.head_size += len(url)
        if self.head_size > self.max_header_bytes:
            raise _Refused(431, self._too_large())
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # The exact size of a head that arrived whole in one read (head_bytes also counts the body there).
        self.header_count += 1
        self.head_size += len(name) + len(value)
        if self.header_count > self.max_headers:
            raise _Refused(431, f"too many request headers: more than {self.max_headers} (NER_MAX_HEADERS)")
        if self.head_size > self.max_header_bytes:
            raise _Refused(431, self._too_large())
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self._arm(self.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        # What arrives next is the next request's head. Counting starts here, not at its first
        # byte's parse: data_received counts a read before the parser sees it, and a head cut
        # short must read as bytes sent (408), not as an idle connection (a silent close).
        self.reading_head = True
        self.head_bytes = 0
        self.request_begun = False
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._answer_and_close(400, f"invalid HTTP request: {msg}")

    # Helpers

    def _too_large(self) -> str:
        return f"request line and headers larger than {self.max_header_bytes} bytes (NER_MAX_HEADER_BYTES)"

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _timed_out(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        if not self.reading_head:
            # the app is already reading this body; closing makes it see a disconnect
            log.warning(
                "closing the connection from %s: request body not complete after %s s (NER_BODY_TIMEOUT_S)", client, self.body_timeout_s
            )
            self.transport.close()
        elif self.head_bytes == 0 and not self.request_begun:
            # never sent a byte: nobody to answer (logged, as a client that did send a request
            # and saw the connection close would otherwise find no trace of it here)
            log.info("closing the connection from %s: no request within %s s (NER_HEADER_TIMEOUT_S)", client, self.header_timeout_s)
            self.transport.close()
        else:
            log.warning(
                "closing the connection from %s: request headers not complete after %s s (NER_HEADER_TIMEOUT_S)",
                client,
                self.header_timeout_s,
            )
            self._answer_and_close(408, f"request headers not complete after {self.header_timeout_s} s (NER_HEADER_TIMEOUT_S)")

    def _answer_and_close(self, status: int, message: str) -> None:
        self._disarm()
        body = orjson.dumps({"error": message})
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
