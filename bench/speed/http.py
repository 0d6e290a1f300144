"""A minimal HTTP/1.1 keep-alive client for the load generator: POST a body, read status and body.

httpx spends about a millisecond of CPU per request; on a 2-core machine shared with everything it measures, the
generator would then be the bottleneck (and steal the cores the services need). This client does only what the
bench needs (Content-Length bodies, keep-alive, no redirects, no TLS) at a small fraction of that cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

# Reuse an idle connection only this soon after its last answer (uvicorn closes them after 5 s).
KEEP_ALIVE_SECONDS = 3.0


class HttpError(Exception):
    """The request got no complete answer (connection refused or reset, malformed response, timeout)."""


class RawHttpClient:
    """Keep-alive connections to one host, at most `max_connections` at a time; callers beyond that wait."""

    def __init__(self, host: str, port: int, *, max_connections: int, timeout_seconds: float) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout_seconds
        # Idle connections with when each was last answered: the server closes one idle past its keep-alive
        # timeout (uvicorn: 5 s), and a request written to it would find it closed.
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """POST `body` to `path`; returns the status and the response body."""
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        async with self._slots:
            connection = self._reusable()
            try:
                async with asyncio.timeout(self._timeout):
                    if connection is None:
                        connection = await asyncio.open_connection(self._host, self._port)
                    status, answer, keep = await _exchange(connection, request)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                if connection is not None:
                    connection[1].close()
                raise HttpError(repr(exc)) from exc
            if keep:
                self._idle.append((*connection, time.monotonic()))
            else:
                connection[1].close()
            return status, answer

    def _reusable(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The most recently used idle connection still well within the server's keep-alive timeout."""
        while self._idle:
            reader, writer, answered_at = self._idle.pop()
            if time.monotonic() - answered_at < KEEP_ALIVE_SECONDS and not reader.at_eof():
                return reader, writer
            writer.close()
        return None

    async def close(self) -> None:
        """Close every idle connection."""
        while self._idle:
            _, writer, _ = self._idle.pop()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _exchange(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
) -> tuple[int, bytes, bool]:
    reader, writer = connection
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    pairs = (line.partition(":") for line in lines[1:] if line)
    fields = {name.strip().lower(): value.strip() for name, _, value in pairs}
    if "content-length" not in fields:
        raise ValueError(f"response without Content-Length: {lines[0]!r}")
    body = await reader.readexactly(int(fields["content-length"]))
    return status, body, fields.get("connection", "").lower() != "close"
