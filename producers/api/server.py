"""The Web API's HTTP protocol for uvicorn: httptools with a deadline on receiving each request.

uvicorn bounds only the idle time *between* requests (``timeout_keep_alive``), and every byte that
arrives resets it, so a client that sends its headers one byte a second (slowloris) holds a connection,
and an ASGI middleware cannot help: it runs once the headers are complete. This protocol adds the
missing bound, ``KMSBRIDGE_API__READ_TIMEOUT_SECONDS``:

1. the deadline is armed when a connection opens and when the first byte of a request arrives;
2. it is disarmed when the whole request (headers and body) has been received, so a slow *answer*
   (``process_immediately`` waiting for the KMS) is never cut;
3. when it passes first, the client gets ``408 Request Timeout`` (if no answer is under way) and the
   connection is closed.

Headers are bounded in size too: httptools buffers a request line and headers of any length (13 MB
were accepted in a trial), so once more than :data:`MAX_HEADER_BYTES` have arrived without the headers
being complete, the client gets ``431`` and the connection is closed. (The count is per chunk read,
so at most one more read, 256 KiB, is buffered.)
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_HEADER_BYTES", "protocol_with_read_timeout"]

log = logging.getLogger(__name__)

#: Longest request line plus headers (h11's default bound is 16 KiB; a bearer key and a few headers
#: need far less).
MAX_HEADER_BYTES = 65_536


def _answer_and_close(transport: asyncio.Transport, status: bytes) -> None:
    transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    transport.close()


class _DeadlineProtocol(HttpToolsProtocol):
    read_timeout_seconds: float = 10.0

    _deadline: TimerHandle | None = None
    _header_bytes = 0
    _in_headers = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # step 1: a connection that sends nothing is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        reading_headers = self._in_headers
        super().data_received(data)
        if reading_headers and self._in_headers:  # the whole chunk was request line and headers
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                log.warning("api request headers over %d bytes; connection closed", MAX_HEADER_BYTES)
                _answer_and_close(self.transport, b"431 Request Header Fields Too Large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes = True, 0
        self._arm()  # step 1

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()  # step 2

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.read_timeout_seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:  # step 3
        self._deadline = None
        if self.transport.is_closing():
            return
        log.warning("api client sent no complete request within %.1f s; connection closed", self.read_timeout_seconds)
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            _answer_and_close(self.transport, b"408 Request Timeout")
        else:
            self.transport.close()


def protocol_with_read_timeout(seconds: float) -> type[asyncio.Protocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``."""
    return type("ApiHttpProtocol", (_DeadlineProtocol,), {"read_timeout_seconds": seconds})
