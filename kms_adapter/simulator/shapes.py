"""Response-shape faults: answers framed the ways a real KMS (or a proxy in front of it) may frame them.

uvicorn writes every answer as HTTP/1.1 with ``Content-Length`` (or chunks when the app streams),
so the shapes a client must also read are written here, at the transport: the app marks an answer
with the :data:`SHAPE_HEADER` header, and :class:`ShapingTransport` (installed by the protocol class
:func:`shaping_protocol` builds) rewrites that answer's bytes on the wire and drops the mark.
Unmarked answers pass through untouched. Shapes (``POST /admin/faults {"response_shape": ...}``):

- ``chunked``: ``Transfer-Encoding: chunked`` in three chunks (the first with a chunk extension),
  then a trailer field; no ``Content-Length``.
- ``connection_close``: ``Connection: close`` and the connection closed after the answer.
- ``http10``: an ``HTTP/1.0`` status line, no ``Content-Length``: the body ends when the server
  closes the connection.
- ``te_and_cl``: both ``Transfer-Encoding: chunked`` and a ``Content-Length`` of the unchunked body;
  the body is chunked (RFC 9112 §6.3: Transfer-Encoding wins; the client must not reuse the connection).
- ``lose_answer`` (used through the ``lose_answers`` count): the call was applied, then the
  connection is aborted before a byte of the answer, as when a KMS or a load balancer drops an idle
  kept-alive connection at the wrong moment.

The oversized answers (``oversized``, ``oversized_chunked``) need no rewriting and are made by the app.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["SHAPE_HEADER", "TRANSPORT_SHAPES", "ShapingTransport", "shaping_protocol"]

#: The header (lower case, as Starlette writes names) that marks an answer for rewriting.
SHAPE_HEADER = "x-simulator-shape"
_MARK = b"\r\n" + SHAPE_HEADER.encode() + b": "
#: Shapes :class:`ShapingTransport` writes.
TRANSPORT_SHAPES = frozenset({"chunked", "connection_close", "http10", "te_and_cl", "lose_answer"})


def _split_head(head: bytes) -> tuple[bytes, list[bytes]]:
    lines = head[:-4].split(b"\r\n")  # the head ends with an empty line
    return lines[0], lines[1:]


def _chunked(body: bytes, *, pieces: int) -> bytes:
    size = max(1, -(-len(body) // pieces))
    out = []
    for i, start in enumerate(range(0, len(body), size)):
        chunk = body[start:start + size]
        extension = b";sim=1" if i == 0 else b""
        out.append(b"%x%s\r\n%s\r\n" % (len(chunk), extension, chunk))
    return b"".join(out)


class ShapingTransport:
    """An ``asyncio.Transport`` that rewrites marked answers (see the module docstring), else passes through.

    uvicorn writes an answer's head in one ``write`` and a non-streamed body in the next one, so a
    marked head is held until its body arrives and both go out in the shape asked for.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: tuple[str, bytes, list[bytes]] | None = None
        self._lost = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._lost:
            return
        data = bytes(data)
        if self._held is None:
            mark = data.find(_MARK) if data.startswith(b"HTTP/1.1 ") else -1
            if mark < 0:
                self._transport.write(data)
                return
            status, headers = _split_head(data)
            shape = next(h.split(b": ", 1)[1] for h in headers if h.startswith(_MARK[2:])).decode()
            headers = [h for h in headers if not h.startswith(_MARK[2:])]
            if shape == "lose_answer":
                self._lost = True
                self._transport.abort()
                return
            self._held = (shape, status, headers)
            return
        shape, status, headers = self._held
        self._held = None
        self._write_shaped(shape, status, headers, data)

    def _write_shaped(self, shape: str, status: bytes, headers: list[bytes], body: bytes) -> None:
        def without_length() -> list[bytes]:
            return [h for h in headers if not h.lower().startswith(b"content-length:")]

        close = False
        if shape == "chunked":
            head = [status, *without_length(), b"transfer-encoding: chunked"]
            payload = _chunked(body, pieces=3) + b"0\r\nx-sim-trailer: 1\r\n\r\n"
        elif shape == "te_and_cl":
            head = [status, b"transfer-encoding: chunked", *headers]  # Content-Length of the unchunked body
            payload = _chunked(body, pieces=1) + b"0\r\n\r\n"
        elif shape == "http10":
            head = [b"HTTP/1.0" + status[len(b"HTTP/1.1"):], *without_length()]
            payload, close = body, True
        elif shape == "connection_close":
            head = [status, *headers, b"connection: close"]
            payload, close = body, True
        else:  # an unknown mark: write the answer as it was
            head, payload = [status, *headers], body
        self._transport.write(b"\r\n".join(head) + b"\r\n\r\n" + payload)
        if close:
            self._transport.close()


def shaping_protocol(on_soap_connection: Callable[[], None]) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol over a :class:`ShapingTransport`; ``on_soap_connection`` runs once per
    connection that carries a SOAP call (``/kms``): the simulator counts them, so tests can tell a
    reused connection from a new one whatever the admin client does."""

    class ShapingProtocol(HttpToolsProtocol):
        soap_seen = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(ShapingTransport(transport))  # type: ignore[arg-type]

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            if not self.soap_seen and self.scope.get("path") == "/kms":
                self.soap_seen = True
                on_soap_connection()

    return ShapingProtocol
