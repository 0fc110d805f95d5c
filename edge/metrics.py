"""Prometheus text exposition (format 0.0.4) of the running daemon, served at GET /metrics.

Written by hand rather than with prometheus_client: every figure already lives in the daemon's own
counters (the Modbus buses' stats, the cloud link's counters, the energy manager's status, /proc),
so a scrape only reads them; the library would add ~2 MB RSS to the daemon and a registry of its own
to keep in step. `Exposition` keeps the format's rules: one HELP and TYPE per family, a family's
samples together, label values escaped, no sample twice, counters named `_total`, histograms as
cumulative `_bucket{le}` series ending in `+Inf` with `_sum` and `_count`.

A histogram comes in as a snapshot mapping: `{"buckets": [[le, cumulative count], ...], "sum": s,
"count": n}` (bounds increasing and finite; the `+Inf` bucket is `count`). The Modbus engine's per
device `latency_hist_s` and `poll_period_hist_s`, where it keeps them, are rendered from that shape.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, Protocol

from edge.core.clock import Clock
from edge.core.config import Config
from edge.core.control import REJECTED_CODES
from edge.core.driver import Driver
from edge.core.events import EventBus
from edge.core.model import Kind

log = logging.getLogger(__name__)

PREFIX = "campus_edge_"
MQTT_CONNECTED_HELP = "1 while an MQTT link is connected (link: cloud, homeassistant)"

MetricType = Literal["counter", "gauge", "histogram"]
Labels = Mapping[str, str]

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_SUFFIXES: dict[MetricType, tuple[str, ...]] = {"counter": ("",), "gauge": ("",),
                                                "histogram": ("_bucket", "_sum", "_count")}


def format_value(v: float) -> str:
    """A sample value as the format writes it: integers without a point, NaN and ±Inf spelled out."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


@dataclass(slots=True)
class _Family:
    name: str
    kind: MetricType
    help: str
    lines: list[str] = field(default_factory=list)
    keys: set[tuple[str, tuple[tuple[str, str], ...]]] = field(default_factory=set)


