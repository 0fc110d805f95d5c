"""The energy screen (edge.screen): a read-only listener (GET only, fixed paths, nothing reaching control),
one snapshot a tick for every viewer over server-sent events, the viewers' limit, today's curve, and the
snapshot's figures against the daemon's own status (a real daemon on the virtual school)."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import free_port, until
from helpers.sites import ac, meter, site, tcp_bus, two_bus_school
from pydantic import ValidationError

import edge.screen as screen_mod
from edge.config import load_config
from edge.core.arbiter import Source
from edge.core.clock import Clock, iso
from edge.core.config import Config, ScreenConfig
from edge.core.control import Ask
from edge.daemon import DEFAULT_SERVICES, Daemon
from edge.demo import _demo_site, example_config, screen_url
from edge.screen import CURVE_TAIL, RESEND_S, STATIC_DIR, Curve, Layout, ScreenService, parse_listen, snapshot
from simulator.app import VirtualSchool

TZ = ZoneInfo("Asia/Taipei")
NOW = datetime(2026, 6, 16, 10, 20, 30, tzinfo=TZ).timestamp()
METHODS = ("POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE")
PATHS = ("/", "/index.html", "/screen.js", "/screen.css", "/i18n.js", "/api/snapshot", "/api/stream")


# -- a host without a daemon ----------------------------------------------------------------------------
class HeldClock:
    """Time moves only when a test says; the screen's own loop ticks once and then waits (tests tick it)."""

    def __init__(self, t: float) -> None:
        self.t, self.mono = t, 0.0
        self._never = asyncio.Event()

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.mono

    def advance(self, s: float) -> None:
        self.t += s
        self.mono += s

    async def sleep(self, seconds: float) -> None:
        await self._never.wait()


class FakeEms:
    name = "ems"

    def __init__(self) -> None:
        self.body: dict[str, Any] = {
            "block_avg_kw": 120.5, "projected_kw": 131.25, "allow_kw": 40.0, "contract_kw": 150.0, "shed_units": 1,
            "stale": False, "block_start": iso(NOW - 330, TZ), "peak_kw": 140.0, "sliding_peak_kw": 142.0,
            "shed": {"ac-301b": "shed_setpoint"}, "turns": 7,
            "alarms": [{"id": "a1/raised", "alarm": "a1", "level": "notice", "state": "raised", "rule": "demand",
                        "metric": "projected_kw", "value": 131.25, "threshold": 130.0},
                       {"id": "a2/acknowledged", "alarm": "a2", "level": "warning", "state": "acknowledged",
                        "rule": "demand", "metric": "avg_kw", "value": 120.5, "threshold": 120.0, "by": "facility:F9"}],
            "usage": {"day": "2026-06-16", "month": "2026-06",
                      "rooms": {"301": {"today_kwh": 3.456, "today_run_h": 2.0, "month_kwh": 40.0, "month_run_h": 30.0},
                                "101": {"today_kwh": 1.0, "today_run_h": 1.0, "month_kwh": 9.0, "month_run_h": 8.0,
                                        "quota_kwh": 50.0, "balance_kwh": 41.0, "exhausted": False}}}}

    def status(self) -> dict[str, Any]:
        return self.body


class FakeHost:
    """What a daemon offers the screen, and nothing that writes (no control entry, no arbiter, no cloud)."""

    def __init__(self, cfg: Config, ems: FakeEms | None) -> None:
        self.cfg = cfg
        self.held = HeldClock(NOW)
        self.clock: Clock = self.held
        self.tz = TZ
        self.services: list[Any] = [ems] if ems is not None else []
        self.states: dict[str, dict[str, Any]] = {
            "meter-main": {"online": True, "power_w": 98765.4, "energy_kwh": 1234.5, "voltage_v": [220.0] * 3},
            "ac-301a": {"online": True, "power_on": True, "mode": "cool", "setpoint_c": 26, "room_temp_c": 27.5},
            "ac-301b": {"online": True, "power_on": False, "mode": "cool", "setpoint_c": 28, "room_temp_c": 28.0},
            "ac-101a": {"online": True, "power_on": False, "room_temp_c": 30.25, "fault": "E4"},
            "ac-102a": {"online": False, "power_on": True, "room_temp_c": 25.0},
        }


