"""systemd as a supervisor: READY, STATUS, STOPPING and a watchdog fed only while the loops turn.

A datagram socket in the test stands in for systemd's NOTIFY_SOCKET.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import free_port, until
from test_daemon import school_config

from edge.daemon import Daemon
from simulator.app import VirtualSchool


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    folder = tempfile.mkdtemp(prefix="ce-sd-")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


async def _messages(sock: socket.socket, until_line: str, within: float) -> list[str]:
    """Lines received until one starts with `until_line` (TimeoutError after `within` seconds)."""
    loop = asyncio.get_running_loop()
    got: list[str] = []
    async with asyncio.timeout(within):
        while not any(line.startswith(until_line) for line in got):
            data = await loop.sock_recv(sock, 4096)
            got += data.decode().split("\n")
    return got


async def test_run_tells_systemd_ready_watchdog_and_stopping(tmp_path: Path,
                                                             notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    cfg = school_config(tmp_path, free_port())
    cfg_path = tmp_path / "site.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)), encoding="utf-8")
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"}
    env.pop("WATCHDOG_PID", None)
    async with VirtualSchool(cfg):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "run", "--config", str(cfg_path),
            "--status-port", "0", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            first = await _messages(sock, "READY=1", 30)
            assert any(line.startswith("STATUS=") and "devices online" in line for line in first)
            # three watchdog periods: fed every WatchdogSec/3 while every loop turns
            fed = 0
            while fed < 3:
                lines = await _messages(sock, "WATCHDOG=1", 5)
                fed += lines.count("WATCHDOG=1")
            proc.send_signal(signal.SIGTERM)
            await _messages(sock, "STOPPING=1", 10)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            assert proc.stderr is not None
            await proc.stderr.read()


async def test_a_hung_loop_is_not_fed(tmp_path: Path, notify_socket: tuple[socket.socket, str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "600000")   # 0.6 s: fed every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg = school_config(tmp_path, free_port())
    async with VirtualSchool(cfg), Daemon(cfg, status_port=0) as daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        assert daemon.liveness(10) == []
        await _messages(sock, "WATCHDOG=1", 5)
        arbiter = next(t for t in daemon._bg if t.get_name() == "arbiter")
        arbiter.cancel()   # the arbiter's loop stops turning, as a hung one would
        await asyncio.sleep(0.05)
        daemon.arbiter.last_turn -= 1000
        assert daemon.liveness(10) == [f"arbiter: no turn for {time.monotonic() - daemon.arbiter.last_turn:.0f} s"]
        await _messages(sock, "STATUS=stuck: arbiter: no turn for", 3)
        # once stuck, no more WATCHDOG=1: systemd restarts the service after WatchdogSec
        with pytest.raises(TimeoutError):
            await _messages(sock, "WATCHDOG=1", 1.0)