class Exposition:
    """Metric families in the order first declared; `text()` is the exposition."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def _family(self, name: str, kind: MetricType, help_text: str) -> _Family:
        if not _NAME.match(name):
            raise ValueError(f"metric name {name!r} is not a Prometheus name")
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name!r}: a counter's name ends in _total")
        fam = self._families.get(name)
        if fam is None:
            fam = self._families[name] = _Family(name, kind, help_text)
        elif fam.kind != kind or fam.help != help_text:
            raise ValueError(f"metric {name!r} declared twice, as {fam.kind} and as {kind}")
        return fam

    def _sample(self, fam: _Family, suffix: str, labels: Labels, value: float) -> None:
        if suffix not in _SUFFIXES[fam.kind]:
            raise ValueError(f"{fam.name}: no sample {suffix!r} in a {fam.kind}")
        for k in labels:
            if not _LABEL.match(k) or k.startswith("__"):
                raise ValueError(f"{fam.name}: label name {k!r} is not allowed")
        key = (suffix, tuple(sorted(labels.items())))
        if key in fam.keys:
            raise ValueError(f"{fam.name}{suffix}{dict(labels)}: the same sample twice")
        fam.keys.add(key)
        body = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in labels.items())
        fam.lines.append(f"{fam.name}{suffix}{{{body}}} {format_value(value)}" if body
                         else f"{fam.name}{suffix} {format_value(value)}")

    def declare(self, name: str, kind: MetricType, help_text: str) -> None:
        """A family with no samples yet (its HELP and TYPE are written all the same)."""
        self._family(name, kind, help_text)

    def gauge(self, name: str, help_text: str, value: float | bool | None, labels: Labels | None = None) -> None:
        """A gauge sample; None (not known) writes no sample."""
        fam = self._family(name, "gauge", help_text)
        if value is not None:
            self._sample(fam, "", labels or {}, float(value))

    def counter(self, name: str, help_text: str, value: float | None, labels: Labels | None = None) -> None:
        fam = self._family(name, "counter", help_text)
        if value is not None:
            if value < 0:
                raise ValueError(f"{name}: a counter is never negative ({value})")
            self._sample(fam, "", labels or {}, float(value))

    def histogram(self, name: str, help_text: str, snapshot: Mapping[str, Any], labels: Labels | None = None) -> None:
        """One histogram series from a snapshot (see the module docstring)."""
        fam = self._family(name, "histogram", help_text)
        labels = dict(labels or {})
        if "le" in labels:
            raise ValueError(f"{name}: `le` is the bucket label")
        buckets = [(float(le), float(n)) for le, n in snapshot["buckets"]]
        count, total = float(snapshot["count"]), float(snapshot["sum"])
        bounds = [le for le, _ in buckets]
        counts = [n for _, n in buckets] + [count]
        if any(not math.isfinite(le) for le in bounds) or any(a >= b for a, b in pairwise(bounds)):
            raise ValueError(f"{name}: bucket bounds must be finite and increasing, got {bounds}")
        if any(a > b for a, b in pairwise(counts)) or counts[0] < 0:
            raise ValueError(f"{name}: bucket counts must be cumulative (never decreasing), got {counts}")
        for le, n in buckets:
            self._sample(fam, "_bucket", {**labels, "le": format_value(le)}, n)
        self._sample(fam, "_bucket", {**labels, "le": "+Inf"}, count)
        self._sample(fam, "_sum", labels, total)
        self._sample(fam, "_count", labels, count)

    def text(self) -> str:
        out: list[str] = []
        for fam in self._families.values():
            out.append(f"# HELP {fam.name} {escape_help(fam.help)}")
            out.append(f"# TYPE {fam.name} {fam.kind}")
            out += fam.lines
        return "\n".join(out) + "\n"


# -- the process ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProcessStats:
    cpu_s: float
    rss_bytes: int
    vms_bytes: int
    threads: int
    open_fds: int | None


def process_stats(proc: Path = Path("/proc/self")) -> ProcessStats | None:
    """CPU seconds (user + system), resident and virtual memory, threads and open files, from /proc."""
    try:
        stat = (proc / "stat").read_text(encoding="ascii")
    except OSError:
        return None
    f = stat.rsplit(")", 1)[1].split()   # the command name may hold spaces and parentheses
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        fds: int | None = len(os.listdir(proc / "fd"))
    except OSError:
        fds = None
    # fields 14, 15 (utime, stime), 20 (threads), 23 (vsize), 24 (rss pages) of proc(5); f[0] is field 3
    return ProcessStats(cpu_s=(int(f[11]) + int(f[12])) / ticks, rss_bytes=int(f[21]) * os.sysconf("SC_PAGE_SIZE"),
                        vms_bytes=int(f[20]), threads=int(f[17]), open_fds=fds)


def add_process(exp: Exposition, ps: ProcessStats | None) -> None:
    exp.declare("process_cpu_seconds_total", "counter", "CPU time of the daemon, user and system, in seconds")
    exp.declare("process_resident_memory_bytes", "gauge", "Resident memory of the daemon (budget: 60 MB on a Pi)")
    if ps is None:
        return
    exp.counter("process_cpu_seconds_total", "CPU time of the daemon, user and system, in seconds", ps.cpu_s)
    exp.gauge("process_resident_memory_bytes", "Resident memory of the daemon (budget: 60 MB on a Pi)", ps.rss_bytes)
    exp.gauge("process_virtual_memory_bytes", "Virtual memory of the daemon", ps.vms_bytes)
    exp.gauge("process_threads", "Threads of the daemon", ps.threads)
    exp.gauge("process_open_fds", "Open file descriptors of the daemon", ps.open_fds)


# -- the Modbus buses -------------------------------------------------------------------------------
def add_modbus(exp: Exposition, stats: Mapping[str, Mapping[str, Any]]) -> None:
    """Per bus and device, from `ModbusEngine.stats()` (the Modbus driver's `stats()`)."""
    p = PREFIX + "modbus_"
    h_req = "Modbus transactions sent on the bus (each retry counts)"
    h_err = "Modbus transactions that failed, by kind (timeout, garbage, exception, disconnected)"
    exp.declare(p + "requests_total", "counter", h_req)
    exp.declare(p + "errors_total", "counter", h_err)
    for bus, st in sorted(stats.items()):
        b = {"bus": bus}
        exp.gauge(p + "connected", "1 while the bus's connection (TCP or serial port) is open", st.get("connected"), b)
        exp.counter(p + "requests_total", h_req, st.get("requests", 0), b)
        for kind, n in sorted(st.get("errors", {}).items()):
            exp.counter(p + "errors_total", h_err, n, {**b, "kind": kind})
        exp.counter(p + "writes_total", "Writes carried out (each is read back)", st.get("writes"), b)
        exp.counter(p + "pulses_total", "Timed relay pulses sent (door unlocks)", st.get("pulses"), b)
        exp.counter(p + "verify_failures_total", "Writes the device did not hold when read back",
                    st.get("verify_failures"), b)
        exp.counter(p + "connects_total", "Connections opened", st.get("connects"), b)
        exp.gauge(p + "queue_depth", "Transactions waiting for the bus", st.get("queue"), b)
        exp.gauge(p + "requests_per_cycle", "Merged reads in one poll cycle", st.get("requests_per_cycle"), b)
        exp.gauge(p + "units_in_backoff", "Unit ids that stopped answering (probed with backoff)",
                  len(st.get("units_in_backoff", ())), b)
        for dev, d in sorted(st.get("devices", {}).items()):
            db = {**b, "device": dev}
            exp.gauge(p + "device_online", "1 while the device answers its reads", d.get("online"), db)
            exp.gauge(p + "device_backoff", "1 while the device answers with exceptions and is probed with backoff",
                      d.get("in_backoff"), db)
            for fld, n in sorted(d.get("rejected", {}).items()):
                exp.counter(p + "rejected_values_total", "Values a device sent that its profile rejects"
                            " (out of range, not a number)", n, {**db, "field": fld})
            period = d.get("poll_period_s", {})
            for stat in ("mean", "p50", "p99", "max"):
                exp.gauge(p + "poll_period_window_seconds", "Time between a device's reads over its last 1024 reads"
                          " (stat: mean, p50, p99, max)", period.get(stat), {**db, "stat": stat})
            if "latency_hist_s" in d:
                exp.histogram(p + "request_duration_seconds", "Time a Modbus transaction took, request to answer",
                              d["latency_hist_s"], db)
            if "poll_period_hist_s" in d:
                exp.histogram(p + "poll_period_seconds", "Time between two reads of a device",
                              d["poll_period_hist_s"], db)


def add_last_read(exp: Exposition, stats: Mapping[str, Mapping[str, Any]], now: float) -> None:
    for bus, st in sorted(stats.items()):
        for dev, d in sorted(st.get("devices", {}).items()):
            last = d.get("last_ok")
            exp.gauge(PREFIX + "modbus_device_last_read_age_seconds", "Seconds since a device's last good read",
                      None if last is None else max(0.0, now - last), {"bus": bus, "device": dev})


# -- the cloud link and Home Assistant --------------------------------------------------------------
def add_cloud(exp: Exposition, stats: Mapping[str, Any], head_age_s: float | None) -> None:
    """From `CloudService.stats()`, and the age of the outbox's next message."""
    p = PREFIX + "mqtt_"
    exp.gauge(p + "connected", MQTT_CONNECTED_HELP, stats.get("connected"), {"link": "cloud"})
    mqtt = stats.get("mqtt", {})
    exp.counter(p + "connects_total", "MQTT connections made", mqtt.get("connects"), {"link": "cloud"})
    exp.counter(p + "disconnects_total", "MQTT connections lost", mqtt.get("disconnects"), {"link": "cloud"})
    for direction in ("sent", "received"):
        for cat, n in sorted(mqtt.get(direction, {}).items()):
            exp.counter(f"{p}messages_{direction}_total", f"MQTT messages {direction}, by category", n,
                        {"link": "cloud", "category": cat})
        for cat, n in sorted(mqtt.get(f"{direction}_bytes", {}).items()):
            exp.counter(f"{p}{direction}_bytes_total", f"MQTT payload bytes {direction}, by category", n,
                        {"link": "cloud", "category": cat})
    ob = stats.get("outbox", {})
    for cls, n in sorted(ob.get("pending", {}).items()):
        exp.gauge(PREFIX + "outbox_pending", "Messages stored in the outbox and not yet acknowledged, by class", n,
                  {"class": cls})
    exp.gauge(PREFIX + "outbox_bytes", "Bytes the outbox holds", ob.get("bytes_used"))
    exp.gauge(PREFIX + "outbox_alarm", "1 while the outbox is near its limit (events and results at risk)",
              ob.get("alarm"))
    exp.gauge(PREFIX + "outbox_head_age_seconds", "Age of the message the link sends next (results first, then"
              " events, then telemetry); absent when the outbox is empty", head_age_s)
    exp.counter(PREFIX + "commands_received_total", "Messages received on P/cmd", stats.get("commands"))


def add_results(exp: Exposition, source: str, by_code: Mapping[str, int]) -> None:
    h = "Command results, by source, status and code (CONTRACT.md section 3)"
    for code, n in sorted(by_code.items()):
        status = "ok" if code == "ok" else "rejected" if code in REJECTED_CODES else "failed"
        exp.counter(PREFIX + "command_results_total", h, n, {"source": source, "status": status, "code": code})


# -- the energy manager -----------------------------------------------------------------------------
def add_ems(exp: Exposition, st: Mapping[str, Any]) -> None:
    """From `EnergyService.status()`."""
    p = PREFIX + "ems_"
    exp.gauge(p + "block_avg_kw", "Average demand of the current 15-minute block so far", st.get("block_avg_kw"))
    exp.gauge(p + "projected_kw", "The current block's average if the present power holds to its end",
              st.get("projected_kw"))
    exp.gauge(p + "contract_kw", "Contract capacity", st.get("contract_kw"))
    exp.gauge(p + "allow_kw", "Power the rest of the block may draw and still end at the contract",
              st.get("allow_kw"))
    exp.gauge(p + "shed_units", "AC units the energy manager holds back", st.get("shed_units"))
    exp.gauge(p + "meter_stale", "1 while the meter's data is too old to admit new starts", st.get("stale"))
    exp.gauge(p + "peak_kw", "Highest block average this month", st.get("peak_kw"))
    exp.gauge(p + "sliding_peak_kw", "Highest sliding 15-minute average this month", st.get("sliding_peak_kw"))
    exp.gauge(p + "alarms_active", "Demand and power-quality alarms raised and not cleared",
              len(st.get("alarms", ())))
    exp.counter(p + "turns_total", "Control turns run", st.get("turns"))
    for room, use in sorted((st.get("usage") or {}).get("rooms", {}).items()):
        exp.gauge(p + "room_ac_today_kwh", "A room's AC energy today", use.get("today_kwh"), {"room": room})
        exp.gauge(p + "room_ac_today_run_hours", "A room's AC running hours today", use.get("today_run_h"),
                  {"room": room})


# -- the daemon -------------------------------------------------------------------------------------
class Gateway(Protocol):
    """What a scrape reads of the daemon."""

    cfg: Config
    clock: Clock
    started_at: float
    kinds: dict[str, Kind]
    states: dict[str, dict[str, Any]]
    drivers: list[Driver]
    services: list[Any]
    cloud: Any
    bus: EventBus

    def holds(self, device_id: str) -> list[dict[str, Any]]: ...


def _head_age(cloud: Any, now: float) -> float | None:
    try:
        head = cloud.outbox.peek(1)
    except sqlite3.Error as exc:   # closed during a stop, or a damaged database: no figure, no failed scrape
        log.debug("metrics: outbox not readable: %s", exc)
        return None
    return max(0.0, now - head[0].ts) if head else None


async def render(gw: Gateway, version: str) -> str:
    """The whole exposition; the outbox (SQLite) is read in a worker thread."""
    head_age = None
    if gw.cloud is not None:
        head_age = await asyncio.to_thread(_head_age, gw.cloud, gw.clock.time())
    return exposition(gw, version, head_age).text()


def exposition(gw: Gateway, version: str, head_age_s: float | None = None) -> Exposition:
    now = gw.clock.time()
    exp = Exposition()
    site = gw.cfg.site
    exp.gauge(PREFIX + "info", "The gateway (labels); always 1",
              1, {"school": site.school_id, "gateway": site.gateway_id, "version": version})
    exp.gauge(PREFIX + "uptime_seconds", "Seconds since the daemon started", max(0.0, now - gw.started_at))
    exp.declare(PREFIX + "device_online", "gauge", "1 while a device answers (0: offline or not read since the start)")
    for dev, st in sorted(gw.states.items()):
        exp.gauge(PREFIX + "device_online", "1 while a device answers (0: offline or not read since the start)",
                  bool(st.get("online")), {"device": dev, "kind": str(gw.kinds.get(dev, ""))})
    _add_holds(exp, gw)
    exp.counter(PREFIX + "bus_messages_total", "Messages published on the daemon's event bus", gw.bus.published)
    for sub in gw.bus.subscribers:
        exp.counter(PREFIX + "bus_dropped_total", "Messages a slow subscriber lost (its queue was full)", sub.dropped,
                    {"subscriber": sub.name or "?"})
    for drv in gw.drivers:
        if drv.name == "modbus":
            stats = drv.stats()
            add_modbus(exp, stats)
            add_last_read(exp, stats, now)
    exp.declare(PREFIX + "command_results_total", "counter",
                "Command results, by source, status and code (CONTRACT.md section 3)")
    if gw.cloud is not None:
        cs = gw.cloud.stats()
        add_cloud(exp, cs, head_age_s)
        add_results(exp, "cloud", cs.get("results_by_code", {}))
    for svc in gw.services:
        name = getattr(svc, "name", None)
        if name == "ems":
            add_ems(exp, svc.status())
        elif name == "homeassistant":
            exp.gauge(PREFIX + "mqtt_connected", MQTT_CONNECTED_HELP, svc.connected, {"link": "homeassistant"})
            add_results(exp, "homeassistant", svc.results)
    add_process(exp, process_stats())
    return exp


def _add_holds(exp: Exposition, gw: Gateway) -> None:
    counts: dict[str, int] = {}
    for dev in gw.kinds:
        for h in gw.holds(dev):
            counts[h["source"]] = counts.get(h["source"], 0) + 1
    exp.declare(PREFIX + "holds", "gauge", "Requests the arbiter holds, by source (ems: units shed or queued)")
    for source, n in sorted(counts.items()):
        exp.gauge(PREFIX + "holds", "Requests the arbiter holds, by source (ems: units shed or queued)", n,
                  {"source": source})