def fake_config(*, screen: dict[str, Any] | None = None, ems: bool = True) -> Config:
    return Config.model_validate(site(
        buses=[tcp_bus("b", 1502)],
        rooms=[{"id": "101", "name": "1年1班", "floor": 1}, {"id": "102", "name": "1年2班", "floor": 1},
               {"id": "301", "name": "3年1班", "floor": 3}, {"id": "gym", "name": "體育館", "floor": 1}],
        devices=[ac("ac-101a", "b", 1, index=1, room="101"), ac("ac-102a", "b", 1, index=2, room="102"),
                 ac("ac-301a", "b", 1, index=3, room="301"), ac("ac-301b", "b", 1, index=4, room="301"),
                 meter("b", 2)],
        screen=screen or {"listen": "127.0.0.1:0"},
        ems={"meter": "meter-main", "contract_kw": 150} if ems else None))


@pytest.fixture
async def served() -> AsyncIterator[tuple[ScreenService, FakeHost]]:
    host = FakeHost(fake_config(screen={"listen": "127.0.0.1:0", "max_viewers": 3}), FakeEms())
    svc = ScreenService.from_daemon(host)
    assert svc is not None
    async with svc:
        yield svc, host


# -- a raw HTTP client (what a browser, or anyone on the LAN, may send) ---------------------------------------
async def request(port: int, method: str, path: str, *, raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw if raw is not None else f"{method} {path} HTTP/1.1\r\nHost: screen\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


class Viewer:
    """One SSE client: `frames()` yields the snapshots the stream delivers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int) -> None:
        self.reader, self.writer, self.status = reader, writer, status

    @classmethod
    async def open(cls, port: int) -> Viewer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/stream HTTP/1.1\r\nHost: screen\r\nAccept: text/event-stream\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return cls(reader, writer, int(head.split()[1]))

    async def raw_frame(self, within: float = 5.0) -> bytes:
        while True:
            chunk = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), within)
            if b"data: " in chunk:
                return chunk

    async def frame(self, within: float = 5.0) -> dict[str, Any]:
        chunk = await self.raw_frame(within)
        lines = chunk.decode().splitlines()
        assert "event: snapshot" in lines
        data: dict[str, Any] = json.loads(next(ln for ln in lines if ln.startswith("data: "))[6:])
        return data

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await self.raw_frame(seconds)
        except TimeoutError:
            return True
        return False

    async def close(self) -> None:
        self.writer.close()
        await asyncio.gather(self.writer.wait_closed(), return_exceptions=True)


# -- configuration ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "127.0.0.1:0", "[::]:8080", "screen.school.lan:80", "::1:65535"])
def test_listen_takes_host_and_port(listen: str) -> None:
    assert ScreenConfig(listen=listen).listen == listen


@pytest.mark.parametrize("listen", ["8080", "0.0.0.0", ":8080", "0.0.0.0:", "0.0.0.0:65536", "0.0.0.0:80x",
                                    "my host:80", "[]:80"])
def test_a_bad_listen_is_refused_saying_what_is_expected(listen: str) -> None:
    with pytest.raises(ValidationError, match="host:port"):
        ScreenConfig(listen=listen)


def test_screen_defaults_and_off_without_listen() -> None:
    s = ScreenConfig()
    assert (s.listen, s.lang, s.title, s.max_viewers) == (None, "zh-TW", None, 50)
    with pytest.raises(ValidationError):
        ScreenConfig.model_validate({"lang": "fr"})
    assert ScreenService.from_daemon(FakeHost(fake_config(screen={"lang": "en"}), None)) is None
    no_screen = fake_config().model_copy(update={"screen": None})
    assert ScreenService.from_daemon(FakeHost(no_screen, None)) is None
    assert ScreenService.from_daemon in DEFAULT_SERVICES


# -- what the listener serves, and nothing else ------------------------------------------------------------
async def test_the_page_in_traditional_chinese_by_default_and_english_on_request(
        served: tuple[ScreenService, FakeHost]) -> None:
    svc, _host = served
    status, headers, body = await request(svc.port, "GET", "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b'<html lang="zh-TW">' in body
    assert "default-src 'self'" in headers["content-security-policy"]
    _s, _h, en = await request(svc.port, "GET", "/?lang=en")
    assert b'<html lang="en">' in en
    _s, _h, other = await request(svc.port, "GET", "/?lang=fr")
    assert b'<html lang="zh-TW">' in other


async def test_a_site_configured_in_english_serves_english_and_its_title_escaped() -> None:
    cfg = fake_config(screen={"listen": "127.0.0.1:0", "lang": "en", "title": "<b>新北市立示範國小</b>"})
    async with ScreenService(FakeHost(cfg, None), cfg.screen or ScreenConfig()) as svc:
        _s, _h, body = await request(svc.port, "GET", "/")
        assert b'<html lang="en">' in body
        assert "&lt;b&gt;新北市立示範國小&lt;/b&gt;".encode() in body
        assert b"<b>" not in body
        _s, _h, zh = await request(svc.port, "GET", "/?lang=zh-TW")
        assert b'<html lang="zh-TW">' in zh


async def test_static_assets_are_served_with_their_types(served: tuple[ScreenService, FakeHost]) -> None:
    svc, _host = served
    for path, ctype in (("/screen.js", "text/javascript"), ("/screen.css", "text/css"),
                        ("/i18n.js", "text/javascript")):
        status, headers, body = await request(svc.port, "GET", path)
        assert status == 200, path
        assert headers["content-type"].startswith(ctype), path
        assert body == (STATIC_DIR / path[1:]).read_bytes()
        assert headers["x-content-type-options"] == "nosniff"


def test_everything_the_page_loads_is_local() -> None:
    """No CDN, no web fonts, nothing from the internet: every URL in the page's files is relative."""
    for f in STATIC_DIR.iterdir():
        text = f.read_text(encoding="utf-8")
        urls = re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"')]*", text)
        assert [u for u in urls if u != "http://www.w3.org/2000/svg"] == [], f.name
        assert "@import" not in text, f.name
        assert "@font-face" not in text, f.name
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    assert sorted(re.findall(r'(?:src|href)="([^"]+)"', html)) == ["data:,", "i18n.js", "screen.css", "screen.js"]


