"""The energy screen in a real browser: Debian's headless Chromium, driven over the DevTools protocol on a
pipe (no extra Python packages). The page loads, its figures update live as the virtual school changes,
and its layout holds at 1920x1080 (every panel and all 40 classrooms have a box inside the window, none
overlaps another, and the screenshot is a page, not a blank). Skipped, saying why, without Chromium
(`make test` installs it)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import io
import itertools
import json
import os
import shutil
import signal
from base64 import b64decode
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import free_port, until
from helpers.sites import ac, meter, site, tcp_bus, two_bus_school

from edge.core.arbiter import Source
from edge.core.clock import Clock
from edge.core.config import Config
from edge.core.control import Ask
from edge.daemon import Daemon
from edge.screen import ScreenService
from simulator.app import VirtualSchool

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs"
                                                         " it: apt-get install chromium)")
WIDTH, HEIGHT = 1920, 1080
TZ = ZoneInfo("Asia/Taipei")
HIGH_FD = 100   # the pipe ends are moved this high, out of the way of the 3 and 4 Chromium uses (bash takes fd > 9)


class Browser:
    """Headless Chromium with `--remote-debugging-pipe` (commands on its fd 3, answers on its fd 4, NUL-ended)."""

    def __init__(self, proc: asyncio.subprocess.Process, cmd_w: int, reader: asyncio.StreamReader,
                 transport: asyncio.ReadTransport) -> None:
        self.proc, self.cmd_w, self.reader, self.transport = proc, cmd_w, reader, transport
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.session: str | None = None
        self.pump = asyncio.get_running_loop().create_task(self._pump(), name="chromium devtools")

    @classmethod
    async def start(cls, profile: Path) -> Browser:
        assert CHROMIUM is not None
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        child_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, HIGH_FD)
        child_w = fcntl.fcntl(res_w, fcntl.F_DUPFD, HIGH_FD)
        for fd in (cmd_r, res_w):
            os.close(fd)
        flags = ["--headless=new", "--disable-gpu", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                 "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--mute-audio",
                 "--disable-dev-shm-usage", f"--window-size={WIDTH},{HEIGHT}", "about:blank"]
        if os.geteuid() == 0:
            flags.insert(0, "--no-sandbox")   # Chromium refuses to run as root with its sandbox (a test container)
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/bash", "-c", f'exec "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-', "sh",
                CHROMIUM, *flags, pass_fds=(child_r, child_w), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(child_r)
            os.close(child_w)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 * 1024 * 1024)   # a screenshot is one message
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    io.FileIO(res_r, "rb"))
        return cls(proc, cmd_w, reader, transport)

    async def _pump(self) -> None:
        while True:
            msg = json.loads((await self.reader.readuntil(b"\0"))[:-1])
            fut = self.waiting.pop(msg.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def send(self, method: str, within: float = 20.0, **params: Any) -> dict[str, Any]:
        n = next(self.ids)
        msg: dict[str, Any] = {"id": n, "method": method, "params": params}
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[n] = fut
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        answer = await asyncio.wait_for(fut, within)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def open(self, url: str) -> None:
        """Attach to the window's page, size it to a 1080p screen and load `url`."""
        targets = await self.send("Target.getTargets")
        page = next(t for t in targets["targetInfos"] if t["type"] == "page")
        self.session = (await self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True))["sessionId"]
        await self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
                        mobile=False)
        await self.send("Page.navigate", url=url)

    async def js(self, expression: str) -> Any:
        out = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    async def until_js(self, expression: str, within: float = 15.0) -> Any:
        deadline = asyncio.get_running_loop().time() + within
        while True:   # the page may not be there yet: an error counts as "not yet"
            value = await self.js(f"(() => {{ try {{ return {expression}; }} catch (e) {{ return false; }} }})()")
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {within} s waiting for {expression}")
            await asyncio.sleep(0.1)

    async def screenshot(self) -> bytes:
        return b64decode((await self.send("Page.captureScreenshot", format="png"))["data"])

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.send("Browser.close", within=5.0)
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)   # the session we started (Chromium and its helpers)
            await self.proc.wait()
        self.pump.cancel()
        await asyncio.gather(self.pump, return_exceptions=True)
        self.transport.close()
        os.close(self.cmd_w)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    b = await Browser.start(tmp_path / "chromium-profile")
    try:
        yield b
    finally:
        await b.close()


READ_FIGURES = """(() => ({
  updates: Number(document.body.dataset.updates), live: document.body.dataset.live,
  power: document.getElementById('power-kw').textContent, contract: document.getElementById('contract-kw').textContent,
  proj: document.getElementById('block-proj').textContent, conn: document.getElementById('conn').textContent,
  acsOn: document.getElementById('acs-on').textContent, title: document.title,
  room401: document.querySelector('#room-401') && document.querySelector('#room-401').className,
  room401ac: document.querySelector('#room-401 .ac') && document.querySelector('#room-401 .ac').textContent,
  points: Number(document.getElementById('curve-svg').getAttribute('data-points') || 0)
}))()"""


