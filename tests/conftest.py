"""Shared fixtures: every test fails if it leaks an asyncio task, a thread or a child process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from simulator.local import free_port

__all__ = ["fill_filesystem", "free_port", "until"]


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


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path | None]:
    """A 1 MiB filesystem of its own (tmpfs), or None where this machine does not let a test mount one."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_filesystem(path: Path) -> Path:
    """Fill the filesystem of `path` to the last byte; returns the filler to delete."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler
