"""The driver seam: a driver that is not Modbus plugs in without touching the daemon.

`FakeReader` stands for a serial RFID reader: it owns a device of kind `rfid`, delivers its state
and a `card` event into the core, and the daemon routes to it by device id, next to the Modbus
driver, with nothing in `edge/daemon.py` knowing what it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from conftest import until

from drivers.modbus.driver import ModbusDriver
from edge.config import config_warnings
from edge.core.arbiter import Source
from edge.core.clock import Clock
from edge.core.config import Config
from edge.core.control import Ask
from edge.core.driver import ApplyError, DriverSink
from edge.core.model import Kind, ReaderState
from edge.daemon import Daemon


class FakeReader:
    name = "fake-rfid"

    def __init__(self, cfg: Config, sink: DriverSink) -> None:
        self.sink = sink
        self.ids = {d.id: Kind.RFID for d in cfg.devices if d.kind == "rfid"}
        self.entered = self.exited = 0

    @classmethod
    def factory(cls, cfg: Config, sink: DriverSink, _clock: Clock) -> FakeReader | None:
        return cls(cfg, sink) if any(d.kind == "rfid" for d in cfg.devices) else None

    def devices(self) -> Mapping[str, Kind]:
        return self.ids

    def capabilities(self, _device_id: str) -> frozenset[str]:
        return frozenset()

    async def __aenter__(self) -> Self:
        self.entered += 1
        for dev in self.ids:
            self.sink.on_state(dev, ReaderState(port_open=True), True, 0.0)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.exited += 1

    async def apply(self, device_id: str, _desired: Mapping[str, Any]) -> Mapping[str, Any]:
        raise ApplyError("bad_request", f"{device_id} is a reader")

    async def pulse(self, device_id: str, _seconds: float) -> None:
        raise ApplyError("bad_request", f"{device_id} is a reader")

    def stats(self) -> Mapping[str, Any]:
        return {"frames": 1}

    def stuck(self, _limit_s: float) -> list[str]:
        return []

    def tap(self, reader: str, card: str) -> None:
        self.sink.on_event("card", {"reader": reader, "card": card, "purpose": "gate"})


def site(tmp: Path) -> Config:
    return Config.model_validate({
        "site": {"school_id": "014601", "gateway_id": "gw-seam"},
        "storage": {"path": str(tmp / "state")},
        "devices": [{"id": "gate-1", "kind": "rfid", "port": "socket://127.0.0.1:1", "framing": "rdm6300",
                     "purpose": "gate"}],
    })


async def test_a_non_modbus_driver_plugs_in_by_registration_only(tmp_path: Path) -> None:
    made: list[FakeReader] = []

    def factory(cfg: Config, sink: DriverSink, clock: Clock) -> FakeReader | None:
        drv = FakeReader.factory(cfg, sink, clock)
        if drv is not None:
            made.append(drv)
        return drv

    daemon = Daemon(site(tmp_path), status_port=0, drivers=(ModbusDriver.from_config, factory))
    events = daemon.bus.subscribe("event", name="test")
    async with daemon:
        reader = made[0]
        assert reader.entered == 1
        assert daemon.kinds == {"gate-1": Kind.RFID}
        assert daemon.unowned == []
        await until(lambda: daemon.states["gate-1"].get("online") is True, what="the reader's state")
        assert daemon.states["gate-1"]["port_open"] is True
        reader.tap("gate-1", "13961168")
        msg = await asyncio.wait_for(events.queue.get(), 5)
        assert msg.payload["kind"] == "card"
        assert msg.payload["card"] == "13961168"
        assert daemon.gateway_info()["drivers"]["fake-rfid"] == {"frames": 1}
        # the one way in refuses to "set" a reader, with the same vocabulary as for everything else
        out = await daemon.control.ask(Ask("gate-1", {"on": True}, Source.LOCAL, "local:test"))
        assert (out.status, out.code) == ("rejected", "bad_request")
    assert reader.exited == 1
    daemon.bus.unsubscribe(events)


async def test_devices_no_driver_owns_are_named(tmp_path: Path) -> None:
    daemon = Daemon(site(tmp_path), status_port=0, drivers=(ModbusDriver.from_config,))
    assert daemon.unowned == ["gate-1"]
    async with daemon:
        assert "gate-1" not in daemon.states


def test_check_config_says_what_no_code_reads(tmp_path: Path) -> None:
    cfg = site(tmp_path)
    cfg = Config.model_validate({**cfg.model_dump(mode="json", exclude_none=True),
                                 "devices": [*cfg.model_dump(mode="json", exclude_none=True)["devices"],
                                             {"id": "ble-1", "kind": "beacon_scanner"}]})
    warnings = [w for w in config_warnings(cfg) if "not implemented" in w or "reports nothing" in w]
    assert [w.split(":")[0] for w in warnings] == ["devices.ble-1"]   # gate-1 is a gate reader: read, reported


async def test_a_service_runs_beside_the_drivers(tmp_path: Path) -> None:
    """A decider (access control, bookings, the EMS) plugs in as a service: after the drivers, before their stop."""
    seen: list[str] = []

    class Service:
        def __init__(self, daemon: Daemon) -> None:
            self.daemon = daemon

        async def __aenter__(self) -> Service:
            seen.append(f"enter {self.daemon.states['gate-1'].get('port_open')}")
            return self

        async def __aexit__(self, *_exc: object) -> None:
            seen.append("exit")

    made: list[FakeReader] = []

    def reader(cfg: Config, sink: DriverSink, clock: Clock) -> FakeReader | None:
        drv = FakeReader.factory(cfg, sink, clock)
        made.extend([drv] if drv else [])
        return drv

    daemon = Daemon(site(tmp_path), status_port=0, drivers=(reader,), services=(Service, lambda _d: None))
    async with daemon:
        assert seen == ["enter True"]          # the driver was up before the service started
        assert [type(s).__name__ for s in daemon.services] == ["Service"]
        assert made[0].exited == 0
    assert seen == ["enter True", "exit"]
    assert made[0].exited == 1
