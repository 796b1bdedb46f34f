"""A loopback HTTP/1.1 server that answers scripted bytes, for the KMS client's unit tests.

:class:`ScriptedKms` reads each request (head and ``Content-Length`` body) and does what the next
:class:`Reply` says; it counts the connections and keeps the requests, so a test can tell a reused
connection from a new one and see exactly what was sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

__all__ = ["LOSE", "Reply", "ScriptedKms", "chunked", "http"]


def http(body: bytes, *headers: str, status: str = "HTTP/1.1 200 OK", length: bool = True) -> bytes:
    lines = [status, "Content-Type: text/xml; charset=utf-8", *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(body: bytes, *headers: str, status: str = "HTTP/1.1 200 OK") -> bytes:
    half = len(body) // 2
    framed = b"%x;ext=1\r\n%s\r\n%x\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (half, body[:half], len(body) - half,
                                                                         body[half:])
    return http(framed, "Transfer-Encoding: chunked", *headers, status=status, length=False)


@dataclass
class Reply:
    """What the server does for one request: write ``data``, then close the connection, or hang open."""

    data: bytes = b""
    close: bool = False
    hang: bool = False
    stream: bytes = b""  # written again and again until the client goes away


LOSE = Reply(close=True)  # read the request, then close without a byte of answer


@dataclass
class ScriptedKms:
    """Loopback HTTP/1.1 server answering the n-th request with ``replies[n]`` (the last one repeats)."""

    replies: list[Reply]
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> ScriptedKms:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:  # connections still open (hanging replies, kept-alive ones)
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/kms"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                self.requests.append(head + await reader.readexactly(length))
                reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
                writer.write(reply.data)
                await writer.drain()
                while reply.stream:
                    writer.write(reply.stream)
                    await writer.drain()
                if reply.hang:
                    await reader.read()  # until the client closes
                if reply.close or reply.hang:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
