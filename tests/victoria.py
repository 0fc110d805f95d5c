"""A real VictoriaMetrics for tests and benches: own port on 127.0.0.1, own data directory, stopped by handle."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

CANDIDATES = ("victoria-metrics", "victoria-metrics-prod", "/usr/bin/victoria-metrics")


def binary() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Victoria:
    """`vm = Victoria(data_dir, port); vm.start(); ...; vm.stop()` (restartable on the same port and data)."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> Victoria:
        exe = binary()
        if exe is None:
            raise RuntimeError("victoria-metrics is not installed (Debian package victoria-metrics)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = (self.data_dir.parent / f"vm-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [exe, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.data_dir}",
             "-search.latencyOffset=0s", "-retentionPeriod=1d", "-loggerLevel=ERROR"],
            stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"victoria-metrics did not answer on {self.url} within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is None:
            if self._log is not None:
                self._log.close()
                self._log = None
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def force_flush(self) -> None:
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=5):
            pass

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every series matching `match` (a series selector), freshly flushed: [{"metric", "values", "timestamps"}]."""
        self.force_flush()
        q = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{q}", timeout=5) as r:
            return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]

    def series(self, match: str) -> dict[str, dict[str, Any]]:
        """`export` keyed by metric name (for selectors that match one series per name)."""
        return {s["metric"]["__name__"]: s for s in self.export(match)}
