"""Outbox benchmark: sustained put rate, backlog drain rate, and bytes written to storage per event.

Prints one JSON object. Bytes are read from /proc/self/io: `wchar` is what SQLite handed to
write(2) (WAL frames and checkpoints), `write_bytes` what the kernel sent (or will send) to the
device after the page cache merged repeated writes to one page. Run it on the storage you care
about (`--dir /var/lib/campus-edge` on the Pi's SD card); the default is a temporary directory.

    .venv/bin/python bench/outbox_bench.py [--dir DIR] [--backlog 100000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud_sync.outbox import Outbox

GB = 1024**3


def io_counters() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    return out


def event(i: int) -> bytes:
    """A card event of realistic size (~190 bytes)."""
    return json.dumps({"id": f"gw-a-{i:012d}", "ts": "2026-06-16T07:31:02.125+08:00", "kind": "card",
                       "reader": "gate-1", "card": str(13961168 + i), "purpose": "gate", "person": "S1001",
                       "decision": None}, separators=(",", ":")).encode()


def measure(fn: Callable[[], int]) -> dict[str, Any]:
    before, t0 = io_counters(), time.perf_counter()
    n = fn()
    dt, after = time.perf_counter() - t0, io_counters()
    return {"events": n, "seconds": round(dt, 3), "events_per_s": round(n / dt),
            "wchar_per_event": round((after["wchar"] - before["wchar"]) / n),
            "write_bytes_per_event": round((after["write_bytes"] - before["write_bytes"]) / n)}


def fresh(root: Path, name: str, **kw: Any) -> Outbox:
    d = root / name
    shutil.rmtree(d, ignore_errors=True)
    return Outbox(d / "outbox.db", max_bytes=4 * GB, min_free_bytes=0, **kw)


def put_each(root: Path, n: int, sync: Literal["NORMAL", "FULL"], page: int) -> dict[str, Any]:
    """One transaction per event (what the daemon does for live events), then close (final checkpoint)."""
    ob = fresh(root, f"each-{sync}-{page}", synchronous=sync, page_size=page)

    def run() -> int:
        for i in range(n):
            ob.put("campus/v1/014601/gw-a/event/card", event(i), "event", f"gw-a-{i:012d}")
        ob.close()
        return n

    return {"case": "put_each", "synchronous": sync, "page_size": page, **measure(run)}


def put_batched(root: Path, n: int, batch: int, sync: Literal["NORMAL", "FULL"], page: int) -> dict[str, Any]:
    ob = fresh(root, f"batch-{sync}-{page}", synchronous=sync, page_size=page)

    def run() -> int:
        for start in range(0, n, batch):
            ob.put_many([("campus/v1/014601/gw-a/event/card", event(i), "event", f"gw-a-{i:012d}")
                         for i in range(start, min(n, start + batch))])
        ob.close()
        return n

    return {"case": "put_many", "batch": batch, "synchronous": sync, "page_size": page, **measure(run)}


def lifecycle(root: Path, n: int, ack_batch: int, page: int) -> dict[str, Any]:
    """Steady state online: each event put on its own, acknowledged in batches (PUBACKs), deleted."""
    ob = fresh(root, f"life-{page}", page_size=page)

    def run() -> int:
        for i in range(n):
            ob.put("campus/v1/014601/gw-a/event/card", event(i), "event", f"gw-a-{i:012d}")
            if i % ack_batch == ack_batch - 1:
                ob.ack([m.seq for m in ob.take(ack_batch)])
        ob.close()
        return n

    return {"case": "put_then_ack", "ack_batch": ack_batch, "page_size": page, **measure(run)}


def drain(root: Path, backlog: int, batch: int, page: int) -> dict[str, Any]:
    ob = fresh(root, f"drain-{page}", page_size=page)
    for start in range(0, backlog, 1000):
        ob.put_many([("campus/v1/014601/gw-a/event/card", event(i), "event", f"gw-a-{i:012d}")
                     for i in range(start, min(backlog, start + 1000))])
    ob.close()
    ob = Outbox(root / f"drain-{page}" / "outbox.db", max_bytes=4 * GB, min_free_bytes=0, page_size=page)
    file_mb = round((root / f"drain-{page}" / "outbox.db").stat().st_size / 2**20, 1)

    def run() -> int:
        seen = 0
        while msgs := ob.take(batch):
            ob.ack([m.seq for m in msgs])
            seen += len(msgs)
        ob.close()
        return seen

    res = measure(run)
    assert res["events"] == backlog, res
    return {"case": "drain_backlog", "backlog": backlog, "batch": batch, "page_size": page, "db_file_mb": file_mb,
            **res}


def machine(root: Path) -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith(("model name", "Model"))), platform.processor())
    fs = subprocess.run(["df", "-T", str(root)], capture_output=True, text=True, check=False).stdout.splitlines()
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu, "cpus": os.cpu_count(),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "filesystem": fs[-1].split()[1] if len(fs) > 1 else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="where to put the databases (default: a temporary directory)")
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    args = ap.parse_args()
    n = 2_000 if args.quick else 20_000
    n_full = 300 if args.quick else 2_000
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        results = [
            put_each(root, n, "NORMAL", 1024),
            put_each(root, n, "NORMAL", 4096),
            put_each(root, n_full, "FULL", 1024),
            put_batched(root, n, 100, "NORMAL", 1024),
            lifecycle(root, n, 100, 1024),
            lifecycle(root, n, 100, 4096),
            drain(root, args.backlog, 500, 1024),
            drain(root, args.backlog, 500, 4096),
        ]
        info = machine(root)
    print(json.dumps({"bench": "outbox", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                      "machine": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
