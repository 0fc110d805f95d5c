"""The outbox at its cap: disk use per 10,000 events, and what gives way first.

An outbox of `--max-mb` is filled with telemetry and then with events (a `fault` event as the
daemon writes it, ~250 bytes of JSON), past the cap. Reported: the file size (database + WAL)
per 10,000 stored events, the accounting the cap is enforced on, how much telemetry was thinned
and dropped to make room, and that no event was refused (`full` turns on instead: new commands
are answered storage_full from then on).

    .venv/bin/python bench/outbox_cap.py [--max-mb 8] [--events 60000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import document, emit

from cloud_sync.outbox import Outbox

EVENT = {"kind": "fault", "device": "ac-301a", "code": "offline", "message": "timeout",
         "ts": "2026-06-16T10:00:00.000+08:00"}


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def run(max_mb: float, events: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ce-obcap-"))
    path = tmp / "outbox.db"
    ob = Outbox(path, max_bytes=int(max_mb * 1024 * 1024), min_free_bytes=0)
    t0 = time.monotonic()
    for i in range(0, 20_000, 500):   # telemetry first: a long outage's backlog
        ob.put_many([(f"P/telemetry/ac-{j % 80}", b"ac,device=ac-1 room_temp_c=27.5,on=1i 1700000000" * 2,
                      "telemetry", None) for j in range(i, i + 500)])
    marks: list[dict[str, Any]] = []
    stored = refused = 0
    full_at = None
    for _ in range(0, events, 500):
        batch = [("P/event/fault", json.dumps({**EVENT, "id": uuid.uuid4().hex}).encode(), "event", None)
                 for _ in range(500)]
        try:
            ob.put_many(batch)
            stored += len(batch)
        except OSError:
            refused += len(batch)
        if full_at is None and ob.full:
            full_at = stored
        if stored % 10_000 == 0:
            st = ob.stats()
            marks.append({"events": stored, "file_bytes": file_bytes(path), "accounted_bytes": st.bytes_used,
                          "telemetry_pending": st.pending["telemetry"], "full": ob.full})
    ob.checkpoint()
    st = ob.stats()
    per_10k = [round(m["file_bytes"] / (m["events"] / 10_000)) for m in marks if m["events"]]
    out = {"max_bytes": ob.max_bytes, "events_offered": events, "events_stored": stored, "events_refused": refused,
           "full_from_event": full_at, "telemetry_thinned": st.telemetry_thinned,
           "telemetry_dropped": st.telemetry_dropped, "telemetry_left": st.pending["telemetry"],
           "file_bytes_after_checkpoint": file_bytes(path), "accounted_bytes": st.bytes_used,
           "file_bytes_per_10k_events_at_end": round(file_bytes(path) / (stored / 10_000)),
           "file_bytes_per_10k_events_by_step": per_10k, "steps": marks, "seconds": round(time.monotonic() - t0, 2)}
    ob.close()
    for p in tmp.iterdir():
        os.unlink(p)
    os.rmdir(tmp)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-mb", type=float, default=8.0)
    ap.add_argument("--events", type=int, default=60_000)
    args = ap.parse_args()
    started = time.time()
    emit("outbox_cap", document("outbox_cap", started, **run(args.max_mb, args.events)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
