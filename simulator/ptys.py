"""A socat pty pair standing in for an RS-485 adapter: the daemon opens `device`, the simulator `device.sim`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

SIM_SUFFIX = ".sim"
APPEAR_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 3.0
KILL_TIMEOUT_S = 2.0


class PtyError(RuntimeError):
    """The pty pair could not be created."""


def sim_end(device: str) -> str:
    """The simulator's end of the pair for the daemon's `device`."""
    return device + SIM_SUFFIX


def _both_exist(a: Path, b: Path) -> bool:
    return a.exists() and b.exists()


def _remove_links(*paths: str) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            if os.path.islink(p):
                os.unlink(p)


def _clear_stale(path: Path) -> None:
    if path.is_symlink():
        path.unlink()  # left behind by a killed socat
    elif path.exists():
        raise PtyError(f"{path} exists and is not a pty link: refusing to replace a real device")


class PtyPair:
    """Runs `socat pty,raw,echo=0,link=DEV pty,raw,echo=0,link=DEV.sim` for the lifetime of the context."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.sim_device = sim_end(device)
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> PtyPair:
        socat = shutil.which("socat")
        if socat is None:
            raise PtyError("socat is not installed (Debian package `socat`); it provides the RTU ptys")
        dev, sim = Path(self.device), Path(self.sim_device)
        dev.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale(dev)
        _clear_stale(sim)
        # setpriv --pdeathsig: socat ends with us even if we are SIGKILLed (no orphaned ptys)
        setpriv = shutil.which("setpriv")
        guard = [setpriv, "--pdeathsig", "TERM"] if setpriv else []
        self.proc = await asyncio.create_subprocess_exec(
            *guard, socat, f"pty,raw,echo=0,link={dev}", f"pty,raw,echo=0,link={sim}",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + APPEAR_TIMEOUT_S
        while not _both_exist(dev, sim):
            if self.proc.returncode is not None or loop.time() > deadline:
                err = b""
                if self.proc.stderr is not None and self.proc.returncode is not None:
                    err = await self.proc.stderr.read()
                await self._stop()
                raise PtyError(f"socat did not create {dev} and {sim}: {err.decode(errors='replace').strip()}")
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    async def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # a group-wide SIGTERM may have beaten us to it
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(TimeoutError):  # only a process stuck in the kernel outlives SIGKILL
                    await asyncio.wait_for(proc.wait(), KILL_TIMEOUT_S)
        if proc.stderr is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.stderr.read(), KILL_TIMEOUT_S)
        _remove_links(self.device, self.sim_device)