async def test_the_page_loads_in_chinese_and_follows_the_virtual_school_live(
        tmp_path: Path, browser: Browser) -> None:
    base = two_bus_school(tmp_path, free_port())
    base["simulation"] = {"seed": 5, "initial_room_c": 30.0}
    async with VirtualSchool(Config.model_validate(base)) as sim:
        cfg = Config.model_validate({**base, "screen": {"listen": "127.0.0.1:0", "interval_s": 0.5}})
        async with Daemon(cfg, status_port=0) as daemon:
            await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
            svc = next(s for s in daemon.services if isinstance(s, ScreenService))
            await browser.open(f"http://127.0.0.1:{svc.port}/")
            await browser.until_js("Number(document.body.dataset.updates) >= 2")
            first = await browser.js(READ_FIGURES)
            assert first["live"] == "1"
            assert first["conn"] == "即時更新"
            assert first["title"] == "校園能源看板"
            assert first["contract"] == "180"
            assert first["room401"].split()[:2] == ["tile", "off"]
            assert first["room401ac"] == "關"
            before_kw = float(first["power"])
            # the school changes: a teacher switches 4年1班's AC on, the kitchen's ovens start
            out = await daemon.control.ask(Ask("ac-401a", {"power_on": True}, Source.TEACHER, "teacher:T1"))
            assert out.ok, out.message
            sim.physics.spec = dataclasses.replace(sim.physics.spec, base_load_kw=sim.physics.spec.base_load_kw + 100)
            await browser.until_js(f"parseFloat(document.getElementById('power-kw').textContent) > {before_kw + 25}"
                                   " && document.querySelector('#room-401 .ac').textContent === '開'")
            after = await browser.js(READ_FIGURES)
            assert after["updates"] > first["updates"]
            assert after["room401"].split()[:2] == ["tile", "on"]
            assert after["acsOn"] != first["acsOn"]
            assert after["points"] >= 1   # today's curve has the minute in progress
        # the daemon is gone: the page says so and keeps trying
        await browser.until_js("document.body.dataset.live === '0'")
        assert await browser.js("document.getElementById('conn').textContent") == "重新連線中…"


def big_school() -> tuple[Config, dict[str, dict[str, Any]], dict[str, Any]]:
    """Four floors of ten classrooms (two ACs each) and a library: a config, its states and an `ems` status."""
    rooms: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []
    states: dict[str, dict[str, Any]] = {"meter-main": {"online": True, "power_w": 163400.0}}
    usage: dict[str, Any] = {}
    for floor in range(1, 5):
        for n in range(1, 11):
            rid = f"{floor}{n:02d}"
            rooms.append({"id": rid, "name": f"{floor + 1}年{n}班", "floor": floor})
            for k, unit in enumerate("ab"):
                devices.append(ac(f"ac-{rid}{unit}", "b", 1, index=len(devices) + 1, room=rid))
                states[f"ac-{rid}{unit}"] = {"online": (floor, n) != (2, 3), "power_on": (n + k) % 3 != 0,
                                             "room_temp_c": 26.0 + (n % 6)}
            usage[rid] = {"today_kwh": 0.7 * n}
    rooms.append({"id": "library", "name": "圖書館", "floor": 2})
    devices.append(ac("ac-library-a", "b", 1, index=99, room="library"))
    states["ac-library-a"] = {"online": True, "power_on": True, "room_temp_c": 27.2}
    cfg = Config.model_validate(site(buses=[tcp_bus("b", 1502)], rooms=rooms, devices=[*devices, meter("b", 2)],
                                     ems={"meter": "meter-main", "contract_kw": 180},
                                     screen={"listen": "127.0.0.1:0", "title": "新北市立示範國民小學"}))
    ems = {"block_avg_kw": 171.2, "projected_kw": 184.9, "allow_kw": 0.0, "contract_kw": 180.0, "shed_units": 3,
           "stale": False, "block_start": "2026-06-16T10:15:00+08:00", "peak_kw": 176.0, "sliding_peak_kw": 178.0,
           "shed": {"ac-101a": "shed_setpoint", "ac-205b": "shed_off"},
           "alarms": [{"level": "warning", "state": "raised", "metric": "projected_kw", "value": 184.9,
                       "threshold": 171.0}],
           "usage": {"day": "2026-06-16", "rooms": usage}}
    return cfg, states, ems


class StillClock:
    """10:20 on a school day, for ever; its sleeps are real."""

    def __init__(self) -> None:
        self.t = datetime(2026, 6, 16, 10, 20, tzinfo=TZ).timestamp()

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class StillEms:
    name = "ems"

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def status(self) -> dict[str, Any]:
        return self.body


class StillHost:
    """A daemon's view frozen in time: what the screen reads, nothing else."""

    def __init__(self, cfg: Config, states: dict[str, dict[str, Any]], ems: dict[str, Any] | None) -> None:
        self.cfg, self.states, self.tz = cfg, states, TZ
        self.clock: Clock = StillClock()
        self.services: list[Any] = [StillEms(ems)] if ems is not None else []


