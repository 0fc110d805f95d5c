"""The human status view (`campus-edge status`, `make demo`): rooms, ACs, temperatures, site power, relay
channels, bookings and doors; in the demo also what the app hears from the gateway (cards, check-in).

`render_status` draws a `GET /status` answer. `Activity` gathers the gateway's events as the app
receives them from the broker (`card`, `presence`, `door`) and `render_activity` draws them.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge.core.config import Config, ModbusDevice, RelayChannel
from edge.core.model import Kind

RECENT_CARDS = 8
RECENT_PRESENCE = 4
RECENT_DOORS = 4
CHANNELS_PER_LINE = 5


def _ac_cell(st: dict[str, Any] | None) -> str:
    if not st or not st.get("online"):
        return "offline      "
    temp = st.get("room_temp_c")
    t = f"{temp:4.1f}°C" if isinstance(temp, (int, float)) else "  ?  "
    if not st.get("power_on"):
        return f"off    {t}"
    sp = st.get("setpoint_c")
    fault = " FAULT " + str(st["fault"]) if st.get("fault") else ""
    return f"{(st.get('mode') or '?')[:4]:4} {sp if sp is not None else '?':>4} {t}{fault}"


def render_status(body: dict[str, Any], cfg: Config | None) -> str:
    """A plain-text page: one line per room, then the site meter."""
    devices: dict[str, dict[str, Any]] = body.get("devices", {})
    gw = body.get("gateway", {})
    lines = [f"campus-edge {gw.get('gateway_id', '')}  school {gw.get('school_id', '')}  "
             f"started {gw.get('started_at', '')}"]
    if cfg is None:
        for dev_id, st in sorted(devices.items()):
            lines.append(f"  {dev_id:16} {'online ' if st.get('online') else 'OFFLINE'} "
                         + " ".join(f"{k}={v}" for k, v in st.items() if k not in ("online", "ts")))
        return "\n".join(lines)
    acs: dict[str, list[str]] = {}
    others: dict[str, list[str]] = {}
    for d in cfg.devices:
        room = getattr(d, "room", None)
        if room is None:
            continue
        if isinstance(d, ModbusDevice) and d.kind == Kind.AC:
            acs.setdefault(room, []).append(d.id)
        elif isinstance(d, RelayChannel):
            others.setdefault(room, []).append(f"{d.kind}:{channel_word(d, devices.get(d.id))}")
    on_count = sum(1 for ids in acs.values() for i in ids if devices.get(i, {}).get("power_on"))
    total = sum(len(v) for v in acs.values())
    lines.append(f"ACs on: {on_count}/{total}")
    lines.append(f"{'room':6} {'name':8} {'AC 1':22} {'AC 2':22} relays")
    for room in cfg.rooms:
        ids = acs.get(room.id, [])
        cells = [_ac_cell(devices.get(i)) for i in ids[:2]] + [""] * (2 - min(2, len(ids)))
        lines.append(f"{room.id:6} {room.name[:8]:8} {cells[0]:22} {cells[1]:22} {' '.join(others.get(room.id, []))}")
    for d in cfg.modbus_devices():
        if d.kind == Kind.METER:
            st = devices.get(d.id, {})
            if st.get("online"):
                kw = (st.get("power_w") or 0) / 1000
                lines.append(f"site power ({d.id}): {kw:7.1f} kW   energy {st.get('energy_kwh') or 0:,.1f} kWh   "
                             f"{st.get('freq_hz') or 0:.2f} Hz"
                             + (f"   contract {cfg.ems.contract_kw:.0f} kW" if cfg.ems else ""))
            else:
                lines.append(f"site power ({d.id}): meter offline")
    lines += render_ems(body.get("ems"), body.get("holds", {}))
    lines += render_channels(devices, cfg) + render_bookings(body.get("bookings")) + render_access(body.get("access"))
    return "\n".join(lines)


def render_ems(st: Mapping[str, Any] | None, holds: Mapping[str, Any]) -> list[str]:
    """The energy manager: this 15-minute block against the contract, the rooms it holds, raised alarms."""
    if not st:
        return []
    if st.get("stale"):
        head = "demand: the meter has not been read recently (no new starts until it is)"
    else:
        over = st.get("projected_kw", 0) > st.get("contract_kw", 0)
        head = (f"demand: block {_hhmm(st.get('block_start'))} average {st.get('block_avg_kw', 0):6.1f} kW,"
                f" projected {st.get('projected_kw', 0):6.1f} kW {'OVER' if over else 'of'}"
                f" contract {st.get('contract_kw', 0):.0f} kW"
                + (f"   highest block {st['peak_kw']:.1f} kW" if st.get("peak_kw") else ""))
    lines = [head]
    shed = st.get("shed") or {}
    if shed:
        words = {"shed_setpoint": "setpoint raised", "shed_off": "held off"}
        queued = {d for d, hs in holds.items() for h in hs if h.get("by") == "ems:queue"}
        cells = [f"{d} {'queued' if d in queued else words.get(k, k)}" for d, k in sorted(shed.items())]
        more = f" (+{len(cells) - 8} more)" if len(cells) > 8 else ""
        lines.append("  energy manager: " + ", ".join(cells[:8]) + more)
    for a in st.get("alarms") or []:
        ack = f", acknowledged by {a['by']}" if a.get("by") else ""
        lines.append(f"  ALARM {a.get('level', '?')}: {a.get('metric')} {a.get('value') or 0:.1f}"
                     f" (limit {a.get('threshold') or 0:.1f}){ack}")
    return lines


def channel_word(ch: RelayChannel, st: Mapping[str, Any] | None) -> str:
    """A relay channel's state in a word: a door `open` or `locked`, a light or fan `on` or `off`, `?` unknown."""
    if not st or not st.get("online"):
        return "?"
    on = st.get("on")
    if on is None:
        return "?"
    if ch.kind == Kind.DOOR:
        return "OPEN" if on else "locked"
    return "on" if on else "off"


