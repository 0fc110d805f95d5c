"""Shared fixtures: every test fails if it leaks an asyncio task, a thread or a child process."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from simulator.local import free_port

__all__ = ["free_port", "until"]


def _children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[1] == me and fields[0] != "Z":
            out.add(int(d.name))
    return out


@pytest.fixture(autouse=True)
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private $RUNTIME_DIRECTORY (the control socket's home), short enough for AF_UNIX's 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ce-run-"))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_leaked_threads_or_processes() -> Iterator[None]:
    threads = set(threading.enumerate())
    procs = _children()
    yield
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        extra_t = [t for t in threading.enumerate() if t not in threads and t.is_alive()
                   and not t.name.startswith(("asyncio_", "ThreadPoolExecutor"))]
        extra_p = _children() - procs
        if not extra_t and not extra_p:
            return
        time.sleep(0.05)
    pytest.fail(f"leaked threads {[t.name for t in extra_t]} or child processes {sorted(extra_p)}")


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    for _ in range(50):
        extra = [t for t in asyncio.all_tasks() if t not in before and t is not asyncio.current_task() and not t.done()]
        if not extra:
            return
        await asyncio.sleep(0.02)
    names = sorted(t.get_name() for t in extra)
    for t in extra:
        t.cancel()
    pytest.fail(f"leaked asyncio tasks: {names}")


async def until(pred: Callable[[], object], within: float = 10.0, what: str = "condition") -> None:
    """Poll `pred` (a condition with no event to wait on) until true; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)
