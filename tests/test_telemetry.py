"""Telemetry writer: line protocol, sampling, and delivery to a real VictoriaMetrics (outage, restart, 4xx)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, until
from helpers.sites import ac, channel, meter, relay, site, tcp_bus
from victoria import Victoria, binary

from cloud_sync.lineproto import Point, encode_body, make_point
from cloud_sync.outbox import Outbox
from cloud_sync.retry import downward_backoff
from cloud_sync.sampler import Sampler, state_fields
from cloud_sync.telemetry import TelemetryWriter, classify, parse_retry_after, post_write
from edge.core.clock import SystemClock, iso
from edge.core.config import Config, EmsConfig
from edge.core.events import EventBus, Message

ODD_ROOM = "3年1班, A=b\\c \"q\""

needs_vm = pytest.mark.skipif(binary() is None, reason="victoria-metrics not installed")


def make_cfg(url: str, gateway: str, token_file: Path | None = None) -> Config:
    influx: dict[str, Any] = {"url": url, "org": "ntpc", "bucket": "campus"}
    if token_file is not None:
        influx["token_file"] = str(token_file)
    return Config.model_validate(site(
        gateway=gateway, cloud={"mqtt": {"url": "mqtt://127.0.0.1:1"}, "influx": influx},
        buses=[tcp_bus("b")], rooms=[{"id": "301", "name": ODD_ROOM}],
        devices=[ac("ac-301a", "b", 1, room="301"), meter("b", 2), relay("b", 3),
                 channel("light-301", "light", 0, room="301")]))


FAST = {"meter": 0.001, "ac": 0.001, "relay": 0.001}  # 1 ms windows: every distinct reading is a point


def writer(cfg: Config, bus: EventBus, tmp: Path, **kw: Any) -> TelemetryWriter:
    opts: dict[str, Any] = {"flush_s": 0.05, "sample_s": FAST, "backoff_min_s": 0.05, "backoff_max_s": 0.2,
                            "timeout_s": 2.0, **kw}
    return TelemetryWriter(cfg, bus, storage_dir=tmp, clock=SystemClock(), **opts)


def ac_state(ts: float, on: bool = True, temp: float = 27.5) -> dict[str, Any]:
    return {"online": True, "ts": iso(ts), "power_on": on, "mode": "cool", "setpoint_c": 26.0, "fan": "auto",
            "room_temp_c": temp, "fault": None, "power_w": 1234.5 if on else 0.0}


def meter_state(ts: float, power_w: float = 50_000.0) -> dict[str, Any]:
    return {"online": True, "ts": iso(ts), "power_w": power_w, "energy_kwh": 1234.25, "voltage_v": [230.1, 229.9, None],
            "current_a": [10.5, 11.0, 9.5], "power_phase_w": None, "pf": 0.97, "freq_hz": 60.01, "demand_w": 123_456.0}


def vm_until(vm: Victoria, match: str, n_samples: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = vm.export(match)
        if sum(len(s["values"]) for s in got) >= n_samples or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Victoria]:
    if binary() is None:
        pytest.skip("victoria-metrics not installed")
    v = Victoria(tmp_path_factory.mktemp("vm") / "data", free_port()).start()
    yield v
    v.stop()


# -- pure parts ---------------------------------------------------------------------------------
def test_line_protocol_escapes_every_special_character() -> None:
    p = make_point("m x,y", {"room_name": 'a b,c=d\\e"f', "empty": "", "none": None, "k=1": "v"},
                   {"f 1,=": 2, "on": True, "off": False, "skip": None, "text": "x", "nan": float("nan")},
                   1_700_000_000_123)
    assert p is not None
    assert p.line() == ('m\\ x\\,y,k\\=1=v,room_name=a\\ b\\,c\\=d\\\\e"f f\\ 1\\,\\==2.0,on=1.0,off=0.0'
                        " 1700000000123")
    assert make_point("m", {}, {"only": None, "text": "x"}, 1) is None


def test_state_fields_per_kind() -> None:
    m = state_fields("meter", meter_state(0))
    assert m["demand_kw"] == pytest.approx(123.456)
    assert m["voltage_l1_v"] == 230.1
    assert m["voltage_l3_v"] is None
    assert "power_l1_w" not in m
    a = state_fields("ac", ac_state(0))
    assert a["on"] is True
    assert a["fault"] is False
    assert state_fields("ac", {"online": False, "power_on": True}) == {"online": False}


def test_classification_of_answers() -> None:
    assert [classify(s) for s in (200, 204, 400, 401, 403, 404, 413, 422, 429, 500, 503)] == [
        "ok", "ok", "drop", "auth", "auth", "auth", "too_large", "drop", "retry", "retry", "retry"]
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after("99999") == 600.0


@pytest.mark.parametrize(("min_s", "max_s", "jitter"), [(1.0, 60.0, 0.5), (0.5, 30.0, 0.5), (300.0, 300.0, 0.5),
                                                        (1.0, 8.0, 0.2)])
def test_retry_waits_double_cap_and_jitter_downward_only(min_s: float, max_s: float, jitter: float) -> None:
    # telemetry's and the link's waits: edge.core.backoff, never above the step (max_s is a true cap)
    rng = random.Random(7)
    waits: dict[int, list[float]] = {}
    for _ in range(500):
        b = downward_backoff(min_s, max_s, jitter, rng)
        for n in range(1, 10):
            waits.setdefault(n, []).append(b.fail(0.0))
    for n, ws in waits.items():
        step = min(max_s, min_s * 2 ** (n - 1))
        assert (1 - jitter) * step <= min(ws) < (1 - jitter + 0.02) * step, n   # the whole range is used
        assert (1 - 0.02) * step < max(ws) <= step, n
    b = downward_backoff(min_s, max_s, jitter, rng)
    b.fail(0.0)
    b.fail(0.0)
    b.reset()
    assert b.fail(0.0) <= min_s


def test_sampler_keeps_last_value_per_window_and_writes_flips_at_once() -> None:
    s = Sampler(window_ms=10_000)

    def pt(ts: int, on: float, t: float) -> Point:
        p = make_point("ac", {}, {"on": on, "online": 1, "room_temp_c": t}, ts)
        assert p is not None
        return p

    assert [p.ts_ms for p in s.offer(pt(1_000, 1, 27.0))] == [1_000]       # first: at once
    assert s.offer(pt(3_000, 1, 27.5)) == []
    assert s.offer(pt(5_000, 1, 28.0)) == []                               # replaces 3_000
    assert s.due(9_999, 240_000) == []
    assert [p.ts_ms for p in s.due(10_000, 240_000)] == [5_000]           # window over: its last value
    assert s.offer(pt(12_000, 1, 28.0)) == []
    assert [p.ts_ms for p in s.offer(pt(13_000, 0, 28.0))] == [12_000, 13_000]  # a flip: now, with what it ends
    assert s.offer(pt(25_000, 0, 28.5)) == []
    assert [p.ts_ms for p in s.offer(pt(31_000, 0, 29.0))] == [25_000]    # a later window closes the earlier one
    assert s.replaced == 1
    assert [p.ts_ms for p in s.due(40_000, 240_000)] == [31_000]
    beat = s.due(31_000 + 240_000, 240_000)                                 # silence: the last value again
    assert [p.ts_ms for p in beat] == [271_000]
    assert dict(beat[0].fields)["room_temp_c"] == 29.0


# -- against VictoriaMetrics --------------------------------------------------------------------
@needs_vm
async def test_points_land_with_names_tags_values_and_times(vm: Victoria, tmp_path: Path) -> None:
    bus = EventBus()
    cfg = make_cfg(vm.url, "gw-land")
    t0 = round(time.time() - 60, 3)
    async with writer(cfg, bus, tmp_path) as tw:
        bus.publish(Message("state", "meter-main", meter_state(t0), t0))
        bus.publish(Message("state", "ac-301a", ac_state(t0 + 0.5), t0 + 0.5))
        bus.publish(Message("state", "light-301", {"online": True, "on": True, "ts": iso(t0 + 1)}, t0 + 1))
        bus.publish(Message("state", "relay-1", {"online": True, "channels": [True], "ts": iso(t0)}, t0))
        bus.publish(Message("state", "unknown-dev", {"online": True, "on": True, "ts": iso(t0)}, t0))
        tw.write_ems(150.5, 170.25, 180.0, 3)
        await until(lambda: tw.stats().sent == 4)
    vm_until(vm, '{gateway="gw-land"}', 23)  # samples: meter 11, ac 6, relay 2, ems 4
    got = vm.series('{gateway="gw-land"}')
    ms = round(t0 * 1000)
    meter = got["meter_power_w"]
    assert meter["metric"] == {"__name__": "meter_power_w", "school": "014601", "gateway": "gw-land",
                               "device": "meter-main"}
    assert (meter["values"], meter["timestamps"]) == ([50_000], [ms])
    assert got["meter_demand_kw"]["values"] == [pytest.approx(123.456)]
    assert got["meter_voltage_l2_v"]["values"] == [229.9]
    assert "meter_voltage_l3_v" not in got
    ac = got["ac_room_temp_c"]
    assert ac["metric"] == {"__name__": "ac_room_temp_c", "school": "014601", "gateway": "gw-land",
                            "device": "ac-301a", "room": "301", "room_name": ODD_ROOM}
    assert (ac["values"], ac["timestamps"]) == ([27.5], [ms + 500])
    assert got["ac_on"]["values"] == [1]
    assert got["ac_power_w"]["values"] == [1234.5]
    assert got["relay_on"]["metric"]["kind"] == "light"
    assert got["relay_on"]["timestamps"] == [ms + 1000]
    assert got["ems_projected_kw"]["values"] == [170.25]
    assert got["ems_shed_units"]["values"] == [3]
    assert not [n for n in got if n.startswith(("ac_mode", "ac_fan"))]  # text never becomes a number
    assert tw.stats().buffered == 0  # a healthy server: nothing touched the disk


@needs_vm
async def test_outage_buffers_on_disk_and_delivers_every_point_once(tmp_path: Path) -> None:
    v = Victoria(tmp_path / "vm", free_port()).start()
    try:
        bus = EventBus()
        t0 = round(time.time() - 120, 3)
        async with writer(make_cfg(v.url, "gw-outage"), bus, tmp_path / "w") as tw:
            for i in range(5):
                bus.publish(Message("state", "meter-main", meter_state(t0 + i, 1000.0 + i), t0 + i))
            await until(lambda: tw.stats().sent == 5)
            v.stop()
            for i in range(5, 40):
                bus.publish(Message("state", "meter-main", meter_state(t0 + i, 1000.0 + i), t0 + i))
                await asyncio.sleep(0.005)
            await until(lambda: tw.stats().buffer["pending"] == 35)
            assert tw.stats().failures >= 1
            v.start()
            await until(lambda: tw.stats().sent == 40)
            assert tw.stats().buffer["pending"] == 0
        series = vm_until(v, '{__name__="meter_power_w",gateway="gw-outage"}', 40)
        assert len(series) == 1
        assert sorted(series[0]["values"]) == [1000.0 + i for i in range(40)]  # each once, none twice
    finally:
        v.stop()


@needs_vm
async def test_restart_with_a_pending_buffer_delivers_it(vm: Victoria, tmp_path: Path) -> None:
    bus = EventBus()
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = round(time.time() - 90, 3)
    async with writer(make_cfg(down, "gw-restart"), bus, tmp_path) as tw:
        for i in range(10):
            bus.publish(Message("state", "ac-301a", ac_state(t0 + i, temp=20.0 + i), t0 + i))
        await until(lambda: tw.stats().buffer["pending"] == 10)
    async with writer(make_cfg(vm.url, "gw-restart"), EventBus(), tmp_path) as tw2:
        assert tw2.stats().buffer["pending"] == 10
        await until(lambda: tw2.stats().sent == 10)
    series = vm_until(vm, '{__name__="ac_room_temp_c",gateway="gw-restart"}', 10)
    assert sorted(series[0]["values"]) == [20.0 + i for i in range(10)]
    assert series[0]["timestamps"] == [round((t0 + i) * 1000) for i in range(10)]


@needs_vm
def test_victoria_answers_400_to_a_corrupt_body_and_it_is_classified_drop(vm: Victoria) -> None:
    # VictoriaMetrics skips unparseable lines with 204; a body that is not the gzip it claims is its 4xx
    res = post_write(f"{vm.url}/api/v2/write?org=o&bucket=b&precision=ms", b"not gzip", None)
    assert (res.status, res.outcome) == (400, "drop")
    ok = post_write(f"{vm.url}/api/v2/write?org=o&bucket=b&precision=ms", encode_body(["probe f=1"]), "t")
    assert (ok.status, ok.outcome) == (204, "ok")


# -- answers VictoriaMetrics never gives: a scripted server -------------------------------------
@dataclass
class Scripted:
    """A minimal HTTP/1.1 server answering a script of statuses (then 204), recording each request."""

    script: list[tuple[int, dict[str, str]]]
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    first_delay_s: float = 0.0
    arrived: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.arrived += 1
        status, extra = self.script.pop(0) if self.script else (204, {})
        if not self.requests and self.first_delay_s:
            await asyncio.sleep(self.first_delay_s)
        self.requests.append({"at": time.monotonic(), "target": lines[0].split()[1], "headers": headers,
                              "lines": gzip.decompress(body).decode().splitlines(), "status": status})
        hdrs = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        writer.write(f"HTTP/1.1 {status} X\r\n{hdrs}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}".encode())
        await writer.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield f"http://127.0.0.1:{self.port}/prefix/"
            server.close()
            await server.wait_closed()


async def test_retries_5xx_and_429_after_retry_after_then_drops_a_400(tmp_path: Path) -> None:
    token = tmp_path / "influx.token"
    token.write_text("s3cret\n")
    srv = Scripted([(503, {}), (429, {"Retry-After": "1"}), (204, {}), (400, {})])
    bus = EventBus()
    t0 = round(time.time(), 3)
    async with srv.serve() as url, writer(make_cfg(url, "gw-s", token), bus, tmp_path / "w") as tw:
        bus.publish(Message("state", "meter-main", meter_state(t0), t0))
        await until(lambda: tw.stats().sent == 1)
        assert [r["status"] for r in srv.requests] == [503, 429, 204]
        assert srv.requests[2]["at"] - srv.requests[1]["at"] >= 0.95  # Retry-After over our 0.2 s backoff
        first = srv.requests[0]
        assert first["target"] == "/prefix/api/v2/write?org=ntpc&bucket=campus&precision=ms"
        assert first["headers"]["authorization"] == "Token s3cret"
        assert first["headers"]["content-encoding"] == "gzip"
        assert first["lines"][0].startswith("meter,device=meter-main,gateway=gw-s,school=014601 ")
        assert all(r["lines"] == first["lines"] for r in srv.requests[:3])  # the same batch, from the buffer
        bus.publish(Message("state", "meter-main", meter_state(t0 + 1, 7.0), t0 + 1))  # answered 400
        await until(lambda: tw.stats().rejected == 1)
        bus.publish(Message("state", "meter-main", meter_state(t0 + 2, 8.0), t0 + 2))
        await until(lambda: tw.stats().sent == 2)
        await asyncio.sleep(0.2)
    assert [r["status"] for r in srv.requests] == [503, 429, 204, 400, 204]  # the 400 batch never came back
    assert "power_w=8.0" in srv.requests[4]["lines"][0]
    assert tw.stats().buffer["pending"] == 0


async def test_auth_failure_keeps_points_and_rereads_the_token(tmp_path: Path) -> None:
    token = tmp_path / "influx.token"
    token.write_text("old")
    srv = Scripted([(401, {})])
    bus = EventBus()
    t0 = round(time.time(), 3)
    async with srv.serve() as url, writer(make_cfg(url, "gw-a", token), bus, tmp_path / "w",
                                          auth_backoff_s=0.3) as tw:
        bus.publish(Message("state", "ac-301a", ac_state(t0), t0))
        await until(lambda: tw.stats().failures == 1)
        assert tw.stats().buffer["pending"] == 1
        assert tw.stats().rejected == 0
        token.write_text("new")
        await until(lambda: tw.stats().sent == 1)
    assert [r["headers"]["authorization"] for r in srv.requests] == ["Token old", "Token new"]


async def test_buffer_bound_drops_oldest_with_counters(tmp_path: Path) -> None:
    bus = EventBus()
    down = f"http://127.0.0.1:{free_port()}"
    t0 = round(time.time(), 3)
    async with writer(make_cfg(down, "gw-full"), bus, tmp_path, max_bytes=20_000) as tw:
        for i in range(400):
            bus.publish(Message("state", "meter-main", meter_state(t0 + i * 0.01, float(i)), t0 + i * 0.01))
        await until(lambda: tw.stats().buffered >= 399)
        st = tw.stats().buffer
        assert st["bytes"] <= 20_000
        assert st["thinned"] + st["dropped"] > 0
    with Outbox(tmp_path / "telemetry.db", max_bytes=20_000) as ob:
        kept = [m.payload.decode() for m in ob.peek(1000)]
    powers = [float(k.split("power_w=")[1].split(",")[0]) for k in kept]
    assert powers == sorted(powers)
    assert powers[-1] >= 396  # the newest survive (thinning keeps one in four near the bound) ...
    assert powers[0] > 0      # ... and the oldest went first


async def test_memory_overflow_while_a_post_is_in_flight_loses_and_repeats_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cloud_sync.telemetry.MEMORY_MAX_LINES", 20)
    srv = Scripted([], first_delay_s=0.3)
    bus = EventBus()
    t0 = round(time.time(), 3)
    async with srv.serve() as url, writer(make_cfg(url, "gw-m"), bus, tmp_path) as tw:
        bus.publish(Message("state", "meter-main", meter_state(t0, 0.0), t0))
        await until(lambda: srv.arrived == 1)
        for i in range(1, 200):  # the first POST is still waiting for its answer: memory spills to disk
            bus.publish(Message("state", "meter-main", meter_state(t0 + i / 100, float(i)), t0 + i / 100))
            await asyncio.sleep(0)
        await until(lambda: tw.stats().sent == 200)
        assert tw.stats().buffered > 0
    sent = [float(x.split("power_w=")[1].split(",")[0]) for r in srv.requests for x in r["lines"]]
    assert sorted(sent) == [float(i) for i in range(200)]


async def test_buffer_inserts_run_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # up to MEMORY_MAX_LINES rows in one transaction, every flush_s during an outage: never on the loop
    monkeypatch.setattr("cloud_sync.telemetry.MEMORY_MAX_LINES", 20)
    bus = EventBus()
    down = f"http://127.0.0.1:{free_port()}"
    t0 = round(time.time(), 3)
    on_loop: list[bool] = []
    async with writer(make_cfg(down, "gw-thread"), bus, tmp_path) as tw:
        real = tw.buffer.put_many

        def spy(items: Any) -> list[int | None]:
            on_loop.append(threading.current_thread() is threading.main_thread())
            return real(items)

        monkeypatch.setattr(tw.buffer, "put_many", spy)
        for i in range(100):  # some spill at the memory bound, the rest go to disk when a POST fails
            bus.publish(Message("state", "meter-main", meter_state(t0 + i / 100, float(i)), t0 + i / 100))
            if i % 10 == 0:
                await asyncio.sleep(0.01)
        await until(lambda: tw.stats().buffered == 100)
    assert on_loop
    assert not any(on_loop), on_loop
    with Outbox(tmp_path / "telemetry.db", max_bytes=64 * 1024 * 1024) as ob:
        assert len(ob.peek(1000)) == 100


def test_meter_telemetry_carries_the_voltage_imbalance_and_ems_its_block() -> None:
    m = state_fields("meter", {"online": True, "voltage_v": [230.0, 226.0, 234.0], "pf": 0.9})
    assert m["voltage_imbalance_pct"] == pytest.approx(4 / 230 * 100)     # max |V - mean| / mean
    assert "voltage_imbalance_pct" not in state_fields("meter", {"online": True, "voltage_v": [230.0, None, 231.0]})
    e = state_fields("ems", {"online": True, "block_avg_kw": 140.0, "projected_kw": 151.0, "allow_kw": 148.0,
                             "contract_kw": 150.0, "shed_units": 3, "stale": False})
    assert e == {"online": True, "block_avg_kw": 140.0, "projected_kw": 151.0, "allow_kw": 148.0,
                 "contract_kw": 150.0, "shed_units": 3}


def test_a_site_with_the_energy_manager_and_influx_gets_a_writer_with_ems_points(tmp_path: Path) -> None:
    """`ems:` and `cloud.influx` together: the ems pseudo-device has a sampling window of its own."""
    cfg = make_cfg("http://127.0.0.1:1", "gw-e")
    cfg = cfg.model_copy(update={"ems": EmsConfig(meter="meter-main", contract_kw=100)})
    w = TelemetryWriter(cfg, EventBus(), storage_dir=tmp_path, clock=SystemClock())   # no KeyError: 'ems'
    assert "ems" in w._samplers