def render_channels(devices: Mapping[str, Mapping[str, Any]], cfg: Config) -> list[str]:
    """Every relay channel (lights, fans, doors) with its state, a few to a line."""
    cells = [f"{ch.id} {channel_word(ch, devices.get(ch.id))}" for ch in cfg.relay_channels()]
    if not cells:
        return []
    width = max(len(c) for c in cells) + 2
    rows = [cells[i:i + CHANNELS_PER_LINE] for i in range(0, len(cells), CHANNELS_PER_LINE)]
    return [f"{'relays' if i == 0 else '':8}" + "".join(f"{c:{width}}" for c in row).rstrip()
            for i, row in enumerate(rows)]


def _hhmm(iso_ts: str | None) -> str:
    """`HH:MM:SS` of an ISO 8601 time (the gateway's local time), '' for none."""
    if not iso_ts or "T" not in iso_ts:
        return ""
    return iso_ts.split("T", 1)[1][:8]


def render_bookings(st: Mapping[str, Any] | None) -> list[str]:
    """Rooms that are open for a booking or have bookings to come (the booking service's status)."""
    if not st:
        return []
    lines = []
    for room, r in sorted(st.get("rooms", {}).items()):
        if not r.get("open") and not r.get("bookings"):
            continue
        state = f"OPEN until {_hhmm(r.get('until'))}" if r.get("open") else "locked"
        doors = " ".join(f"{d}:{what or '-'}" for d, what in sorted(r.get("doors", {}).items()))
        booked = "; ".join(f"{b.get('id')} {b.get('title') or ''} {_hhmm(b.get('start'))}-{_hhmm(b.get('end'))}"
                           f" by {b.get('by') or '?'}".replace("  ", " ") for b in r.get("bookings", []))
        lines.append(f"booking {room:8} {state:20} {doors}  [{booked}]")
    return lines