LAYOUT = """(() => {
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const ids = ['title', 'clock', 'alarm', 'demand', 'block', 'curve', 'rooms', 'power-kw', 'gauge', 'curve-svg'];
  return {
    boxes: Object.fromEntries(ids.map((id) => [id, box(document.getElementById(id))])),
    tiles: Array.from(document.querySelectorAll('.tile')).map(box),
    floors: Array.from(document.querySelectorAll('.floor-label')).map((e) => e.textContent),
    scroll: [document.documentElement.scrollWidth, document.documentElement.scrollHeight],
    bigFont: parseFloat(getComputedStyle(document.getElementById('power-kw').parentElement).fontSize),
    tileFont: parseFloat(getComputedStyle(document.querySelector('.tile .temp')).fontSize),
    alarm: document.getElementById('alarm').textContent, state: document.getElementById('block-state').className,
    lang: document.documentElement.lang, label: document.querySelector('#demand h2').textContent,
    curvePaths: document.querySelectorAll('#curve-svg path.line').length,
    points: Number(document.getElementById('curve-svg').getAttribute('data-points')),
    spills: Array.from(document.querySelectorAll('.panel, .tile, .tile > div:not(.use), header, footer, .mid, .big'))
      .filter((e) => e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1)
      .map((e) => e.id || e.className)
  };
})()"""


def _inside(b: list[float]) -> bool:
    return 0 <= b[0] < b[2] <= WIDTH and 0 <= b[1] < b[3] <= HEIGHT


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] - 1 and b[0] < a[2] - 1 and a[1] < b[3] - 1 and b[1] < a[3] - 1


@pytest.mark.parametrize(("lang", "with_ems"), [("en", True), ("zh-TW", False)])
async def test_the_layout_holds_at_1080p(browser: Browser, lang: str, with_ems: bool) -> None:
    """The whole school on one 1080p screen: with the energy manager (an alarm raised, the block projected
    over the contract) in English, and without one (site power only, no alarm) in Chinese."""
    cfg, states, ems = big_school()
    if not with_ems:
        cfg = cfg.model_copy(update={"ems": None})
    assert cfg.screen is not None
    host = StillHost(cfg, states, ems if with_ems else None)
    async with ScreenService(host, cfg.screen) as svc:
        eight = datetime(2026, 6, 16, 8, tzinfo=TZ).timestamp()
        for minute in range(30):                           # half an hour of today's curve, from 08:00
            svc.curve.add(eight + 60 * minute, 140.0 + minute)
        await browser.open(f"http://127.0.0.1:{svc.port}/?lang={lang}")
        await browser.until_js("Number(document.body.dataset.updates) >= 1")
        got = await browser.js(LAYOUT)
        shot = await browser.screenshot()
    assert got["lang"] == lang
    assert got["label"] == ("School demand now" if lang == "en" else "全校用電")
    assert got["scroll"] == [WIDTH, HEIGHT]                       # nothing spills out of the screen
    boxes = got["boxes"]
    shown = ["title", "clock", "demand", "curve", "rooms", "power-kw", "curve-svg"]
    shown += ["alarm", "block", "gauge"] if with_ems else []
    for name in shown:
        assert _inside(boxes[name]), (name, boxes[name])          # every part has a size and is on screen
    for name in {"alarm", "block", "gauge"} - set(shown):
        assert boxes[name] == [0, 0, 0, 0], name                  # and what has nothing to say is not there
    panels = [p for p in ("demand", "block", "curve", "rooms") if p in shown]
    for a, b in itertools.combinations(panels, 2):
        assert not _overlap(boxes[a], boxes[b]), (a, b)
    assert boxes["rooms"][3] >= HEIGHT - 80                       # the rooms fill the screen down to the footer
    assert got["floors"] == ["4F", "3F", "2F", "1F"]
    assert len(got["tiles"]) == 41
    for t in got["tiles"]:
        assert _inside(t), t
        assert t[2] - t[0] >= 100, t                               # a tile wide enough to read
        assert t[3] - t[1] >= 60, t
        assert boxes["rooms"][1] <= t[1], t                        # inside the rooms panel
        assert t[3] <= boxes["rooms"][3], t
    for a, b in itertools.combinations(got["tiles"], 2):
        assert not _overlap(a, b), (a, b)
    assert got["bigFont"] >= 80                                    # readable from across a classroom
    assert got["tileFont"] >= 28
    if with_ems:
        assert "projected demand" in got["alarm"]
        assert "over" in got["state"].split()
    assert got["curvePaths"] == 1
    assert got["points"] == 31                                    # the half hour and the minute in progress
    assert got["spills"] == []                                    # no text cut off by its panel or tile
    # the screenshot is a page: PNG, full size, and far from one flat colour
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(shot[16:20], "big"), int.from_bytes(shot[20:24], "big")
    assert (width, height) == (WIDTH, HEIGHT)
    colours = _colours(shot)
    assert colours > 50, colours


def _colours(png: bytes) -> int:
    """Distinct colours in the screenshot (a blank page has one)."""
    from PIL import Image  # lazy: Pillow comes with matplotlib (requirements-ems.txt), only this check needs it

    with Image.open(io.BytesIO(png)) as im:
        return len(im.convert("RGB").getcolors(maxcolors=1 << 20) or [])
