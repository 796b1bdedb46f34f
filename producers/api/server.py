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
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["protocol_with_read_timeout"]

log = logging.getLogger(__name__)


_TIMEOUT_ANSWER = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _DeadlineProtocol(HttpToolsProtocol):
    read_timeout_seconds: float = 10.0

    _deadline: TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # step 1: a connection that sends nothing is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # step 1

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
            self.transport.write(_TIMEOUT_ANSWER)
        self.transport.close()


def protocol_with_read_timeout(seconds: float) -> type[asyncio.Protocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``."""
    return type("ApiHttpProtocol", (_DeadlineProtocol,), {"read_timeout_seconds": seconds})