@pytest.mark.parametrize("method", METHODS)
async def test_every_other_method_is_405_on_every_path(served: tuple[ScreenService, FakeHost], method: str) -> None:
    svc, _host = served
    for path in (*PATHS, "/devices/ac-301a", "/api/anything"):
        raw = f"{method} {path} HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n"
        status, headers, _body = await request(svc.port, method, path, raw=raw.encode() + b'{"power_on":true}')
        assert (status, headers.get("allow")) == (405, "GET"), (method, path)


@pytest.mark.parametrize("path", ["/status", "/health", "/metrics", "/devices/ac-301a", "/devices/ac-301a/unlock",
                                  "/api", "/api/", "/api/snapshot/x", "/screen_static/index.html", "/../daemon.py",
                                  "/%2e%2e/screen.py", "/control.sock", "/screen.py", "//etc/passwd"])
async def test_unknown_paths_are_404(served: tuple[ScreenService, FakeHost], path: str) -> None:
    svc, _host = served
    status, _h, _b = await request(svc.port, "GET", path)
    assert status == 404


async def test_bad_requests_get_400_and_an_oversized_head_431(served: tuple[ScreenService, FakeHost]) -> None:
    svc, _host = served
    assert (await request(svc.port, "", "", raw=b"GET\r\n\r\n"))[0] == 400
    assert (await request(svc.port, "", "", raw=b"GET screen HTTP/1.1\r\n\r\n"))[0] == 400
    big = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * (screen_mod.HEAD_LIMIT + 10) + b"\r\n\r\n"
    assert (await request(svc.port, "", "", raw=big))[0] == 431


