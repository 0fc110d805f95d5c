"""`campus-edge demo`: the virtual school, the daemon and a live status view; Ctrl-C stops it all.

Each part is its own process (as in production), started in its own session and stopped by its
handle, so nothing outlives the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge.config import Config, load_config
from edge.http import get_json
from edge.view import render_status

READY_TIMEOUT_S = 30.0


def example_config() -> Path:
    """The example school shipped with the package (source tree or installed data files)."""
    for cand in (Path(__file__).resolve().parents[1] / "config" / "example-school.yaml",
                 Path(sys.prefix) / "share" / "campus-edge" / "example-school.yaml"):
        if cand.is_file():
            return cand
    raise FileNotFoundError("example-school.yaml not found")


class Child:
    """A child process in its own session; stopped by handle (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._fh = log.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=self._fh, text=True,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("READY"):
                return line.strip()
        raise RuntimeError(f"{self.name} did not start; see {self.log}:\n{self.tail()}")

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(encoding="utf-8").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._fh.close()


def run_demo(config: str | None, speed: float | None = None, duration_s: float | None = None) -> int:
    cfg_path = Path(config) if config else example_config()
    workdir = Path(tempfile.mkdtemp(prefix="campus-edge-demo-"))
    env = {**os.environ, "CAMPUS_EDGE_RUN_DIR": str(workdir / "run"), "CAMPUS_EDGE_STATE_DIR": str(workdir / "state")}
    (workdir / "run").mkdir()
    os.environ.update({k: env[k] for k in ("CAMPUS_EDGE_RUN_DIR", "CAMPUS_EDGE_STATE_DIR")})
    cfg = load_config(cfg_path)
    exe = [sys.executable, "-m", "edge.cli"]
    sim_args = ["simulate", "--config", str(cfg_path)] + (["--speed", str(speed)] if speed else [])
    children: list[Child] = []
    try:
        sim = Child("simulator", [*exe, *sim_args], env, workdir / "simulator.log")
        children.append(sim)
        sim.wait_ready()
        daemon = Child("daemon", [*exe, "run", "--config", str(cfg_path), "--status-port", "0"], env,
                       workdir / "daemon.log")
        children.append(daemon)
        port = int(daemon.wait_ready().rsplit(":", 1)[1])
        print(f"demo running: logs in {workdir}; status API on 127.0.0.1:{port}; Ctrl-C stops", flush=True)
        _view(cfg, port, duration_s)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for c in reversed(children):
            c.stop()
        print("\ndemo stopped", flush=True)
        if not os.environ.get("CAMPUS_EDGE_KEEP_DEMO"):
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _view(cfg: Config, port: int, duration_s: float | None) -> None:
    start = time.monotonic()
    clear = sys.stdout.isatty()
    while duration_s is None or time.monotonic() - start < duration_s:
        try:
            _code, body = asyncio.run(get_json("127.0.0.1", port, "/status"))
            page = render_status(body, cfg)
        except OSError as exc:
            page = f"daemon not answering: {exc}"
        if clear:
            sys.stdout.write("\x1b[H\x1b[2J")
        print(page, flush=True)
        time.sleep(2.0)
