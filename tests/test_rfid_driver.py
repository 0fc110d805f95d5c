"""The RFID driver with real parts: socat ptys carrying the constructed streams, socket:// readers whose
peer goes away and comes back, the repeat window, the `on_tap` hook, and the driver inside the real daemon.

Nothing here asserts a duration: conditions are polled with `conftest.until`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import free_port, until

from drivers.rfid import driver as driver_module
from drivers.rfid.driver import RfidDriver
from drivers.rfid.framing import Framing, rdm6300_frame
from drivers.rfid.taps import Tap
from edge.core.arbiter import Source
from edge.core.clock import SystemClock
from edge.core.config import Config, RfidReader
from edge.core.control import Ask
from edge.core.driver import ApplyError
from edge.core.model import DeviceState, Kind, ReaderState
from edge.daemon import DEFAULT_DRIVERS, Daemon, rfid_driver
from simulator.ptys import PtyPair

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "rfid"
EXPECTED: dict[str, dict[str, Any]] = json.loads((FIXTURES / "expected.json").read_text())
CARD = 13961168


class Sink:
    """A DriverSink that writes everything down."""

    def __init__(self) -> None:
        self.states: list[tuple[str, bool | None, bool]] = []
        self.health: list[tuple[str, bool, str | None]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    def on_state(self, device_id: str, state: DeviceState, online: bool, ts: float) -> None:
        assert isinstance(state, ReaderState)
        self.states.append((device_id, state.port_open, online))

    def on_health(self, device_id: str, online: bool, reason: str | None) -> None:
        self.health.append((device_id, online, reason))

    def on_event(self, kind: str, body: Mapping[str, Any]) -> None:
        self.events.append((kind, dict(body)))

    def cards(self, reader: str) -> list[str]:
        return [b["card"] for k, b in self.events if k == "card" and b["reader"] == reader]

    def port_open(self, reader: str) -> bool | None:
        got = [p for d, p, _ in self.states if d == reader]
        return got[-1] if got else None


def reader(rid: str, port: str, framing: Framing = "rdm6300", purpose: str = "gate",
           door: str | None = None) -> RfidReader:
    return RfidReader.model_validate({"id": rid, "kind": "rfid", "port": port, "framing": framing,
                                      "purpose": purpose, "door": door})


def per_reader(drv: RfidDriver, rid: str) -> dict[str, Any]:
    readers: dict[str, dict[str, Any]] = drv.stats()["readers"]
    return readers[rid]


@contextlib.contextmanager
def sim_end(pty: PtyPair) -> Iterator[int]:
    """The reader's side of a pty pair, held open (socat ends the pair when this side hangs up)."""
    fd = os.open(pty.sim_device, os.O_RDWR | os.O_NOCTTY)
    try:
        yield fd
    finally:
        os.close(fd)


