"""GET /metrics: the Prometheus text format (0.0.4) read back by a strict parser, from a real daemon
against the virtual school (buses, devices, EMS, the cloud link and its outbox, the process), and the
Grafana dashboard over those metrics."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, until
from helpers.sites import small_school, two_bus_school
from mqtt_broker import Broker

from edge.core.arbiter import Source
from edge.core.config import Config
from edge.core.control import Ask
from edge.daemon import Daemon
from edge.metrics import (
    Exposition,
    add_cloud,
    add_ems,
    add_modbus,
    add_process,
    add_results,
    escape_label,
    format_value,
    process_stats,
)
from simulator.app import VirtualSchool

pytestmark = pytest.mark.timeout(30)
ROOT = Path(__file__).resolve().parent.parent

# -- a strict reader of the text format -------------------------------------------------------------
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}

LabelSet = tuple[tuple[str, str], ...]


@dataclass
class Family:
    type: str
    help: str | None = None
    samples: dict[tuple[str, LabelSet], float] = field(default_factory=dict)

    def value(self, suffix: str = "", **labels: str) -> float:
        found = [v for (s, lb), v in self.samples.items() if s == suffix and set(labels.items()) <= set(lb)]
        assert len(found) == 1, (suffix, labels, self.samples)
        return found[0]

    def values(self, **labels: str) -> dict[LabelSet, float]:
        return {lb: v for (s, lb), v in self.samples.items() if s == "" and set(labels.items()) <= set(lb)}


def _unescape(v: str) -> str:
    return re.sub(r"\\([\\\"n])", lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


def _labels(body: str, line: str) -> LabelSet:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(body):
        m = _PAIR.match(body, pos)
        assert m is not None, f"bad labels in {line!r}"
        out.append((m.group(1), _unescape(m.group(2))))
        pos = m.end()
    names = [k for k, _ in out]
    assert len(names) == len(set(names)), f"a label twice in {line!r}"
    return tuple(sorted(out))


def _number(v: str, line: str) -> float:
    if v in ("NaN", "+Inf", "-Inf"):
        return float(v.replace("Inf", "inf"))
    assert re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", v), f"bad value in {line!r}"
    return float(v)


def parse(text: str) -> dict[str, Family]:
    """Every rule of the format we rely on: a family's TYPE before its samples, its samples together,
    no sample twice, counters `_total` and never negative, histograms cumulative to `+Inf` == `_count`."""
    assert text.endswith("\n")
    assert "\r" not in text
    fams: dict[str, Family] = {}
    current: str | None = None
    for line in text.splitlines():
        assert line, "an empty line"
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name), line
            assert name not in fams, f"HELP of {name} twice"
            assert "\\" not in help_text.replace("\\\\", "").replace("\\n", ""), line
            fams[name] = Family(type="", help=help_text)
            current = name
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current, f"TYPE of {name} out of place"
            assert fams[name].type == "", f"TYPE of {name} twice"
            assert kind in _SUFFIXES, line
            fams[name].type = kind
            continue
        assert not line.startswith("#"), line
        m = _SAMPLE.match(line)
        assert m is not None, f"not a sample: {line!r}"
        full, body, value = m.group(1), m.group(2) or "", m.group(3)
        assert current is not None, f"{line!r} before any HELP"
        assert fams[current].type, f"{line!r} before its TYPE"
        fam = fams[current]
        suffix = full[len(current):] if full.startswith(current) else None
        assert suffix in _SUFFIXES[fam.type], f"{full} is not a sample of {fam.type} {current}"
        key = (suffix, _labels(body, line))
        assert key not in fam.samples, f"sample twice: {line!r}"
        fam.samples[key] = _number(value, line)
    for name, fam in fams.items():
        if fam.type == "counter":
            assert name.endswith("_total"), name
            assert all(v >= 0 for v in fam.samples.values()), name
        if fam.type == "histogram":
            _check_histogram(name, fam)
    return fams


def _check_histogram(name: str, fam: Family) -> None:
    series: dict[LabelSet, list[tuple[float, float]]] = {}
    for (suffix, labels), v in fam.samples.items():
        if suffix == "_bucket":
            le = dict(labels)["le"]
            rest = tuple(p for p in labels if p[0] != "le")
            series.setdefault(rest, []).append((float(le.replace("Inf", "inf")), v))
    assert series, f"{name}: a histogram without buckets"
    for labels, buckets in series.items():
        buckets.sort()
        assert buckets[-1][0] == math.inf, f"{name}{labels}: no +Inf bucket"
        counts = [n for _, n in buckets]
        assert counts == sorted(counts), f"{name}{labels}: buckets not cumulative"
        assert fam.samples[("_count", labels)] == counts[-1], f"{name}{labels}: +Inf bucket is not _count"
        assert ("_sum", labels) in fam.samples


def test_the_strict_reader_bites() -> None:
    """The reader refuses what the format forbids (so a pass below means something)."""
    good = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n"
    assert parse(good)["a_total"].value() == 1
    for bad in ("# HELP a_total x\n# TYPE a_total counter\na_total 1\na_total 2\n",            # twice
                "# HELP a x\n# TYPE a counter\na 1\n",                                         # counter name
                "# HELP a x\n# TYPE a gauge\na{b=\"1\"} one\n",                                # value
                "# HELP a x\n# TYPE a gauge\na{b=\"q\"uote\"} 1\n",                            # escaping
                "# HELP a x\n# TYPE a gauge\n# HELP b y\n# TYPE b gauge\nb 1\na 1\n",         # scattered family
                "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",
                "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n"):
        with pytest.raises(AssertionError):
            parse(bad)


# -- the format, without a daemon -------------------------------------------------------------------
def test_values_are_written_as_the_format_spells_them() -> None:
    assert [format_value(v) for v in (3.0, 0, -2, 0.25, 1e20, math.nan, math.inf, -math.inf)] == [
        "3", "0", "-2", "0.25", "1e+20", "NaN", "+Inf", "-Inf"]


def test_label_values_and_help_are_escaped_and_read_back() -> None:
    nasty = 'a "quoted" \\ back\nslash'
    exp = Exposition()
    exp.gauge("x_celsius", "help with \\ and\nnewline", 1.5, {"room": nasty})
    text = exp.text()
    assert escape_label(nasty) in text
    assert "# HELP x_celsius help with \\\\ and\\nnewline\n" in text
    fam = parse(text)["x_celsius"]
    assert fam.samples == {("", (("room", nasty),)): 1.5}


def test_the_builder_refuses_what_the_format_forbids() -> None:
    exp = Exposition()
    with pytest.raises(ValueError, match="_total"):
        exp.counter("requests", "h", 1)
    with pytest.raises(ValueError, match="negative"):
        exp.counter("requests_total", "h", -1)
    exp.gauge("g", "h", 1, {"a": "1"})
    with pytest.raises(ValueError, match="twice"):
        exp.gauge("g", "h", 2, {"a": "1"})
    with pytest.raises(ValueError, match="declared twice"):
        exp.gauge("requests_total", "h", 1)
    with pytest.raises(ValueError, match="not a Prometheus name"):
        exp.gauge("bad-name", "h", 1)
    with pytest.raises(ValueError, match="label name"):
        exp.gauge("g2", "h", 1, {"__reserved": "x"})
    exp.gauge("unknown", "h", None)   # not known: the family is written, no sample
    assert parse(exp.text())["unknown"].samples == {}


def test_a_histogram_is_cumulative_and_ends_at_count() -> None:
    exp = Exposition()
    snap = {"buckets": [[0.01, 2], [0.1, 5], [1, 9]], "sum": 3.25, "count": 10}
    exp.histogram("req_seconds", "h", snap, {"bus": "b"})
    fam = parse(exp.text())["req_seconds"]
    assert fam.type == "histogram"
    assert fam.value("_bucket", bus="b", le="0.01") == 2
    assert fam.value("_bucket", bus="b", le="1") == 9
    assert fam.value("_bucket", bus="b", le="+Inf") == 10
    assert (fam.value("_sum", bus="b"), fam.value("_count", bus="b")) == (3.25, 10)
    for bad, why in (({"buckets": [[0.1, 5], [1, 4]], "sum": 1, "count": 5}, "cumulative"),
                     ({"buckets": [[0.1, 5], [1, 6]], "sum": 1, "count": 5}, "cumulative"),   # more than count
                     ({"buckets": [[1, 1], [0.1, 2]], "sum": 1, "count": 5}, "increasing"),
                     ({"buckets": [[math.inf, 1]], "sum": 1, "count": 5}, "finite")):          # +Inf is ours
        with pytest.raises(ValueError, match=why):
            Exposition().histogram("h_seconds", "h", bad)


def test_command_results_carry_their_status_from_the_code() -> None:
    exp = Exposition()
    add_results(exp, "homeassistant", {"ok": 3, "out_of_range": 2, "write_failed": 1, "denied_by_ems": 4})
    fam = parse(exp.text())["campus_edge_command_results_total"]
    got = {dict(lb)["code"]: (dict(lb)["status"], v) for (_, lb), v in fam.samples.items()}
    assert got == {"ok": ("ok", 3), "out_of_range": ("rejected", 2), "write_failed": ("failed", 1),
                   "denied_by_ems": ("rejected", 4)}


def test_process_figures_come_from_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "fd").mkdir(parents=True)
    for n in range(3):
        (proc / "fd" / str(n)).touch()
    ticks, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    rest = ["0"] * 50
    rest[0] = "S"
    rest[11], rest[12] = str(3 * ticks), str(ticks)       # utime, stime
    rest[17], rest[20], rest[21] = "7", "123456789", "2500"  # threads, vsize, rss pages
    (proc / "stat").write_text(f"42 (a (strange) name) {' '.join(rest)}\n")
    ps = process_stats(proc)
    assert ps is not None
    assert (ps.cpu_s, ps.rss_bytes, ps.vms_bytes, ps.threads, ps.open_fds) == (4.0, 2500 * page, 123456789, 7, 3)
    assert process_stats(tmp_path / "none") is None
    real = process_stats()
    assert real is not None
    assert real.rss_bytes > 1_000_000
    assert real.threads >= 1


# -- a real daemon --------------------------------------------------------------------------------
async def scrape(daemon: Daemon) -> tuple[str, dict[str, Family]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200", raw[:300]
    ctype = next(h for h in head.decode().split("\r\n") if h.lower().startswith("content-type"))
    assert "text/plain; version=0.0.4" in ctype
    return body.decode(), parse(body.decode())


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[VirtualSchool, Daemon]]:
    cfg = Config.model_validate(two_bus_school(tmp_path, free_port()))
    async with VirtualSchool(cfg) as school, Daemon(cfg, status_port=0) as daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        yield school, daemon


async def test_a_running_daemon_exposes_buses_devices_ems_and_the_process(site: tuple[VirtualSchool, Daemon]) -> None:
    _school, daemon = site
    modbus = next(d for d in daemon.drivers if d.name == "modbus")
    await until(lambda: modbus.stats()["ac-bus"]["devices"]["ac-101a"]["poll_period_s"]["n"] >= 4,
                what="a few poll periods measured")
    _, m = await scrape(daemon)
    online = m["campus_edge_device_online"]
    assert {dict(lb)["device"] for lb in online.values()} == set(daemon.states)
    assert all(v == 1 for v in online.values().values())
    assert online.value(device="ac-401a", kind="ac") == 1
    assert m["campus_edge_info"].value(school="014601", gateway="gw-test") == 1
    req = m["campus_edge_modbus_requests_total"]
    first = {b: req.value(bus=b) for b in ("ac-bus", "rs485")}
    assert all(n > 0 for n in first.values())
    assert m["campus_edge_modbus_connected"].value(bus="rs485") == 1
    # poll_s 0.5 for every device: the measured period is about that
    p50 = m["campus_edge_modbus_poll_period_window_seconds"].value(bus="ac-bus", device="ac-101a", stat="p50")
    assert 0.3 < p50 < 1.5
    assert m["campus_edge_modbus_device_last_read_age_seconds"].value(device="meter-main") < 5
    # histograms from the engine: every transaction timed, every period between two reads counted
    lat = m["campus_edge_modbus_request_duration_seconds"]
    count = lat.value("_count", bus="ac-bus", device="ac-101a")
    assert count > 0
    assert lat.value("_bucket", bus="ac-bus", device="ac-101a", le="+Inf") == count
    assert lat.value("_bucket", bus="ac-bus", device="ac-101a", le="2.5") == count   # loopback: under 2.5 s
    assert 0 < lat.value("_sum", bus="ac-bus", device="ac-101a") / count < 0.5
    per = m["campus_edge_modbus_poll_period_seconds"]
    n = per.value("_count", bus="ac-bus", device="ac-101a")
    assert n >= 4
    assert per.value("_bucket", bus="ac-bus", device="ac-101a", le="0.25") < n <= \
        per.value("_bucket", bus="ac-bus", device="ac-101a", le="2")               # polled every 0.5 s
    ems = {k: m[f"campus_edge_ems_{k}"].value() for k in ("contract_kw", "block_avg_kw", "projected_kw", "shed_units")}
    assert ems["contract_kw"] == 180
    assert ems["block_avg_kw"] > 0
    assert ems["projected_kw"] > 0
    assert ems["shed_units"] == 0
    assert m["process_resident_memory_bytes"].value() > 10e6
    assert m["process_cpu_seconds_total"].value() > 0
    assert "campus_edge_mqtt_connected" not in m      # no cloud section: no link to report
    await until(lambda: all(modbus.stats()[b]["requests"] > n for b, n in first.items()), what="more requests")
    _, again = await scrape(daemon)
    assert all(again["campus_edge_modbus_requests_total"].value(bus=b) > n for b, n in first.items())


async def test_a_silent_device_shows_in_errors_and_health(site: tuple[VirtualSchool, Daemon]) -> None:
    school, daemon = site
    school.set_fault("ac-401a", "silent")
    await until(lambda: not daemon.states["ac-401a"]["online"], what="ac-401a offline")
    _, m = await scrape(daemon)
    assert m["campus_edge_modbus_errors_total"].value(bus="rs485", kind="timeout") >= 1
    assert m["campus_edge_modbus_device_online"].value(bus="rs485", device="ac-401a") == 0
    assert m["campus_edge_modbus_device_online"].value(bus="rs485", device="meter-main") == 1
    assert m["campus_edge_device_online"].value(device="ac-401a") == 0
    assert m["campus_edge_modbus_units_in_backoff"].value(bus="rs485") == 1
    assert not m["campus_edge_modbus_errors_total"].values(bus="ac-bus")


async def test_a_hold_is_counted_by_its_source(site: tuple[VirtualSchool, Daemon]) -> None:
    _school, daemon = site
    _, before = await scrape(daemon)
    assert not before["campus_edge_holds"].values(source="facility")
    out = await daemon.control.ask(Ask("ac-401a", {"setpoint_c": 27}, Source.FACILITY, "test:metrics"))
    assert out.ok, out
    _, m = await scrape(daemon)
    assert m["campus_edge_holds"].value(source="facility") == 1


# -- the cloud link and its outbox -------------------------------------------------------------------
@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker.start(tmp_path / "mosquitto") as b:
        yield b


async def test_the_cloud_link_and_the_outbox_depth_and_age(tmp_path: Path, broker: Broker) -> None:
    cfg = Config.model_validate(small_school(tmp_path, modbus_port=free_port(), broker_port=broker.port,
                                             pub_key=None))
    async with VirtualSchool(cfg) as _school, Daemon(cfg, status_port=0) as daemon:
        await until(lambda: daemon.cloud.connected, what="the cloud link up")
        await until(lambda: not any(daemon.cloud.outbox.stats().pending.values()), what="the outbox drained")
        _, m = await scrape(daemon)
        assert m["campus_edge_mqtt_connected"].value(link="cloud") == 1
        assert m["campus_edge_mqtt_messages_sent_total"].value(link="cloud", category="state") > 0
        assert m["campus_edge_outbox_pending"].value(**{"class": "event"}) == 0
        assert m["campus_edge_outbox_head_age_seconds"].samples == {}   # nothing waits
        broker.stop()
        await until(lambda: not daemon.cloud.connected, what="the link down")
        for n in range(3):
            daemon.on_event("fault", {"device": "test", "code": f"t{n}"})
        await until(lambda: daemon.cloud.outbox.stats().pending["event"] >= 3, what="events stored")
        await asyncio.sleep(0.3)
        _, m = await scrape(daemon)
        assert m["campus_edge_mqtt_connected"].value(link="cloud") == 0
        assert m["campus_edge_outbox_pending"].value(**{"class": "event"}) >= 3
        assert m["campus_edge_outbox_head_age_seconds"].value() >= 0.3
        assert m["campus_edge_mqtt_disconnects_total"].value(link="cloud") >= 1
        broker.restart()
        await until(lambda: not any(daemon.cloud.outbox.stats().pending.values()), within=20, what="drained again")
        _, m = await scrape(daemon)
        assert m["campus_edge_outbox_pending"].value(**{"class": "event"}) == 0
        assert m["campus_edge_outbox_head_age_seconds"].samples == {}


# -- the dashboard -----------------------------------------------------------------------------------
def every_family() -> dict[str, str]:
    """Every family the code can write (full stats everywhere, histograms included): name -> type."""
    dev = {"online": True, "in_backoff": False, "last_ok": 1.0, "rejected": {"mode": 1},
           "poll_period_s": {"n": 3, "mean": 1, "p50": 1, "p99": 1, "max": 1},
           "latency_hist_s": {"buckets": [[0.1, 1]], "sum": 0.05, "count": 1},
           "poll_period_hist_s": {"buckets": [[1, 1]], "sum": 1, "count": 1}}
    exp = Exposition()
    add_modbus(exp, {"b": {"connected": True, "requests": 1, "errors": {"timeout": 1}, "writes": 1, "pulses": 1,
                           "verify_failures": 0, "connects": 1, "queue": 0, "requests_per_cycle": 2,
                           "units_in_backoff": [], "devices": {"d": dev}}})
    add_cloud(exp, {"connected": True, "commands": 1,
                    "mqtt": {"connects": 1, "disconnects": 0, "sent": {"state": 1}, "sent_bytes": {"state": 9},
                             "received": {"cmd": 1}, "received_bytes": {"cmd": 9}},
                    "outbox": {"pending": {"event": 1}, "bytes_used": 9, "alarm": False}}, 1.0)
    add_results(exp, "cloud", {"ok": 1})
    add_ems(exp, {"block_avg_kw": 1, "projected_kw": 1, "allow_kw": 1, "contract_kw": 1, "shed_units": 0,
                  "stale": False, "peak_kw": 1, "sliding_peak_kw": 1, "alarms": [], "turns": 1,
                  "usage": {"rooms": {"101": {"today_kwh": 1, "today_run_h": 1}}}})
    ps = process_stats()
    assert ps is not None
    add_process(exp, ps)
    fams = parse(exp.text())
    out = {n: f.type for n, f in fams.items()}
    # the daemon's own families (exposition() around the add_* functions)
    out.update({"campus_edge_info": "gauge", "campus_edge_uptime_seconds": "gauge",
                "campus_edge_device_online": "gauge", "campus_edge_holds": "gauge",
                "campus_edge_modbus_device_last_read_age_seconds": "gauge",
                "campus_edge_bus_messages_total": "counter", "campus_edge_bus_dropped_total": "counter"})
    return out


async def test_the_daemon_writes_only_families_the_dashboard_check_knows(site: tuple[VirtualSchool, Daemon]) -> None:
    """`every_family` stays in step with the daemon (so the dashboard check below checks real names)."""
    _, m = await scrape(site[1])
    assert {n: f.type for n, f in m.items()}.items() <= every_family().items()


def test_the_grafana_dashboard_uses_a_datasource_variable_and_real_metrics() -> None:
    doc: dict[str, Any] = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    ds = next(v for v in variables.values() if v["type"] == "datasource")
    assert ds["query"] == "prometheus"
    ds_ref = "${" + ds["name"] + "}"
    panels = [p for p in doc["panels"] if p.get("type") != "row"]
    assert len(panels) >= 10
    known = every_family()
    used: set[str] = set()
    for p in panels:
        assert p["datasource"]["uid"] == ds_ref, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == ds_ref, p["title"]
            for name in re.findall(r"\b((?:campus_edge|process)_[a-z0-9_]+)", t["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in known else name
                assert base in known, f"panel {p['title']!r}: no metric {name}"
                if known[base] == "counter":
                    assert re.search(rf"(rate|increase)\({re.escape(name)}\b", t["expr"]), \
                        f"panel {p['title']!r}: counter {name} without rate()/increase()"
                used.add(base)
    for must in ("campus_edge_modbus_requests_total", "campus_edge_modbus_errors_total",
                 "campus_edge_modbus_request_duration_seconds", "campus_edge_modbus_poll_period_seconds",
                 "campus_edge_outbox_pending", "campus_edge_outbox_head_age_seconds", "campus_edge_mqtt_connected",
                 "campus_edge_command_results_total", "campus_edge_ems_block_avg_kw", "campus_edge_ems_projected_kw",
                 "campus_edge_ems_contract_kw", "process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert must in used, f"the dashboard shows no {must}"
