"""The school's energy screen (能源大屏): a read-only web page on the LAN, served by the daemon.

`screen: {listen: "0.0.0.0:8080"}` turns it on (CONTRACT.md section 2). What the page shows is the
school's demand against the contract, the current 15-minute block's average and projection, the alarm
state, each room's ACs and temperature (by floor), today's demand curve and each class's AC use today.

Its own tiny listener, not `edge.http`'s: that one is loopback-only by design and answers one JSON
response per connection, while the screen faces the LAN and streams (server-sent events). What the
listener can do is fixed here and nothing more: GET of `/` (the page, `?lang=en` for English), the
static files of `edge/screen_static` (read once at start), `/api/snapshot` (JSON) and `/api/stream`
(SSE). Any other method is 405, any other path 404. It holds no reference to the control entry, the
arbiter, the cloud link or the control socket: it reads device states and the energy manager's
status, and copies out only what the screen shows (no bookings, cards, people or holds).

Cheap by construction: one tick every `interval_s` samples the meter into today's curve (a ring of
one point per minute since the start, kept here), and only when someone is watching builds ONE
snapshot, encodes it once and writes the same bytes to every viewer (a viewer too far behind is
dropped; its page reconnects). An unchanged snapshot is not sent again before `RESEND_S`. A new
viewer gets the whole curve once; each tick carries only the curve's last minutes, which the page
merges by minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import json
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

from edge.core.clock import Clock, iso
from edge.core.config import Config, ScreenConfig
from edge.core.model import Kind
from ems.types import BLOCK_S

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("screen_static")
LANGS = ("zh-TW", "en")
CURVE_MINUTES = 24 * 60         # the ring holds a day of one-minute points
CURVE_TAIL = 3                  # minutes each tick repeats (the page merges by minute: a lost tick loses nothing)
RESEND_S = 10.0                 # an unchanged snapshot goes out again this often: the page's sign the stream lives
HEAD_LIMIT = 8192               # request line and headers, bytes
REQUEST_TIMEOUT_S = 5.0         # to send the request head (a slow or idle client is let go)
OVER_TIMEOUT_S = 1.0            # the same, for a connection beyond the limit (read only to answer it 503)
EXTRA_CONNECTIONS = 16          # page and asset requests beside the viewers' streams
SLOW_VIEWER_BYTES = 256 * 1024  # a viewer this far behind is dropped (its page reconnects and catches up)
VIEWER_INPUT_BYTES = 4096       # what a viewer may send after its request before it is let go
RETRY_MS = 3000                 # EventSource's reconnect delay
ALARM_LEVELS = ("notice", "warning", "critical")
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json"}
SECURITY_HEADERS = ("X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"
                    "Content-Security-Policy: default-src 'self'; img-src 'self' data:; base-uri 'none';"
                    " form-action 'none'\r\n")


class Host(Protocol):
    """What the screen reads of the daemon (and nothing that writes)."""

    cfg: Config
    clock: Clock
    tz: ZoneInfo
    states: dict[str, dict[str, Any]]
    services: list[Any]


@dataclass(frozen=True, slots=True)
class RoomLayout:
    id: str
    name: str
    floor: int
    acs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Layout:
    """What the screen shows of the site, fixed at start: the meter and the rooms with ACs, by floor."""

    school_id: str
    title: str | None
    meter: str | None
    rooms: tuple[RoomLayout, ...]

    @classmethod
    def of(cls, cfg: Config, title: str | None = None) -> Layout:
        acs: dict[str, list[str]] = {}
        for d in cfg.modbus_devices():
            if d.kind == Kind.AC and d.room is not None:
                acs.setdefault(d.room, []).append(d.id)
        meter = cfg.ems.meter if cfg.ems is not None else next(
            (d.id for d in cfg.modbus_devices() if d.kind == Kind.METER), None)
        rooms = tuple(RoomLayout(r.id, r.name or r.id, r.floor, tuple(acs[r.id])) for r in cfg.rooms if r.id in acs)
        return cls(cfg.site.school_id, title, meter, rooms)


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


class Curve:
    """Today's demand curve: the site power averaged per minute, a ring of `CURVE_MINUTES` points."""

    def __init__(self, minutes: int = CURVE_MINUTES) -> None:
        self.closed: deque[tuple[int, float]] = deque(maxlen=minutes)
        self._minute: int | None = None
        self._sum_kw = 0.0
        self._n = 0

    def add(self, now: float, kw: float) -> None:
        minute = int(now // 60) * 60
        if self._minute is not None and minute < self._minute:   # the clock stepped back: the ring stays in order
            while self.closed and self.closed[-1][0] >= minute:
                self.closed.pop()
            self._minute = None
        if minute != self._minute:
            if self._minute is not None and self._n:
                self.closed.append((self._minute, round(self._sum_kw / self._n, 2)))
            self._minute, self._sum_kw, self._n = minute, 0.0, 0
        self._sum_kw += kw
        self._n += 1

    def points(self, since: float, last: int | None = None) -> list[list[float]]:
        """[[minute start (unix s), kW], ...] from `since`, the minute in progress last; with `last`, so many."""
        closed: Iterable[tuple[int, float]] = self.closed
        if last is not None:
            closed = list(itertools.islice(reversed(self.closed), last))[::-1]
        out: list[list[float]] = [[m, kw] for m, kw in closed if m >= since]
        if self._minute is not None and self._n and self._minute >= since:
            out.append([self._minute, round(self._sum_kw / self._n, 2)])
        return out[-last:] if last is not None else out


def _alarm(a: Mapping[str, Any]) -> dict[str, Any]:
    """An active alarm as the screen shows it (who acknowledged it is not shown)."""
    return {k: a.get(k) for k in ("level", "state", "metric", "value", "threshold")}


def snapshot(layout: Layout, states: Mapping[str, Mapping[str, Any]], ems: Mapping[str, Any] | None,
             now: float, tz: ZoneInfo) -> dict[str, Any]:
    """What the screen shows right now (without the curve), from device states and the `ems` status."""
    meter = states.get(layout.meter, {}) if layout.meter is not None else {}
    meter_on = bool(meter.get("online"))
    power_w = _num(meter.get("power_w")) if meter_on else None
    usage_rooms: Mapping[str, Any] = ((ems or {}).get("usage") or {}).get("rooms") or {}
    shed: Mapping[str, Any] = (ems or {}).get("shed") or {}
    floors: dict[int, list[dict[str, Any]]] = {}
    on_total = online_total = units_total = 0
    for r in layout.rooms:
        units = [states.get(a, {}) for a in r.acs]
        live = [u for u in units if u.get("online")]
        temps = [t for u in live if (t := _num(u.get("room_temp_c"))) is not None]
        on = sum(1 for u in live if u.get("power_on"))
        today = _num((usage_rooms.get(r.id) or {}).get("today_kwh"))
        on_total, online_total, units_total = on_total + on, online_total + len(live), units_total + len(units)
        floors.setdefault(r.floor, []).append({
            "id": r.id, "name": r.name, "units": len(units), "online": len(live), "on": on,
            "temp_c": round(sum(temps) / len(temps), 1) if temps else None,
            "today_kwh": None if today is None else round(today, 2),
            "shed": any(a in shed for a in r.acs), "fault": any(u.get("fault") for u in live)})
    alarms = [_alarm(a) for a in (ems or {}).get("alarms") or []]
    level = max((ALARM_LEVELS.index(a["level"]) for a in alarms if a["level"] in ALARM_LEVELS), default=None)
    block: dict[str, Any] | None = None
    if ems is not None:
        start = ems.get("block_start")
        end = None if start is None else iso(datetime.fromisoformat(start).timestamp() + BLOCK_S, tz)
        block = {k: ems.get(k) for k in ("contract_kw", "block_avg_kw", "projected_kw", "allow_kw", "stale",
                                         "peak_kw", "sliding_peak_kw", "shed_units")}
        block.update(block_start=start, block_end=end)
    today_kwh = [k for v in usage_rooms.values() if (k := _num((v or {}).get("today_kwh"))) is not None]
    return {
        "ts": iso(now, tz), "school_id": layout.school_id, "title": layout.title,
        "site": {"meter": layout.meter, "online": meter_on,
                 "power_kw": None if power_w is None else round(power_w / 1000, 2),
                 "energy_kwh": _num(meter.get("energy_kwh")) if meter_on else None},
        "ems": block,
        "alarm_level": None if level is None else ALARM_LEVELS[level], "alarms": alarms,
        "acs": {"on": on_total, "online": online_total, "units": units_total},
        "usage_day": ((ems or {}).get("usage") or {}).get("day"),
        "ac_today_kwh": round(sum(today_kwh), 2) if today_kwh else None,
        "floors": [{"floor": f, "rooms": rooms} for f, rooms in sorted(floors.items(), reverse=True)],
    }


def parse_listen(listen: str) -> tuple[str, int]:
    """"0.0.0.0:8080" -> ("0.0.0.0", 8080); "[::]:8080" -> ("::", 8080)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def page_url(host: str, port: int) -> str:
    """The page's address for a browser on this machine (a listener on every address is also on loopback)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/"


def _page(template: str, lang: str, title: str | None) -> bytes:
    return (template.replace("__LANG__", lang).replace("__TITLE__", html.escape(title or "")).encode())


def load_static(directory: Path, title: str | None) -> tuple[dict[str, tuple[bytes, str]], dict[str, bytes]]:
    """The assets by URL path, and the page per language (read once: nothing on disk is served by name)."""
    assets: dict[str, tuple[bytes, str]] = {}
    for f in sorted(directory.iterdir()):
        if f.is_file() and f.name != "index.html" and f.suffix in CONTENT_TYPES:
            assets[f"/{f.name}"] = (f.read_bytes(), CONTENT_TYPES[f.suffix])
    template = (directory / "index.html").read_text(encoding="utf-8")
    return assets, {lang: _page(template, lang, title) for lang in LANGS}


class ScreenService:
    """The energy screen's listener and its tick (see the module docstring)."""

    name = "screen"

    def __init__(self, host: Host, screen: ScreenConfig) -> None:
        if screen.listen is None:
            raise ValueError("screen.listen: the screen needs host:port to serve on")
        self.host = host
        self.screen = screen
        self.bind_host, self.port = parse_listen(screen.listen)
        self.layout = Layout.of(host.cfg, screen.title)
        self.curve = Curve()
        self.assets, self.pages = load_static(STATIC_DIR, screen.title)
        self.viewers: set[asyncio.StreamWriter] = set()
        self.ticks = 0
        self.built = 0            # snapshots built (one a tick while someone watches, not one per viewer)
        self.sent = 0             # frames sent (each one to every viewer)
        self._cache: tuple[int, dict[str, Any]] | None = None
        self._last_body: str | None = None
        self._last_sent = float("-inf")
        self._conns: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_daemon(cls, host: Host) -> ScreenService | None:
        screen = host.cfg.screen
        return cls(host, screen) if screen is not None and screen.listen is not None else None

    @property
    def url(self) -> str:
        return page_url(self.bind_host, self.port)

    # -- lifecycle ----------------------------------------------------------------------------------
    async def __aenter__(self) -> ScreenService:
        self._server = await asyncio.start_server(self._serve, self.bind_host or None, self.port, limit=HEAD_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(self._run(), name="screen")
        log.info("energy screen on %s (listening on %s)", self.url, self.screen.listen)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for w in list(self.viewers):
            w.close()
        conns = list(self._conns)
        for t in conns:
            t.cancel()
        await asyncio.gather(*conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _run(self) -> None:
        while True:
            try:
                self.tick(self.host.clock.time())
            except Exception:   # the screen must not stop on one bad tick: logged, the next one runs
                log.exception("screen: tick failed")
            await self.host.clock.sleep(self.screen.interval_s)

    # -- what it shows ------------------------------------------------------------------------------
    def _ems_status(self) -> dict[str, Any] | None:
        ems = next((s for s in self.host.services if getattr(s, "name", None) == "ems"), None)
        return None if ems is None else dict(ems.status())

    def _since(self, now: float) -> float:
        """Local midnight: the curve shows today."""
        return datetime.fromtimestamp(now, self.host.tz).replace(hour=0, minute=0, second=0,
                                                                 microsecond=0).timestamp()

    def current(self, now: float) -> dict[str, Any]:
        """This tick's snapshot, built at most once a tick whoever asks."""
        if self._cache is None or self._cache[0] != self.ticks:
            self._cache = (self.ticks, snapshot(self.layout, self.host.states, self._ems_status(), now, self.host.tz))
            self.built += 1
        return self._cache[1]

    def full(self, now: float) -> dict[str, Any]:
        """The snapshot with today's whole curve (`/api/snapshot`, a new viewer's first frame)."""
        since = self._since(now)
        return {**self.current(now), "curve": {"since": since, "full": True, "points": self.curve.points(since)}}

    def tick(self, now: float) -> None:
        """Sample the meter into the curve; while someone watches, one snapshot to every viewer."""
        self.ticks += 1
        meter = self.host.states.get(self.layout.meter, {}) if self.layout.meter is not None else {}
        power_w = _num(meter.get("power_w")) if meter.get("online") else None
        if power_w is not None:
            self.curve.add(now, power_w / 1000)
        self._drop_gone()
        if not self.viewers:
            return
        since = self._since(now)
        snap = self.current(now)
        curve = {"since": since, "full": False, "points": self.curve.points(since, last=CURVE_TAIL)}
        body = json.dumps({**{k: v for k, v in snap.items() if k != "ts"}, "curve": curve},
                          ensure_ascii=False, separators=(",", ":"))
        mono = self.host.clock.monotonic()
        if body == self._last_body and mono - self._last_sent < RESEND_S:
            return
        self._last_body, self._last_sent = body, mono
        data = '{"ts":' + json.dumps(snap["ts"]) + "," + body[1:]
        self.broadcast(f"event: snapshot\ndata: {data}\n\n".encode())

    def broadcast(self, frame: bytes) -> None:
        """The same bytes to every viewer; one too far behind is let go."""
        self.sent += 1
        for w in list(self.viewers):
            if w.transport.get_write_buffer_size() > SLOW_VIEWER_BYTES:
                log.info("screen: a viewer fell %d bytes behind: dropped", w.transport.get_write_buffer_size())
                self.viewers.discard(w)
                w.close()
            else:
                w.write(frame)

    def _drop_gone(self) -> None:
        for w in [w for w in self.viewers if w.is_closing()]:
            self.viewers.discard(w)

    # -- HTTP ---------------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            over = len(self._conns) > self.screen.max_viewers + EXTRA_CONNECTIONS
            try:   # read even when refusing: a socket closed on an unread request is reset, the answer lost
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), OVER_TIMEOUT_S if over
                                              else REQUEST_TIMEOUT_S)
            except asyncio.LimitOverrunError:
                self._reply(writer, 431, b"request head too large\n", "text/plain; charset=utf-8")
                return
            except (TimeoutError, asyncio.IncompleteReadError):
                return
            if over:
                self._reply(writer, 503, b"too many connections\n", "text/plain; charset=utf-8", "Retry-After: 10\r\n")
                return
            await self._answer(head, reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("screen: request failed")
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._reply(writer, 500, b"internal error\n", "text/plain; charset=utf-8")
        finally:
            self.viewers.discard(writer)
            if task is not None:
                self._conns.discard(task)
            writer.close()

    async def _answer(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/") or not parts[1].startswith("/"):
            self._reply(writer, 400, b"malformed request line\n", "text/plain; charset=utf-8")
            return
        method, target = parts[0], parts[1]
        if method != "GET":   # read-only: nothing on this listener takes a body or changes anything
            self._reply(writer, 405, b"only GET\n", "text/plain; charset=utf-8", "Allow: GET\r\n")
            return
        path, _, query = target.partition("?")
        if path in ("/", "/index.html"):
            lang = (parse_qs(query).get("lang") or [self.screen.lang])[0]
            page = self.pages.get(lang, self.pages[self.screen.lang])
            self._reply(writer, 200, page, CONTENT_TYPES[".html"], "Cache-Control: no-cache\r\n")
        elif path in self.assets:
            body, ctype = self.assets[path]
            self._reply(writer, 200, body, ctype, "Cache-Control: no-cache\r\n")
        elif path == "/api/snapshot":
            body = json.dumps(self.full(self.host.clock.time()), ensure_ascii=False).encode()
            self._reply(writer, 200, body, "application/json; charset=utf-8", "Cache-Control: no-store\r\n")
        elif path == "/api/stream":
            await self._stream(reader, writer)
        else:
            self._reply(writer, 404, b"not found\n", "text/plain; charset=utf-8")

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.viewers) >= self.screen.max_viewers:
            self._reply(writer, 503, b"too many viewers\n", "text/plain; charset=utf-8", "Retry-After: 10\r\n")
            return
        first = json.dumps(self.full(self.host.clock.time()), ensure_ascii=False, separators=(",", ":"))
        writer.write(("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                      "Cache-Control: no-store\r\nConnection: close\r\n" + SECURITY_HEADERS + "\r\n"
                      f"retry: {RETRY_MS}\n\nevent: snapshot\ndata: {first}\n\n").encode())
        self.viewers.add(writer)
        received = 0
        while received <= VIEWER_INPUT_BYTES:   # until the viewer goes (it has nothing to say)
            data = await reader.read(1024)
            if not data:
                break
            received += len(data)

    @staticmethod
    def _reply(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str, extra: str = "") -> None:
        writer.write((f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n{SECURITY_HEADERS}{extra}\r\n").encode()
                     + body)
