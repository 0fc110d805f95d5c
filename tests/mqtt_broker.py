"""A private mosquitto on a free 127.0.0.1 port, for tests and benchmarks (never the system's :1883).

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
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Kill the broker (SIGKILL by default: no goodbye to anyone) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# -- helpers shared by the cloud tests and benchmarks -------------------------------------------------
def small_school(run_dir: Path, *, modbus_port: int, broker_port: int | None, pub_key: Path | None,
                 storage: Path | None = None, status_port: int = 0) -> dict[str, object]:
    """A few ACs on a TCP bus, a meter, a relay board on an RTU pty with a light and a door, three rooms."""
    cfg: dict[str, object] = {
        "site": {"school_id": "014601", "gateway_id": "gw-t", "timezone": "Asia/Taipei"},
        "storage": {"path": str(storage or run_dir / "state")},
        "status_port": status_port,
        "buses": [{"id": "ac-bus", "type": "tcp", "host": "127.0.0.1", "port": modbus_port, "timeout_s": 0.5},
                  {"id": "rs485-1", "type": "rtu", "device": str(run_dir / "rs485-1"), "baudrate": 9600,
                   "timeout_s": 0.5}],
        "rooms": [{"id": "301", "floor": 3}, {"id": "302", "floor": 3}, {"id": "101", "floor": 1}],
        "devices": [
            {"id": "ac-301a", "kind": "ac", "profile": "coolmasternet", "bus": "ac-bus", "unit": 1, "index": 1,
             "room": "301", "poll_s": 0.5},
            {"id": "ac-301b", "kind": "ac", "profile": "coolmasternet", "bus": "ac-bus", "unit": 1, "index": 2,
             "room": "301", "poll_s": 0.5},
            {"id": "ac-302a", "kind": "ac", "profile": "coolmasternet", "bus": "ac-bus", "unit": 1, "index": 3,
             "room": "302", "poll_s": 0.5},
            {"id": "meter-main", "kind": "meter", "profile": "eastron-sdm630", "bus": "ac-bus", "unit": 2},
            {"id": "relay-1", "kind": "relay", "profile": "waveshare-relay-8ch", "bus": "rs485-1", "unit": 1,
             "poll_s": 0.5},
            {"id": "light-301", "kind": "light", "relay": "relay-1", "channel": 0, "room": "301"},
            {"id": "door-101", "kind": "door", "relay": "relay-1", "channel": 1, "room": "101"},
        ],
    }
    if broker_port is not None:
        cfg["cloud"] = {"mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}", "keepalive_s": 5},
                        "command_keys": [str(pub_key)] if pub_key else []}
    return cfg
