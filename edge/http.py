"""A tiny HTTP/1.1 server for the local APIs (no web framework on a Pi).

Routes map (method, path prefix) to async handlers returning (status, JSON body or text).
Two listeners use it: the read-only status API on a loopback TCP port (anything on the machine,
a browser page too, may read it; nothing there actuates), and local control on a Unix socket whose
file permissions are the credential (mode 0660, the admin group): a web page cannot reach it.
Requests are small and bounded; a body must be `application/json`; connections are limited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
Handler = Callable[[str, bytes, "str | None"], Awaitable[tuple[int, Any]]]
"""(path without the query, body, the Unix peer's user name or None on TCP) -> (status, JSON or text)."""
LOOPBACK = ("127.0.0.1", "::1", "localhost")
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           413: "Payload Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
SOCKET_MODE = 0o660


def _peer_user(writer: asyncio.StreamWriter) -> str | None:
    """The user on the other end of a Unix socket (SO_PEERCRED), or None on TCP."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


class HttpServer:
    """One listener: loopback TCP (`host`, `port`) or a Unix socket (`unix`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, unix: Path | None = None,
                 group: str | None = None, max_connections: int = 8) -> None:
        if unix is None and host not in LOOPBACK:
            raise ValueError(f"the status API listens on loopback only, not {host}")
        self.host, self.port, self.unix, self.group = host, port, unix, group
        self.routes: list[tuple[str, str, Handler]] = []
        self._server: asyncio.Server | None = None
        self._slots = max_connections
        self._busy = 0

    def route(self, method: str, prefix: str, handler: Handler) -> None:
        self.routes.append((method, prefix, handler))

    async def start(self) -> int:
        if self.unix is not None:
            self.unix.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            if self.unix.is_socket():
                try:
                    _r, w = await asyncio.wait_for(asyncio.open_unix_connection(str(self.unix)), 1.0)
                except (OSError, TimeoutError):
                    self.unix.unlink()   # a stale socket of a previous run
                else:
                    w.close()
                    raise OSError(f"{self.unix}: another process is serving it (a second daemon?)")
            old = os.umask(0o117)    # never world-accessible, not even for the instant before chmod
            try:
                self._server = await asyncio.start_unix_server(self._serve, str(self.unix))
            finally:
                os.umask(old)
            os.chmod(self.unix, SOCKET_MODE)
            if self.group is not None:
                import grp  # lazy: only where a group is configured

                os.chown(self.unix, -1, grp.getgrnam(self.group).gr_gid)
            return 0
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            if self.unix is not None:
                self.unix.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._busy >= self._slots:
            status, body, ctype = 503, b'{"error": "too many connections"}', "application/json"
        else:
            self._busy += 1
            try:
                status, body, ctype = await asyncio.wait_for(self._handle(reader, _peer_user(writer)), timeout=10)
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
                status, body, ctype = 400, json.dumps({"error": f"bad request: {exc}"}).encode(), "application/json"
            finally:
                self._busy -= 1
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, peer: str | None) -> tuple[int, bytes, str]:
        request_line = (await reader.readline()).decode("latin-1").strip()
        parts = request_line.split()
        if len(parts) != 3:
            raise ValueError("malformed request line")
        method, path = parts[0], parts[1]
        length = 0
        ctype = ""
        for _ in range(64):
            line = (await reader.readline()).decode("latin-1").strip()
            if not line:
                break
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value.strip())
            elif name.lower() == "content-type":
                ctype = value.strip().lower()
        else:
            raise ValueError("too many header lines")
        if length > MAX_BODY or length < 0:
            return 413, b'{"error": "body too large"}', "application/json"
        if method in ("POST", "PUT", "DELETE") and length and ctype.split(";")[0].strip() != "application/json":
            return 415, b'{"error": "the body must be application/json"}', "application/json"
        body = await reader.readexactly(length) if length else b""
        path = path.partition("?")[0]
        allowed = False
        for m, prefix, handler in self.routes:
            if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
                allowed = True
                if m != method:
                    continue
                try:
                    status, result = await handler(path, body, peer)
                except Exception:
                    log.exception("status API handler for %s failed", path)
                    return 500, b'{"error": "internal error"}', "application/json"
                if isinstance(result, str):
                    return status, result.encode(), "text/plain; version=0.0.4"
                return status, json.dumps(result, ensure_ascii=False).encode(), "application/json"
        return (405 if allowed else 404), b'{"error": "no such resource"}', "application/json"


async def get_json(host: str, port: int, path: str, body: Any = None, wait_s: float = 5.0, *,
                   unix: Path | None = None, method: str | None = None) -> tuple[int, Any]:
    """A minimal client for the local APIs (used by the CLI): loopback TCP, or the control socket."""
    if unix is not None:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(unix)), wait_s)
    else:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait_s)
    data = b"" if body is None else json.dumps(body).encode()
    method = method or ("GET" if body is None else "POST")
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), wait_s)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(payload) if payload else None
