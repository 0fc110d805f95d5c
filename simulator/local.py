"""Local stand-ins around the virtual school: free loopback ports and a private MQTT broker.

Used by `campus-edge demo` (the broker stands in for the city's cloud), the tests and the benchmarks;
never the system's :1883, never an address but 127.0.0.1.

    with Broker.start(tmp_dir) as broker:
        broker.port; broker.stop(); broker.restart()

As root, mosquitto drops to user `mosquitto` unless told `user root` (DOMAIN.md section 9); we say so,
and keep no persistence (a killed broker forgets retained messages, as a cloud broker might).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0  # each of: the given signal, then SIGKILL


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """One mosquitto process; `stop`/`restart` keep the port (fault injection)."""

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                 "max_queued_messages 100000", "set_tcp_nodelay true",  # no Nagle delay on small publishes
                 "log_dest stderr", "log_type error", "log_type warning"]
        if os.geteuid() == 0:
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n" + extra_conf)
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, workdir: Path, port: int | None = None, extra_conf: str = "") -> Broker:
        b = cls(workdir, port, extra_conf)
        b.restart()
        return b

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> None:
        if self.running:
            return
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=logf, stderr=logf,
                                         start_new_session=True)
        try:
            self._wait_listening(self.proc)
        except BaseException:  # a failed start, or Ctrl-C meanwhile: no broker left behind
            self.stop()
            raise

    def _wait_listening(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Kill the broker (SIGKILL by default: no goodbye to anyone) and reap it.

        Raises subprocess.TimeoutExpired only if it outlives SIGKILL (stuck in the kernel).
        """
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        self.proc = None

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
