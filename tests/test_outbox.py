"""The durable outbox: order, acknowledgement, the space policy per class, and crash survival."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cloud_sync.outbox import ALARM_AT, TELEMETRY_KEEP_EVERY, WAL_AUTOCHECKPOINT_PAGES, Outbox, OutboxStats
from edge.core.clock import ManualClock

MB = 1024 * 1024


def make(tmp_path: Path, max_bytes: int = 10 * MB, **kw: object) -> Outbox:
    return Outbox(tmp_path / "outbox.db", max_bytes=max_bytes, clock=ManualClock(1000.0), **kw)  # type: ignore[arg-type]


def test_served_in_order_results_first_and_deleted_only_by_ack(tmp_path: Path) -> None:
    ob = make(tmp_path)
    e1 = ob.put("P/event/card", b'{"id":"e1"}', "event", "e1")
    t1 = ob.put("P/tele/ac-1", b"t1", "telemetry", "t1")
    e2 = ob.put("P/event/card", b'{"id":"e2"}', "event", "e2")
    r1 = ob.put("P/cmd/result", b'{"id":"j1"}', "result", "j1")
    assert e1 is not None
    assert e2 is not None
    assert r1 is not None
    assert t1 is not None
    assert e1 < t1 < e2 < r1
    batch = ob.take(10)
    assert [m.msg_id for m in batch] == ["j1", "e1", "e2", "t1"]
    assert batch[1].payload == b'{"id":"e1"}'
    assert batch[1].topic == "P/event/card"
    assert batch[1].cls == "event"
    assert ob.take(10) == []  # handed out, not acknowledged: not served twice on one connection
    assert ob.ack([e1, r1]) == 2
    assert ob.ack([e1]) == 0  # a second PUBACK for the same message changes nothing
    ob.rewind()  # reconnect: the unacknowledged ones come again, oldest first
    assert [m.msg_id for m in ob.take(10)] == ["e2", "t1"]
    st = ob.stats()
    assert st.pending == {"result": 0, "event": 1, "telemetry": 1}
    assert st.acked == 2
    assert st.put == {"result": 1, "event": 2, "telemetry": 1}
    ob.close()


def test_survives_reopen_and_seq_keeps_growing(tmp_path: Path) -> None:
    ob = make(tmp_path)
    seqs = [ob.put("P/event/door", f"{i}".encode(), "event", f"d{i}") for i in range(5)]
    ob.ack([s for s in seqs[:2] if s is not None])
    ob.close()
    ob = make(tmp_path)
    assert [m.msg_id for m in ob.peek(10)] == ["d2", "d3", "d4"]
    # acks of seqs this process never handed out (the link restarted too) still delete
    assert ob.ack([seqs[2]]) == 1  # type: ignore[list-item]
    new = ob.put("P/event/door", b"5", "event", "d5")
    assert new is not None
    assert new > max(s for s in seqs if s is not None)
    assert ob.stats().pending["event"] == 3
    ob.close()


def test_generated_ids_are_unique(tmp_path: Path) -> None:
    ob = make(tmp_path)
    for _ in range(50):
        ob.put("P/event/x", b"{}", "event")
    ids = [m.msg_id for m in ob.take(100)]
    assert len(ids) == 50
    assert len(set(ids)) == 50
    ob.close()


def test_one_topic_one_class(tmp_path: Path) -> None:
    ob = make(tmp_path)
    ob.put("P/event/card", b"{}", "event", "a")
    with pytest.raises(ValueError, match="one topic, one class"):
        ob.put("P/event/card", b"{}", "telemetry", "b")
    with pytest.raises(ValueError, match="unknown class"):
        ob.put("P/x", b"{}", "bogus", "c")  # type: ignore[arg-type]
    ob.close()


def test_telemetry_gets_a_share_of_each_batch_during_an_event_backlog(tmp_path: Path) -> None:
    ob = make(tmp_path)
    ob.put_many([("P/event/card", b"e", "event", f"e{i}") for i in range(200)])
    ob.put_many([("P/tele/m", b"t", "telemetry", f"t{i}") for i in range(200)])
    batch = ob.take(100)
    tele = [m for m in batch if m.cls == "telemetry"]
    assert len(tele) == 25
    assert len(batch) == 100
    assert [m.msg_id for m in tele] == [f"t{i}" for i in range(25)]
    assert [m.msg_id for m in batch if m.cls == "event"] == [f"e{i}" for i in range(75)]
    ob.close()


def test_telemetry_is_thinned_then_dropped_oldest_first_events_never(tmp_path: Path) -> None:
    alarms: list[tuple[bool, OutboxStats]] = []
    ob = make(tmp_path, max_bytes=40_000, on_alarm=lambda on, st: alarms.append((on, st)))
    payload = b"x" * 300
    for i in range(400):
        ob.put("P/tele/meter", payload, "telemetry", f"t{i:04d}")
    st = ob.stats()
    assert st.telemetry_thinned > 0
    assert st.telemetry_dropped > 0
    assert st.bytes_used <= 40_000
    assert not st.alarm
    assert not alarms
    kept = [m.msg_id for m in ob.peek(1000)]
    assert kept == sorted(kept)  # what is left is still in order
    assert "t0000" not in kept
    assert kept[-1] >= f"t{400 - TELEMETRY_KEEP_EVERY:04d}"
    # thinning keeps every Nth per topic once past the watermark
    assert st.telemetry_thinned >= (400 - 200) * (TELEMETRY_KEEP_EVERY - 1) // TELEMETRY_KEEP_EVERY - 10
    # events push the telemetry out, are never dropped, raise the alarm, and go past max_bytes
    for i in range(200):
        assert ob.put("P/event/card", payload, "event", f"e{i}") is not None
    st = ob.stats()
    assert st.pending["event"] == 200
    assert st.pending["telemetry"] == 0
    assert st.bytes_used > 40_000
    assert st.alarm
    assert ob.alarm
    assert alarms
    assert alarms[0][0] is True
    assert alarms[0][1].bytes_used >= ALARM_AT * 40_000
    assert ob.put("P/tele/meter", payload, "telemetry", "late") is None  # no room for telemetry now
    # draining clears the alarm (hysteresis: below 80 %)
    while batch := ob.take(50):
        ob.ack([m.seq for m in batch])
    assert not ob.alarm
    assert alarms[-1][0] is False
    ob.close()


def test_dropped_inflight_telemetry_can_still_be_acked(tmp_path: Path) -> None:
    ob = make(tmp_path, max_bytes=5_000)
    ob.put_many([("P/tele/m", b"y" * 200, "telemetry", f"t{i}") for i in range(10)])
    inflight = ob.take(100)
    for i in range(40):
        ob.put("P/event/e", b"z" * 200, "event", f"e{i}")
    assert ob.ack([m.seq for m in inflight]) == 0
    assert ob.stats().pending["event"] == 40
    ob.close()


async def test_batches_wake_on_put(tmp_path: Path) -> None:
    ob = make(tmp_path)
    got: list[str] = []

    async def drain() -> None:
        async for batch in ob.batches(limit=10, idle_s=30):
            got.extend(m.msg_id for m in batch)
            await ob.aack([m.seq for m in batch])
            if len(got) >= 3:
                return

    task = asyncio.create_task(drain(), name="drain")
    await asyncio.sleep(0.05)
    for i in range(3):
        ob.put("P/event/x", b"{}", "event", f"x{i}")
        await asyncio.sleep(0.01)
    await asyncio.wait_for(task, 5)
    assert got == ["x0", "x1", "x2"]
    assert ob.stats().pending["event"] == 0
    ob.close()


CHILD = r"""
import sys
from cloud_sync.outbox import Outbox
ob = Outbox(sys.argv[1], max_bytes=50 * 1024 * 1024)
out = sys.stdout
i = 0
while True:
    cls = "telemetry" if i % 3 == 2 else "event"
    topic = f"P/{cls}/{i % 2}"
    seq = ob.put(topic, b'{"n": %d}' % i + b" " * (i % 200), cls, f"m{i}")
    out.write(f"P {seq} m{i}\n")
    if i % 50 == 49:
        batch = ob.take(20)
        out.write("T " + " ".join(str(m.seq) for m in batch) + "\n")
        out.flush()
        ob.ack([m.seq for m in batch])
        out.write("A\n")
    out.flush()
    i += 1
