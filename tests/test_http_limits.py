"""The local API's own limits: loopback only, JSON bodies only, bounded connections and bodies."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

from edge.http import HttpServer


async def test_connections_beyond_the_limit_are_turned_away() -> None:
    folder = Path(tempfile.mkdtemp(prefix="ce-http-"))
    server = HttpServer(unix=folder / "c.sock", max_connections=2)

    async def ok(_p: str, _b: bytes, peer: str | None) -> tuple[int, object]:
        return 200, {"peer": peer}

    server.route("GET", "/x", ok)
    await server.start()
    try:
        idle = [await asyncio.open_unix_connection(str(folder / "c.sock")) for _ in range(2)]
        await asyncio.sleep(0.05)   # both slots taken by clients that send nothing
        r, w = await asyncio.open_unix_connection(str(folder / "c.sock"))
        raw = await asyncio.wait_for(r.read(), 5)
        w.close()
        assert raw.split()[1] == b"503"
        for _r, iw in idle:
            iw.close()
        await asyncio.sleep(0.05)
        r, w = await asyncio.open_unix_connection(str(folder / "c.sock"))
        w.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        await w.drain()
        raw = await asyncio.wait_for(r.read(), 5)
        w.close()
        assert raw.split()[1] == b"200"
        assert b'"peer": "' in raw   # the peer's user, from SO_PEERCRED (never from the request)
    finally:
        await server.close()
    assert not (folder / "c.sock").exists()


async def test_a_second_daemon_does_not_steal_the_socket() -> None:
    folder = Path(tempfile.mkdtemp(prefix="ce-http-"))
    first = HttpServer(unix=folder / "c.sock")
    await first.start()
    try:
        with pytest.raises(OSError, match="another process"):
            await HttpServer(unix=folder / "c.sock").start()
    finally:
        await first.close()
    stale = HttpServer(unix=folder / "c.sock")
    (folder / "c.sock").touch()   # not a socket: left alone, and binding fails clearly
    with pytest.raises(OSError, match="in use"):
        await stale.start()


def test_the_status_port_is_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        HttpServer("0.0.0.0", 8765)