def render_access(st: Mapping[str, Any] | None) -> list[str]:
    """The access list in force and the door decisions so far."""
    if not st:
        return []
    version = st.get("list_version")
    counts = {k: v for k, v in st.get("counts", {}).items() if k not in ("loaded", "rejected")}
    decided = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none yet"
    head = "no access list (every card is denied)" if version is None else \
        f"access list v{version} ({st.get('cards', 0)} cards)"
    return [f"doors: {head}; decisions: {decided}"]


# -- what the app hears: the gateway's events ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Person:
    """Who a card or a beacon belongs to, as the app knows it (the access list it sent)."""

    id: str
    room: str


class Activity:
    """The gateway's `card`, `presence` and `door` events as they arrive (newest first when drawn)."""

    def __init__(self, people: Mapping[str, Person] | None = None) -> None:
        self.people = dict(people or {})              # card id -> person
        self.cards: deque[dict[str, Any]] = deque(maxlen=RECENT_CARDS)
        self.presence: deque[dict[str, Any]] = deque(maxlen=RECENT_PRESENCE)
        self.doors: deque[dict[str, Any]] = deque(maxlen=RECENT_DOORS)
        self.gate_taps: Counter[str] = Counter()     # card -> taps at a gate reader
        self.present: set[str] = set()               # beacons (their person if known) in range now
        self.counts: Counter[str] = Counter()

    def note(self, event: Mapping[str, Any]) -> None:
        """One event payload (CONTRACT.md section 3); other kinds are ignored."""
        kind = event.get("kind")
        if kind == "card":
            body = dict(event)
            if body.get("purpose") == "gate":
                card = str(body.get("card"))
                self.gate_taps[card] += 1
                body["what"] = "arrival" if self.gate_taps[card] % 2 == 1 else "departure"
            self.counts[str(body.get("what") or body.get("decision") or body.get("purpose"))] += 1
            self.cards.appendleft(body)
        elif kind == "presence":
            who = str(event.get("person") or event.get("beacon"))
            if event.get("change") == "arrive":
                self.present.add(who)
            else:
                self.present.discard(who)
            self.counts[f"presence {event.get('change')}"] += 1
            self.presence.appendleft(dict(event))
        elif kind == "door":
            self.doors.appendleft(dict(event))

    def who(self, event: Mapping[str, Any]) -> str:
        person = event.get("person")
        known = self.people.get(str(event.get("card")))
        if person is None and known is not None:
            person = known.id
        if person is None:
            return "unknown"
        room = known.room if known is not None and known.id == person else ""
        return f"{person}" + (f" ({room})" if room else "")


def render_activity(a: Activity) -> list[str]:
    """Arrivals, check-in, the latest card taps and door openings (gateway times)."""
    arrived = sum(1 for n in a.gate_taps.values() if n % 2 == 1)
    lines = [f"gate: {arrived} pupils in ({a.counts['arrival']} arrivals, {a.counts['departure']} departures);"
             f" beacons in range: {len(a.present)} ({', '.join(sorted(a.present)[:6])})"]
    for e in a.presence:
        lines.append(f"  {_hhmm(e.get('ts'))}  {e.get('scanner')}  {e.get('person') or e.get('beacon')}"
                     f" {e.get('change')} ({e.get('rssi')} dBm)")
    lines.append("recent cards (gateway time):")
    for e in a.cards:
        if e.get("purpose") == "door":
            what = f"{e.get('door')} {e.get('decision')}" + \
                (f" ({e.get('reason')})" if e.get("decision") != "granted" and e.get("reason") else "")
        else:
            what = str(e.get("what") or e.get("purpose"))
        lines.append(f"  {_hhmm(e.get('ts'))}  {e.get('reader')!s:12} card {e.get('card')!s:>9}  "
                     f"{a.who(e):22} {what}")
    for e in a.doors:
        lines.append(f"  {_hhmm(e.get('ts'))}  door {e.get('door')} {e.get('action')}"
                     + (f" {e.get('seconds')} s" if e.get("seconds") is not None else "")
                     + f" by {e.get('by')}")
    return lines
