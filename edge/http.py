"""A tiny loopback HTTP/1.1 server for the local status API (no web framework on a Pi).

Routes map (method, path prefix) to async handlers returning (status, JSON body or text).
Only loopback addresses are accepted; requests are small and bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
Handler = Callable[[str, bytes], Awaitable[tuple[int, Any]]]
LOOPBACK = ("127.0.0.1", "::1", "localhost")
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           413: "Payload Too Large", 500: "Internal Server Error", 502: "Bad Gateway"}


class HttpServer:
    def __init__(self, host: str, port: int) -> None:
        if host not in LOOPBACK:
            raise ValueError(f"the status API listens on loopback only, not {host}")
        self.host, self.port = host, port
        self.routes: list[tuple[str, str, Handler]] = []
        self._server: asyncio.Server | None = None

    def route(self, method: str, prefix: str, handler: Handler) -> None:
        self.routes.append((method, prefix, handler))

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body, ctype = await asyncio.wait_for(self._handle(reader), timeout=10)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            status, body, ctype = 400, json.dumps({"error": f"bad request: {exc}"}).encode(), "application/json"
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[int, bytes, str]:
        request_line = (await reader.readline()).decode("latin-1").strip()
        parts = request_line.split()
        if len(parts) != 3:
            raise ValueError("malformed request line")
        method, path = parts[0], parts[1]
        length = 0
        while True:
            line = (await reader.readline()).decode("latin-1").strip()
            if not line:
                break
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value.strip())
        if length > MAX_BODY:
            return 413, b'{"error": "body too large"}', "application/json"
        body = await reader.readexactly(length) if length else b""
        allowed = False
        for m, prefix, handler in self.routes:
            if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
                allowed = True
                if m != method:
                    continue
                try:
                    status, result = await handler(path, body)
                except Exception:
                    log.exception("status API handler for %s failed", path)
                    return 500, b'{"error": "internal error"}', "application/json"
                if isinstance(result, str):
                    return status, result.encode(), "text/plain; version=0.0.4"
                return status, json.dumps(result, ensure_ascii=False).encode(), "application/json"
        return (405 if allowed else 404), b'{"error": "no such resource"}', "application/json"


async def get_json(host: str, port: int, path: str, body: Any = None, wait_s: float = 5.0) -> tuple[int, Any]:
    """A minimal client for the status API (used by the CLI)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait_s)
    data = b"" if body is None else json.dumps(body).encode()
    method = "GET" if body is None else "POST"
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), wait_s)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(payload) if payload else None