class Peer:
    """A reader behind a serial-to-TCP box: an asyncio server that can go away and come back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"socket://127.0.0.1:{self.port}"
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.writers.append(w)

        self.server = await asyncio.start_server(accept, "127.0.0.1", self.port)

    def send(self, data: bytes) -> None:
        self.writers[-1].write(data)

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()
        self.writers.clear()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


@contextlib.asynccontextmanager
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


# -- streams over ptys ------------------------------------------------------------------------------
async def test_constructed_streams_over_ptys_become_taps(tmp_path: Path) -> None:
    sink = Sink()
    async with contextlib.AsyncExitStack() as stack:
        ptys = {name: await stack.enter_async_context(PtyPair(str(tmp_path / f"tty{i}")))
                for i, name in enumerate(sorted(EXPECTED))}
        readers = [reader(f"r{i}", ptys[name].device, EXPECTED[name]["framing"])
                   for i, name in enumerate(sorted(EXPECTED))]
        drv = await stack.enter_async_context(RfidDriver(readers, sink))
        await until(lambda: all(sink.port_open(r.id) for r in readers), what="every pty open")
        for name in sorted(EXPECTED):
            fd = stack.enter_context(sim_end(ptys[name]))
            os.write(fd, (FIXTURES / name).read_bytes())
        for i, name in enumerate(sorted(EXPECTED)):
            exp, rid = EXPECTED[name], f"r{i}"
            await until(lambda rid=rid, exp=exp: per_reader(drv, rid)["frames"] == len(exp["cards"]),  # type: ignore[misc]
                        what=f"the frames of {name}")
            st = per_reader(drv, rid)
            assert sink.cards(rid) == exp["taps_when_sent_at_once"], name
            assert st["drops"] == exp["drops"], name
            assert (st["taps"], st["repeats"]) == (len(exp["taps_when_sent_at_once"]),
                                                   len(exp["cards"]) - len(exp["taps_when_sent_at_once"]))
        total = drv.stats()
        assert total["frames"] == sum(len(e["cards"]) for e in EXPECTED.values())
        assert total["drops"]["half_frame"] == sum(e["drops"].get("half_frame", 0) for e in EXPECTED.values())
    assert all(kind == "card" for kind, _ in sink.events)


async def test_a_vanished_pty_takes_the_reader_offline_and_it_is_reopened(tmp_path: Path) -> None:
    sink = Sink()
    dev = str(tmp_path / "tty")
    async with PtyPair(dev) as pty, RfidDriver([reader("gate-1", dev)], sink) as drv:
        await until(lambda: sink.port_open("gate-1") is True, what="the pty open")
        with sim_end(pty) as fd:
            os.write(fd, rdm6300_frame(1) + rdm6300_frame(2)[:5])   # and half a frame as the cable goes
            await until(lambda: sink.cards("gate-1") == ["1"], what="the first tap")
        await pty.__aexit__(None, None, None)                     # unplugged: socat gone, the path too
        await until(lambda: sink.port_open("gate-1") is False, what="the reader offline")
        assert sink.health[-1][:2] == ("gate-1", False)
        assert per_reader(drv, "gate-1")["port_open"] is False
        await until(lambda: per_reader(drv, "gate-1")["open_failures"] >= 1, what="a failed reopen")
        async with PtyPair(dev) as again:                          # plugged in again
            await until(lambda: sink.port_open("gate-1") is True, what="the reader reopened")
            with sim_end(again) as fd:
                os.write(fd, rdm6300_frame(CARD))
                await until(lambda: sink.cards("gate-1") == ["1", str(CARD)], what="a tap after the reopen")
            assert [(d, online) for d, online, _ in sink.health] == [("gate-1", True), ("gate-1", False),
                                                                     ("gate-1", True)]
        st = per_reader(drv, "gate-1")
        assert (st["opens"], st["reopens"]) == (2, 1)
        assert st["drops"].get("half_frame") == 1                  # the half frame dropped with the port


async def test_a_path_that_comes_to_name_another_device_is_reopened(tmp_path: Path) -> None:
    """/dev/serial/by-id/... re-pointed by udev at a re-enumerated adapter while the old node lingers."""
    sink = Sink()
    link = tmp_path / "by-id"
    async with PtyPair(str(tmp_path / "old")) as old, PtyPair(str(tmp_path / "new")) as new:
        link.symlink_to(os.readlink(old.device))
        async with RfidDriver([reader("gate-1", str(link))], sink) as drv:
            await until(lambda: sink.port_open("gate-1") is True, what="the old device open")
            tmp_link = tmp_path / "by-id.tmp"
            tmp_link.symlink_to(os.readlink(new.device))
            tmp_link.replace(link)                               # atomically, as udev does
            await until(lambda: per_reader(drv, "gate-1")["opens"] == 2, what="the new device opened")
            assert [online for _, online, _ in sink.health] == [True, False, True]
            assert sink.health[1][2] == "device path now names another device"
            with sim_end(new) as fd:
                os.write(fd, rdm6300_frame(CARD))
                await until(lambda: sink.cards("gate-1") == [str(CARD)], what="a tap from the new device")


async def test_a_port_that_is_not_there_yet_is_retried_until_it_appears(tmp_path: Path) -> None:
    sink = Sink()
    dev = str(tmp_path / "later")
    async with RfidDriver([reader("gate-1", dev)], sink) as drv:
        await until(lambda: per_reader(drv, "gate-1")["open_failures"] >= 2, what="two failed opens")
        assert sink.states[0] == ("gate-1", False, False)
        assert sink.health == [("gate-1", False, sink.health[0][2])]
        assert "cannot open" in (sink.health[0][2] or "")
        async with PtyPair(dev) as pty:
            await until(lambda: sink.port_open("gate-1") is True, what="the reader open")
            with sim_end(pty) as fd:
                os.write(fd, rdm6300_frame(CARD))
                await until(lambda: sink.cards("gate-1") == [str(CARD)], what="a tap")


# -- socket:// -------------------------------------------------------------------------------------------
async def test_a_socket_reader_reconnects_with_backoff_when_its_peer_comes_back() -> None:
    sink = Sink()
    async with peer() as p, RfidDriver([reader("gate-1", p.url, "line")], sink) as drv:
        await until(lambda: len(p.writers) == 1, what="the connection")
        p.send(b"0013961168\r\n")
        await until(lambda: sink.cards("gate-1") == ["13961168"], what="the first tap")
        await p.stop()                                             # the serial server reboots
        await until(lambda: sink.port_open("gate-1") is False, what="the reader offline")
        await until(lambda: per_reader(drv, "gate-1")["open_failures"] >= 2, what="retries while it is away")
        await p.start()
        await until(lambda: len(p.writers) == 1 and sink.port_open("gate-1") is True, what="the reconnection")
        p.send(b"42\n")
        await until(lambda: sink.cards("gate-1") == ["13961168", "42"], what="a tap after the reconnection")
        st = per_reader(drv, "gate-1")
        assert st["reopens"] == 1
        assert st["reason"] is None
        assert drv.stats()["reopens"] == 1


async def test_a_held_card_is_one_tap_and_a_new_presentation_another() -> None:
    sink = Sink()
    async with peer() as p, RfidDriver([reader("gate-1", p.url)], sink) as drv:
        await until(lambda: len(p.writers) == 1, what="the connection")
        p.send(rdm6300_frame(CARD) * 10)            # ~0.65 s of a held RDM6300, in one burst
        await until(lambda: per_reader(drv, "gate-1")["frames"] == 10, what="ten frames")
        assert sink.cards("gate-1") == [str(CARD)]
        assert per_reader(drv, "gate-1")["repeats"] == 9
    short = Sink()
    async with peer() as p, RfidDriver([reader("gate-1", p.url)], short, repeat_window_s=0.2) as drv:
        await until(lambda: len(p.writers) == 1, what="the connection")
        p.send(rdm6300_frame(CARD))
        await until(lambda: short.cards("gate-1") == [str(CARD)], what="the first tap")
        await asyncio.sleep(0.3)                     # longer than the window: taken away and shown again
        p.send(rdm6300_frame(CARD))
        await until(lambda: short.cards("gate-1") == [str(CARD)] * 2, what="the second tap")


# -- the hook the access-control part uses -----------------------------------------------------------------
async def test_door_taps_reach_on_tap_with_the_time_of_their_last_byte() -> None:
    sink = Sink()
    taps: list[Tap] = []

    async def hook(tap: Tap) -> None:
        taps.append(tap)
        if len(taps) == 1:
            raise RuntimeError("the access list is broken")   # logged; the reader goes on

    async with peer() as p, RfidDriver([reader("door-r", p.url, purpose="door", door="door-101")], sink) as drv:
        drv.on_tap = hook
        await until(lambda: len(p.writers) == 1, what="the connection")
        before = time.monotonic()
        p.send(rdm6300_frame(CARD))
        await until(lambda: len(taps) == 1, what="the first tap")
        after = time.monotonic()
        p.send(rdm6300_frame(7))
        await until(lambda: len(taps) == 2, what="the second tap")
    first = taps[0]
    assert (first.reader, first.card, first.purpose, first.door) == ("door-r", str(CARD), "door", "door-101")
    assert before <= first.at <= after
    assert abs(first.ts - time.time()) < 60
    assert taps[1].card == "7"
    assert sink.events[0] == ("card", {"reader": "door-r", "card": str(CARD), "purpose": "door", "person": None,
                                       "decision": None})


async def test_stop_ends_a_hook_that_swallows_a_cancel() -> None:
    cancels = 0
    started = asyncio.Event()

    async def stubborn(_tap: Tap) -> None:
        nonlocal cancels
        started.set()
        for _ in range(3):
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 2:
                    raise

    sink = Sink()
    async with peer() as p:
        drv = RfidDriver([reader("gate-1", p.url)], sink)
        await drv.__aenter__()
        try:
            drv.on_tap = stubborn
            await until(lambda: len(p.writers) == 1, what="the connection")
            p.send(rdm6300_frame(CARD))
            await asyncio.wait_for(started.wait(), 10)
        finally:
            await asyncio.wait_for(drv.__aexit__(None, None, None), 30)
    assert cancels == 2
    assert drv.stuck(-1.0) == []


# -- the seam --------------------------------------------------------------------------------------------
async def test_readers_refuse_writes_and_report_what_they_do(tmp_path: Path) -> None:
    sink = Sink()
    cfg = Config.model_validate({"site": {"school_id": "014601", "gateway_id": "gw"},
                                 "storage": {"path": str(tmp_path / "state")},
                                 "devices": [{"id": "gate-1", "kind": "rfid", "port": str(tmp_path / "none"),
                                              "framing": "wiegand26", "purpose": "gate"}]})
    drv = RfidDriver.from_config(cfg, sink, SystemClock())
    assert drv is not None
    assert RfidDriver.from_config(Config.model_validate({**cfg.model_dump(mode="json", exclude_none=True),
                                                         "devices": []}), sink, SystemClock()) is None
    assert drv.devices() == {"gate-1": Kind.RFID}
    assert drv.capabilities("gate-1") == frozenset()
    with pytest.raises(ApplyError) as err:
        await drv.apply("gate-1", {"on": True})
    assert err.value.code == "bad_request"
    with pytest.raises(ApplyError) as err:
        await drv.pulse("gate-1", 1.0)
    assert err.value.code == "bad_request"
    assert drv.stuck(-1.0) == []                    # not running: nothing to be stuck
    async with drv:
        await until(lambda: per_reader(drv, "gate-1")["open_failures"] >= 1, what="a failed open")
        assert drv.stuck(60.0) == []
        assert len(drv.stuck(-1.0)) == 1
        assert drv.stuck(-1.0)[0].startswith("rfid reader gate-1: loop silent")
        st = drv.stats()
        assert st["readers"]["gate-1"]["framing"] == "wiegand26"
        assert st["readers"]["gate-1"]["port_open"] is False
        json.dumps(st)
    assert drv.stuck(-1.0) == []


# -- in the real daemon -------------------------------------------------------------------------------------
def card_event_validator() -> Any:
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text(encoding="utf-8"))
    root = {"components": doc["components"], "$ref": "#/components/schemas/CardEvent"}
    return jsonschema.Draft202012Validator(root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


async def test_the_driver_in_the_daemon_publishes_card_events(tmp_path: Path) -> None:
    async with peer() as p:
        cfg = Config.model_validate({
            "site": {"school_id": "014601", "gateway_id": "gw-rfid"},
            "storage": {"path": str(tmp_path / "state")},
            "devices": [{"id": "gate-1", "kind": "rfid", "port": p.url, "framing": "rdm6300", "purpose": "gate"}],
        })
        others = [f for f in DEFAULT_DRIVERS if f is not rfid_driver]   # before and after its registration
        daemon = Daemon(cfg, status_port=0, drivers=(*others, RfidDriver.from_config))
        assert daemon.kinds == {"gate-1": Kind.RFID}
        assert daemon.unowned == []
        events = daemon.bus.subscribe("event", name="test")
        try:
            async with daemon:
                await until(lambda: daemon.states["gate-1"].get("online") is True, what="the reader online")
                assert daemon.states["gate-1"]["port_open"] is True
                await until(lambda: len(p.writers) == 1, what="the connection")
                p.send(b"\x00" + rdm6300_frame(CARD) * 3)
                while True:
                    msg = await asyncio.wait_for(events.queue.get(), 10)
                    if msg.payload["kind"] == "card":
                        break
                body = msg.payload
                assert (body["reader"], body["card"], body["purpose"], body["decision"]) == \
                    ("gate-1", str(CARD), "gate", None)
                assert not [e.message for e in card_event_validator().iter_errors(body)], body
                info = daemon.gateway_info()["drivers"]["rfid"]
                assert (info["taps"], info["drops"]) == (1, {"noise_bytes": 1})
                out = await daemon.control.ask(Ask("gate-1", {"on": True}, Source.LOCAL, "local:test"))
                assert (out.status, out.code) == ("rejected", "bad_request")
                assert daemon.liveness(60.0) == []
                await p.stop()                                  # the reader's network box goes away
                await until(lambda: daemon.states["gate-1"].get("online") is False, what="the reader offline")
                assert daemon.states["gate-1"]["port_open"] is False
        finally:
            daemon.bus.unsubscribe(events)


async def test_stop_is_bounded_even_by_a_hook_that_ignores_every_cancel(monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(driver_module, "STOP_TIMEOUT_S", 1.0)
    release = asyncio.Event()
    started = asyncio.Event()
    hooks: list[asyncio.Task[Any]] = []

    async def deaf(_tap: Tap) -> None:
        task = asyncio.current_task()
        assert task is not None
        hooks.append(task)
        started.set()
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    async with peer() as p:
        drv = RfidDriver([reader("gate-1", p.url)], Sink())
        await drv.__aenter__()
        drv.on_tap = deaf
        await until(lambda: len(p.writers) == 1, what="the connection")
        p.send(rdm6300_frame(CARD))
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.wait_for(drv.__aexit__(None, None, None), 30)   # returns although the hook lives on
        assert not hooks[0].done()
        assert "left behind" in caplog.text
        release.set()                                                    # the test's own clean-up
        await asyncio.wait_for(hooks[0], 10)