"""


@pytest.mark.parametrize("kill_after_s", [0.15, 0.4, 0.8])
def test_sigkill_loses_nothing_that_put_returned(tmp_path: Path, kill_after_s: float) -> None:
    db = tmp_path / "outbox.db"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.stdout is not None
    lines: list[str] = []
    start = time.monotonic()
    while time.monotonic() - start < kill_after_s + 1.0:  # interpreter start-up excluded
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if len(lines) == 1:
            start = time.monotonic()
        elif time.monotonic() - start >= kill_after_s:
            break
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read()
    proc.stdout.close()
    proc.wait()
    lines += rest.splitlines(keepends=True)
    complete = [ln.split() for ln in lines if ln.endswith("\n")]
    put = {int(p[1]): p[2] for p in complete if p[0] == "P"}
    acked: set[int] = set()
    maybe: set[int] = set()
    for p in complete:
        if p[0] == "T":
            maybe = {int(s) for s in p[1:]}
        elif p[0] == "A":
            acked |= maybe
            maybe = set()
    assert len(put) > 100, "the child wrote too little to mean anything"

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    ob = Outbox(db, max_bytes=50 * MB)
    stored = ob.peek(10**6)
    ids = [m.msg_id for m in stored]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for cls in ("event", "telemetry"):
        seqs = [m.seq for m in stored if m.cls == cls]
        assert seqs == sorted(seqs)
        nums = [int(m.msg_id[1:]) for m in stored if m.cls == cls]
        assert nums == sorted(nums), "out of order"
    by_seq = {m.seq: m.msg_id for m in stored}
    for seq, mid in put.items():
        if seq in acked:
            assert seq not in by_seq
        elif seq not in maybe:  # an ack in progress at the kill may or may not have committed
            assert by_seq.get(seq) == mid, f"message {mid} (seq {seq}) lost"
    ob.close()


async def test_checkpoints_run_in_worker_threads_and_the_automatic_one_is_only_a_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a checkpoint fsyncs: on an SD card that must stall a worker thread, never the event loop
    monkeypatch.setattr("cloud_sync.outbox.CHECKPOINT_AT_BYTES", 64 * 1024)
    ob = make(tmp_path)
    try:
        assert ob._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_AUTOCHECKPOINT_PAGES
        on_loop: list[bool] = []
        real_put, real_checkpoint = ob.put_many, ob.checkpoint

        def put_spy(items: object) -> list[int | None]:
            on_loop.append(threading.current_thread() is threading.main_thread())
            return real_put(items)  # type: ignore[arg-type]

        def checkpoint_spy() -> None:
            on_loop.append(threading.current_thread() is threading.main_thread())
            real_checkpoint()

        monkeypatch.setattr(ob, "put_many", put_spy)
        monkeypatch.setattr(ob, "checkpoint", checkpoint_spy)
        for i in range(30):
            seqs = await ob.aput_many([("p/event/card", b"x" * 1000, "event", f"e{i}-{j}") for j in range(10)])
            assert None not in seqs
        assert 2 <= ob.checkpoints <= 10  # ~300 KiB of WAL, a checkpoint per 64 KiB (not one per put)
        assert (tmp_path / "outbox.db-wal").stat().st_size < 64 * 1024 + 32 * 1024
        assert not any(on_loop)
        await ob.aack([m.seq for m in await ob.next_batch(300)])
        assert not any(ob.stats().pending.values())
    finally:
        ob.close()
    with make(tmp_path) as again:
        assert not any(again.stats().pending.values())