def test_the_screen_module_cannot_reach_control_the_cloud_or_the_control_socket() -> None:
    """Read-only by construction: edge.screen imports nothing that writes or talks to the outside."""
    tree = ast.parse(Path(screen_mod.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    forbidden = ("edge.core.control", "edge.core.arbiter", "edge.http", "edge.core.store", "cloud_sync", "drivers",
                 "edge.daemon", "socket", "subprocess")
    assert [m for m in imported if m.startswith(forbidden)] == []
    source = Path(screen_mod.__file__).read_text(encoding="utf-8")
    assert not re.search(r"\.(control|arbiter|cloud|apply|pulse|store|on_event)\b", source)


# -- what it shows ------------------------------------------------------------------------------------------
def test_the_snapshot_shows_the_site_the_block_the_rooms_and_each_class_use() -> None:
    host = FakeHost(fake_config(), FakeEms())
    ems = host.services[0].status()
    snap = snapshot(Layout.of(host.cfg), host.states, ems, NOW, TZ)
    assert snap["site"] == {"meter": "meter-main", "online": True, "power_kw": 98.77, "energy_kwh": 1234.5}
    assert snap["ems"]["contract_kw"] == 150.0
    assert snap["ems"]["projected_kw"] == 131.25
    assert snap["ems"]["block_avg_kw"] == 120.5
    assert snap["ems"]["peak_kw"] == 140.0
    start = datetime.fromisoformat(snap["ems"]["block_start"]).timestamp()
    assert datetime.fromisoformat(snap["ems"]["block_end"]).timestamp() - start == 900
    # the highest active level, and no person named (who acknowledged)
    assert snap["alarm_level"] == "warning"
    assert [a["level"] for a in snap["alarms"]] == ["notice", "warning"]
    assert all(set(a) == {"level", "state", "metric", "value", "threshold"} for a in snap["alarms"])
    assert "F9" not in json.dumps(snap)
    # rooms by floor, top floor first; a room without ACs (the gym) is not shown
    assert [f["floor"] for f in snap["floors"]] == [3, 1]
    rooms = {r["id"]: r for f in snap["floors"] for r in f["rooms"]}
    assert set(rooms) == {"101", "102", "301"}
    assert rooms["301"] == {"id": "301", "name": "3年1班", "units": 2, "online": 2, "on": 1, "temp_c": 27.8,
                            "today_kwh": 3.46, "shed": True, "fault": False}
    assert rooms["101"]["fault"] is True
    assert rooms["101"]["temp_c"] == 30.2
    assert rooms["101"]["shed"] is False
    # an offline unit claims nothing (its last power_on and temperature are not shown)
    assert rooms["102"] == {**rooms["102"], "online": 0, "on": 0, "temp_c": None, "today_kwh": None}
    assert snap["acs"] == {"on": 1, "online": 3, "units": 4}
    assert snap["ac_today_kwh"] == 4.46
    assert snap["usage_day"] == "2026-06-16"
    # nothing of quotas' balances, holds, bookings or cards
    assert "balance" not in json.dumps(snap)
    assert "holds" not in snap


def test_without_an_energy_manager_only_site_power_is_shown() -> None:
    host = FakeHost(fake_config(ems=False), None)
    snap = snapshot(Layout.of(host.cfg), host.states, None, NOW, TZ)
    assert snap["ems"] is None
    assert snap["alarm_level"] is None
    assert snap["alarms"] == []
    assert snap["site"]["meter"] == "meter-main"
    assert snap["site"]["power_kw"] == 98.77
    assert snap["ac_today_kwh"] is None
    host.states["meter-main"]["online"] = False
    offline = snapshot(Layout.of(host.cfg), host.states, None, NOW, TZ)
    assert offline["site"] == {"meter": "meter-main", "online": False, "power_kw": None, "energy_kwh": None}


def test_the_curve_is_one_average_per_minute_of_today() -> None:
    c = Curve()
    minute = int(NOW // 60) * 60
    for s, kw in ((0, 10.0), (20, 20.0), (40, 30.0), (60, 50.0), (61, 70.0)):
        c.add(minute + s, kw)
    assert c.points(0) == [[minute, 20.0], [minute + 60, 60.0]]   # the minute in progress is last
    assert c.points(minute + 60) == [[minute + 60, 60.0]]          # nothing before `since`
    for m in range(2, 10):
        c.add(minute + 60 * m, float(m))
    assert c.points(0, last=CURVE_TAIL) == [[minute + 420, 7.0], [minute + 480, 8.0], [minute + 540, 9.0]]
    c.add(minute + 120, 1.0)                       # the clock stepped back 7 minutes: what was after is gone
    assert c.points(0) == [[minute, 20.0], [minute + 60, 60.0], [minute + 120, 1.0]]
    small = Curve(minutes=3)
    for m in range(6):
        small.add(60.0 * m, float(m))
    assert small.points(0) == [[120, 2.0], [180, 3.0], [240, 4.0], [300, 5.0]]   # a ring: the oldest go


async def test_the_curve_is_sampled_every_tick_and_starts_again_at_midnight(
        served: tuple[ScreenService, FakeHost]) -> None:
    svc, host = served
    midnight = datetime(2026, 6, 17, tzinfo=TZ).timestamp()
    host.held.t = midnight - 30
    svc.tick(host.held.t)
    host.states["meter-main"]["power_w"] = 50000.0
    host.held.t = midnight + 5
    svc.tick(host.held.t)
    assert svc.full(host.held.t)["curve"]["points"] == [[midnight, 50.0]]
    assert svc.full(host.held.t)["curve"]["since"] == midnight
    host.states["meter-main"]["online"] = False     # an offline meter is not a zero on the curve
    svc.tick(host.held.t + 60)
    assert svc.full(host.held.t + 60)["curve"]["points"] == [[midnight, 50.0]]


# -- the stream ---------------------------------------------------------------------------------------------
async def test_a_viewer_gets_the_whole_curve_then_successive_snapshots_as_the_school_changes(
        served: tuple[ScreenService, FakeHost]) -> None:
    svc, host = served
    for m in range(5):                               # five minutes of curve before the viewer comes
        svc.tick(NOW - 300 + 60 * m)
    v = await Viewer.open(svc.port)
    try:
        assert v.status == 200
        first = await v.frame()
        assert first["curve"]["full"] is True
        assert len(first["curve"]["points"]) == 5
        assert first["site"]["power_kw"] == 98.77
        host.states["meter-main"]["power_w"] = 120000.0
        host.states["ac-301b"]["power_on"] = True
        host.held.advance(1)
        svc.tick(host.held.t)
        second = await v.frame()
        assert second["site"]["power_kw"] == 120.0
        assert second["acs"]["on"] == 2
        assert second["curve"]["full"] is False
        assert len(second["curve"]["points"]) == CURVE_TAIL
        assert second["ts"] == iso(host.held.t, TZ)
        host.states["meter-main"]["power_w"] = 60000.0
        host.held.advance(1)
        svc.tick(host.held.t)
        assert (await v.frame())["site"]["power_kw"] == 60.0
    finally:
        await v.close()


async def test_an_unchanged_snapshot_waits_until_the_resend_interval(served: tuple[ScreenService, FakeHost]) -> None:
    svc, host = served
    v = await Viewer.open(svc.port)
    try:
        await v.frame()
        svc.tick(host.held.t)
        await v.frame()                               # the first tick after the viewer came: sent
        host.held.advance(RESEND_S - 1)
        svc.tick(host.held.t)                        # the same figures (only the time moved): not sent
        assert await v.nothing_within(0.3)
        host.held.advance(1)
        svc.tick(host.held.t)                        # RESEND_S since the last one: sent again
        assert (await v.frame())["ts"] == iso(host.held.t, TZ)
    finally:
        await v.close()


async def test_one_snapshot_a_tick_whatever_the_number_of_viewers(served: tuple[ScreenService, FakeHost]) -> None:
    svc, host = served
    viewers = [await Viewer.open(svc.port) for _ in range(3)]
    try:
        for v in viewers:
            await v.frame()
        built = svc.built
        host.states["meter-main"]["power_w"] = 77000.0
        svc.tick(host.held.t)
        frames = [await v.raw_frame() for v in viewers]
        assert svc.built == built + 1                 # one build for the three of them
        assert len(set(frames)) == 1                  # the same bytes to each
        _s, _h, body = await request(svc.port, "GET", "/api/snapshot")
        assert svc.built == built + 1                 # the snapshot API reuses the tick's snapshot
        assert json.loads(body)["site"]["power_kw"] == 77.0
    finally:
        for v in viewers:
            await v.close()


async def test_nobody_watching_nothing_is_built(served: tuple[ScreenService, FakeHost]) -> None:
    svc, host = served
    built = svc.built
    for s in range(5):
        svc.tick(host.held.t + s)
    assert svc.built == built
    assert svc.sent == 0


async def test_beyond_max_viewers_a_stream_is_refused_503_until_one_leaves(
        served: tuple[ScreenService, FakeHost]) -> None:
    svc, _host = served
    viewers = [await Viewer.open(svc.port) for _ in range(3)]   # the fixture's max_viewers
    try:
        assert [v.status for v in viewers] == [200, 200, 200]
        extra = await Viewer.open(svc.port)
        assert extra.status == 503
        await extra.close()
        assert (await request(svc.port, "GET", "/api/snapshot"))[0] == 200   # the page and the API still answer
        await viewers.pop().close()
        await until(lambda: len(svc.viewers) == 2, what="the viewer gone")
        again = await Viewer.open(svc.port)
        viewers.append(again)
        assert again.status == 200
    finally:
        for v in viewers:
            await v.close()


async def test_connections_beyond_the_viewers_and_extra_ones_are_answered_503(
        served: tuple[ScreenService, FakeHost]) -> None:
    svc, _host = served
    cap = svc.screen.max_viewers + screen_mod.EXTRA_CONNECTIONS
    idle = [await asyncio.open_connection("127.0.0.1", svc.port) for _ in range(cap - 1)]   # saying nothing yet
    try:
        await until(lambda: len(svc._conns) == cap - 1, what="the idle connections accepted")
        assert (await request(svc.port, "GET", "/api/snapshot"))[0] == 200   # the last one allowed
        _r, w = idle.pop()
        w.close()
        idle.append(await asyncio.open_connection("127.0.0.1", svc.port))
        idle.append(await asyncio.open_connection("127.0.0.1", svc.port))
        await until(lambda: len(svc._conns) == cap, what="the connections accepted")
        status, headers, _ = await request(svc.port, "GET", "/api/snapshot")
        assert status == 503
        assert headers["retry-after"] == "10"
    finally:
        for _r, w in idle:
            w.close()


class BufferedTransport:
    def __init__(self, buffered: int) -> None:
        self.buffered = buffered

    def get_write_buffer_size(self) -> int:
        return self.buffered


class FakeViewer:
    """A viewer whose socket has `buffered` bytes not yet sent."""

    def __init__(self, buffered: int) -> None:
        self.transport = BufferedTransport(buffered)
        self.got: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.got.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def test_a_viewer_too_far_behind_is_dropped_the_others_are_served(
        served: tuple[ScreenService, FakeHost]) -> None:
    svc, _host = served
    frame = b"event: snapshot\ndata: {}\n\n"
    v = await Viewer.open(svc.port)
    try:
        await v.frame()
        at_limit, behind = FakeViewer(screen_mod.SLOW_VIEWER_BYTES), FakeViewer(screen_mod.SLOW_VIEWER_BYTES + 1)
        svc.viewers |= {at_limit, behind}  # type: ignore[arg-type]
        svc.broadcast(frame)
        assert at_limit.got == [frame]                 # at the limit: still served
        assert not at_limit.closed
        assert behind.got == []                        # beyond it: dropped (its page reconnects)
        assert behind.closed
        assert behind not in svc.viewers               # type: ignore[comparison-overlap]
        assert await v.raw_frame() == frame            # the real viewer got it
    finally:
        svc.viewers.discard(at_limit)
        await v.close()


async def test_a_viewer_that_talks_instead_of_listening_is_let_go(served: tuple[ScreenService, FakeHost]) -> None:
    svc, host = served
    v = await Viewer.open(svc.port)
    try:
        await v.frame()
        v.writer.write(b"x" * screen_mod.VIEWER_INPUT_BYTES)   # as much as it may say: still a viewer
        await v.writer.drain()
        await asyncio.sleep(0.2)
        host.states["meter-main"]["power_w"] = 1000.0
        svc.tick(host.held.t)
        assert (await v.frame())["site"]["power_kw"] == 1.0
        v.writer.write(b"x" * 2048)
        await v.writer.drain()
        await until(lambda: not svc.viewers, what="the chatty viewer dropped")
    finally:
        await v.close()


# -- on the real daemon, against the virtual school -------------------------------------------------------
@pytest.fixture
async def school(tmp_path: Path) -> AsyncIterator[tuple[dict[str, Any], VirtualSchool]]:
    base = two_bus_school(tmp_path, free_port())
    base["simulation"] = {"seed": 5, "initial_room_c": 30.0}
    async with VirtualSchool(Config.model_validate(base)) as sim:
        yield base, sim


def screen_of(daemon: Daemon) -> ScreenService:
    return next(s for s in daemon.services if isinstance(s, ScreenService))


def _rooms(snap: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for f in snap["floors"] for r in f["rooms"]}


async def test_on_the_daemon_the_snapshot_matches_its_status_and_follows_the_school(
        school: tuple[dict[str, Any], VirtualSchool]) -> None:
    base, sim = school
    cfg = Config.model_validate({**base, "screen": {"listen": "127.0.0.1:0", "interval_s": 0.5}})
    async with Daemon(cfg, status_port=0) as daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        svc = screen_of(daemon)
        assert "screen" not in daemon.status()     # the screen adds nothing to the status API
        touched: list[str] = []
        for name in ("ask", "baseline", "release", "pulse", "lock"):
            if hasattr(daemon.control, name):
                original = getattr(daemon.control, name)

                async def spy(*a: Any, _n: str = name, _o: Any = original, **k: Any) -> Any:
                    touched.append(_n)
                    return await _o(*a, **k)

                setattr(daemon.control, name, spy)
        ems_status = daemon.status()["ems"]
        _s, _h, body = await request(svc.port, "GET", "/api/snapshot")
        snap = json.loads(body)
        status = daemon.status()
        assert snap["ems"]["contract_kw"] == status["ems"]["contract_kw"] == 180
        assert snap["ems"]["block_start"] == ems_status["block_start"]
        meter_kw = status["devices"]["meter-main"]["power_w"] / 1000
        assert snap["site"]["power_kw"] == pytest.approx(meter_kw, abs=2.0)   # read a tick apart
        rooms = _rooms(snap)
        assert set(rooms) == {"101", "401"}
        assert rooms["101"]["name"] == "1年1班"
        assert rooms["101"]["units"] == 2
        assert rooms["401"]["units"] == 1
        temps = [status["devices"][a]["room_temp_c"] for a in ("ac-101a", "ac-101b")]
        assert rooms["101"]["temp_c"] == pytest.approx(sum(temps) / 2, abs=0.6)
        # a viewer sees the school change: a teacher's AC on, the kitchen's load
        v = await Viewer.open(svc.port)
        try:
            first = await v.frame()
            assert _rooms(first)["401"]["on"] == 0
            out = await daemon.control.ask(Ask("ac-401a", {"power_on": True}, Source.TEACHER, "teacher:T1"))
            assert out.ok, out.message
            before = first["site"]["power_kw"]
            sim.physics.spec = dataclasses.replace(sim.physics.spec,
                                                   base_load_kw=sim.physics.spec.base_load_kw + 100)
            seen: list[dict[str, Any]] = []

            async def changed() -> None:
                while True:
                    f = await v.frame()
                    seen.append(f)
                    if _rooms(f)["401"]["on"] == 1 and f["site"]["power_kw"] > before + 25:   # 35 kW at night
                        return

            try:
                await asyncio.wait_for(changed(), 20)
            except TimeoutError:
                raise AssertionError([(f["site"], _rooms(f)["401"]) for f in seen[-3:]]) from None
            assert len(seen) >= 1
            assert seen[-1]["acs"]["on"] >= 1
        finally:
            await v.close()
        touched.clear()   # the test's own ask above went through the spies; the screen's requests must not
        for method in ("GET", "POST", "PUT", "DELETE"):
            for path in ("/devices/ac-401a", "/api/snapshot", "/status"):
                await request(svc.port, method, path)
        assert touched == []
        assert (await request(svc.port, "GET", "/status"))[0] == 404


def test_the_demo_gives_the_school_a_screen_on_loopback_and_says_where(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPUS_EDGE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("CAMPUS_EDGE_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "a").mkdir()
    site_file, _key = _demo_site(example_config(), tmp_path / "a", 1883, 20.0)
    cfg = load_config(site_file)
    assert cfg.screen is not None
    assert cfg.screen.listen is not None
    host, port = parse_listen(cfg.screen.listen)
    assert host == "127.0.0.1"   # the demo's screen is not on the LAN
    assert port > 0
    assert screen_url(cfg) == f"http://127.0.0.1:{port}/"
    lan = cfg.model_copy(update={"screen": ScreenConfig(listen="0.0.0.0:8080")})
    assert screen_url(lan) == "http://127.0.0.1:8080/"
    assert screen_url(cfg.model_copy(update={"screen": None})) is None
