"""The outbox's drain against a link that fails or blocks some publishes, step by step (no timing).

Nothing is deleted before its publish is acknowledged; a failed publish is served again after
the reconnect's rewind. (Acknowledging a batch before publishing it, or acknowledging failed
publishes, must fail here every time, not once in six runs.)
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cloud_sync.outbox import Outbox
from cloud_sync.service import CloudService


class Link:
    """Publishes that the test completes, fails or holds, one by one."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gates: dict[str, asyncio.Future[None]] = {}
        self.fail: set[str] = set()
        self.hold: set[str] = set()

    async def publish(self, topic: str, payload: bytes, category: str, **_: Any) -> None:
        self.calls.append(payload.decode())
        if payload.decode() in self.fail:
            raise aiomqtt.MqttError("the broker went away")
        if payload.decode() in self.hold:
            fut = self.gates[payload.decode()] = asyncio.get_running_loop().create_future()
            await fut


class Journal:
    def __init__(self) -> None:
        self.delivered_ids: list[str] = []

    def delivered(self, jti: str) -> bool:
        self.delivered_ids.append(jti)
        return True


def drainer(outbox: Outbox, link: Link, window: int = 3) -> CloudService:
    svc = CloudService.__new__(CloudService)   # only what _drain uses
    svc.outbox, svc.link, svc.window, svc.results_out = outbox, link, window, 0  # type: ignore[assignment]
    svc.journal = Journal()  # type: ignore[assignment]
    return svc


def stored(outbox: Outbox) -> list[str]:
    return [m.payload.decode() for m in outbox.peek(1000)]


async def _settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)   # worker-thread acks


@pytest.fixture
def outbox(tmp_path: Path) -> Any:
    ob = Outbox(tmp_path / "outbox.db", max_bytes=10 * 1024 * 1024, min_free_bytes=0)
    yield ob
    ob.close()


async def test_a_failed_publish_is_kept_and_served_again(outbox: Outbox) -> None:
    for i in range(5):
        outbox.put("P/event/fault", f"e{i}".encode(), "event")
    link = Link()
    link.fail = {"e1"}
    with pytest.raises(aiomqtt.MqttError):
        await drainer(outbox, link)._drain()
    # e0 and e2 were acknowledged by the broker; e1 failed: it stays, and so does what was not sent yet
    assert stored(outbox) == ["e1", "e3", "e4"]
    outbox.rewind()   # a reconnect
    link.fail = set()
    task = asyncio.create_task(drainer(outbox, link)._drain())
    await _settle()
    assert stored(outbox) == []
    assert link.calls.count("e1") == 2
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_nothing_is_deleted_before_its_puback(outbox: Outbox) -> None:
    for i in range(3):
        outbox.put("P/cmd/result", f"r{i}".encode(), "result", msg_id=f"jti-{i}")
    link = Link()
    link.hold = {"r0", "r1", "r2"}
    svc = drainer(outbox, link)
    task = asyncio.create_task(svc._drain())
    await _settle()
    assert sorted(link.calls) == ["r0", "r1", "r2"]        # the window is out
    assert stored(outbox) == ["r0", "r1", "r2"]             # ... and all still stored
    assert svc.journal.delivered_ids == []                  # type: ignore[attr-defined]
    link.gates["r1"].set_result(None)
    await _settle()
    assert stored(outbox) == ["r0", "r1", "r2"]             # the batch is acknowledged together
    link.gates["r0"].set_result(None)
    link.gates["r2"].set_exception(aiomqtt.MqttError("gone"))
    await _settle()
    assert task.done()
    with pytest.raises(aiomqtt.MqttError):
        task.result()
    assert stored(outbox) == ["r2"]
    assert svc.journal.delivered_ids == ["jti-0", "jti-1"]  # type: ignore[attr-defined]
