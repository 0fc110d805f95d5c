"""`campus-edge demo`: the virtual school, the daemon and a live status view; Ctrl-C stops it all.

Each part is its own process (as in production), started in its own session and stopped by its
handle, so nothing outlives the demo. SIGTERM and SIGHUP (a closed terminal, `kill`) stop it the
way Ctrl-C does.

The simulated school day starts at 07:18 on the latest school day (unless the config sets
`simulation.start`) and runs `DEMO_SPEED` times faster than real time (unless `--speed`): pupils
tap their cards at the gate from 07:20, the door of 1年1班 lets a pupil in and refuses a card
nobody issued every 10 simulated minutes from 07:52, beacon tags check in at the gate. The daemon
keeps real time, as at a school. "The app" (this process) does what the city's app would, through
the private broker: it sends the access list (the virtual school's pupils and their doors), a
teacher switches her classroom's AC on, and a booking of the library opens its door
`bookings.lead_s` before the start and relocks it at the end (set here to simulated minutes). It
also listens to the gateway's events (`card`, `presence`, `door`) to show them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import yaml

from cloud_sync.keys import generate_keypair
from cloud_sync.topics import Topics
from edge.config import load_config
from edge.core.clock import iso
from edge.core.config import Config, RelayChannel
from edge.core.model import Kind
from edge.http import get_json
from edge.screen import page_url, parse_listen
from edge.view import Activity, Person, render_activity, render_status
from simulator.cards import access_list, roster
from simulator.local import Broker, free_port

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0  # a child's orderly stop after SIGTERM (the daemon drains and flushes)
KILL_TIMEOUT_S = 5.0  # reaping after SIGKILL; only a process stuck in the kernel takes longer
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
TEACHER = ("T123", "101", "ac-101a")  # the teacher, her classroom and its AC in the example school
DEMO_SPEED = 10.0          # simulated seconds per real second, unless --speed
MORNING = clock_time(7, 18)  # the simulated day starts here (pupils arrive from 07:20)
VIEW_S = 1.0               # the view is redrawn this often
CTL_TIMEOUT_S = 40.0
# The app's booking, in simulated seconds (the daemon keeps real time: each is divided by the speed).
BOOKED_ROOM = "library"
BOOKING_IN_SIM_S = 900.0    # it starts 15 simulated minutes after the app books it
BOOKING_LEAD_SIM_S = 600.0  # its doors open 10 simulated minutes before (the demo's bookings.lead_s)
BOOKING_SIM_S = 1200.0      # and it lasts 20 simulated minutes
# The morning rush: teachers of these many classrooms switch their ACs on as the classes come in, from
# RUSH_SIM_S after the start, and the demo's contract is set so that the rush binds (the energy manager
# queues starts, raises setpoints, and the view shows it).
RUSH_ROOMS = 24
RUSH_SIM_S = 900.0          # 07:33 simulated
RUSH_SPREAD_SIM_S = 600.0   # the teachers' commands spread over 10 simulated minutes
RUSH_PARALLEL = 4           # ctl processes at a time
DEMO_CONTRACT_KW = 90.0     # the example school's base load is ~45 kW in the morning; 48 units are ~80 kW more

_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None  # what signal.getsignal returns


def example_config() -> Path:
    """The example school shipped with the package (source tree or installed data files)."""
    for cand in (Path(__file__).resolve().parents[1] / "config" / "example-school.yaml",
                 Path(sys.prefix) / "share" / "campus-edge" / "example-school.yaml"):
        if cand.is_file():
            return cand
    raise FileNotFoundError("example-school.yaml not found")


class Child:
    """A child process in its own session; stopped by handle (SIGTERM, then SIGKILL to its session)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._fh = log.open("w", encoding="utf-8")
        try:
            self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=self._fh, text=True,
                                         start_new_session=True)
        except BaseException:
            self._fh.close()
            raise

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("READY"):
                return line.strip()
        raise RuntimeError(f"{self.name} did not start; see {self.log}:\n{self.tail()}")

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(encoding="utf-8").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM the child, which stops what it started (the simulator its socat ptys); past `timeout`
        SIGKILL its whole session. True if it stopped in time on its own."""
        clean = True
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    clean = False
                    with contextlib.suppress(ProcessLookupError):  # unreaped: its group id is still ours
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _say(f"demo: {self.name} (pid {self.proc.pid}) survived SIGKILL", err=True)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._fh.close()
        return clean


class _StopSignals:
    """SIGINT, SIGTERM and SIGHUP all stop the demo as Ctrl-C does: KeyboardInterrupt, once.

    Inside `hold()` (a child being started and put on the list) the interrupt waits for the end of
    the block, so no child escapes the stop path; once stopping, further signals are ignored so the
    stop path runs to its end. SIGINT and SIGHUP stay ignored where the caller ignores them (a
    shell's background job, nohup).
    """

    def __init__(self) -> None:
        self.stopping = False
        self._held = 0
        self._pending = False
        self._saved: dict[signal.Signals, _Handler] = {}

    def __enter__(self) -> _StopSignals:
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN and sig != signal.SIGTERM:
                continue
            self._saved[sig] = previous
            signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, previous in self._saved.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        if self._held:
            self._pending = True
            return
        self.stopping = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        if self._pending and not self._held and not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt


def _say(text: str, *, err: bool = False) -> None:
    """Print, even to a terminal that has hung up (SIGHUP): the stop path must not fail on it."""
    try:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
    except OSError:  # from now on to /dev/null, or the interpreter's last flush fails too (exit 120)
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, (sys.stderr if err else sys.stdout).fileno())
            os.close(null)


def school_morning(tz: ZoneInfo, now: float) -> datetime:
    """07:18 of the latest school day (today, or the Friday before a weekend) in the site's zone."""
    day = datetime.fromtimestamp(now, tz).date()
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return datetime.combine(day, MORNING, tzinfo=tz)


def _demo_site(cfg_path: Path, workdir: Path, broker_port: int, speed: float) -> tuple[Path, Path]:
    """The demo config: the school plus a cloud link to the private broker and a fresh key, a simulated
    morning to start from, and a booking lead in simulated minutes."""
    priv, pub = workdir / "keys" / "cloud-ed25519.pem", workdir / "keys" / "cloud-ed25519.pub"
    pub.parent.mkdir()
    generate_keypair(priv, pub)
    data = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    data["cloud"] = {"mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}"}, "command_keys": [str(pub)]}
    data["profile_dirs"] = [str((cfg_path.parent / p).resolve()) for p in data.get("profile_dirs", [])]
    sim = data.setdefault("simulation", {})
    if not sim.get("start"):
        tz = ZoneInfo(data.get("site", {}).get("timezone", "Asia/Taipei"))
        sim["start"] = school_morning(tz, time.time()).isoformat()
    data.setdefault("bookings", {})["lead_s"] = round(BOOKING_LEAD_SIM_S / speed, 1)
    if data.get("ems"):
        data["ems"]["contract_kw"] = DEMO_CONTRACT_KW
    screen = data.get("screen") or {}
    if not screen.get("listen"):   # the energy screen, on this machine only (a site's own listen is kept)
        data["screen"] = {**screen, "listen": f"127.0.0.1:{free_port()}"}
    site = workdir / "site.yaml"
    site.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return site, priv


def run_demo(config: str | None, speed: float | None = None, duration_s: float | None = None) -> int:
    with _StopSignals() as signals:
        return _run(signals, config, speed, duration_s)


def _run(signals: _StopSignals, config: str | None, speed: float | None, duration_s: float | None) -> int:
    cfg_path = Path(config) if config else example_config()
    workdir = Path(tempfile.mkdtemp(prefix="campus-edge-demo-"))
    env = {**os.environ, "CAMPUS_EDGE_RUN_DIR": str(workdir / "run"), "CAMPUS_EDGE_STATE_DIR": str(workdir / "state"),
           "RUNTIME_DIRECTORY": str(workdir / "run")}   # the daemon's control socket lives there
    (workdir / "run").mkdir()
    os.environ.update({k: env[k] for k in ("CAMPUS_EDGE_RUN_DIR", "CAMPUS_EDGE_STATE_DIR")})
    exe = [sys.executable, "-m", "edge.cli"]
    children: list[Child] = []
    broker: Broker | None = None
    code = 0
    speed = speed or DEMO_SPEED
    try:
        with signals.hold():
            broker = Broker.start(workdir / "broker")
        broker_port = broker.port
        site, key = _demo_site(cfg_path, workdir, broker_port, speed)
        cfg = load_config(site)
        sim_args = ["simulate", "--config", str(site), "--speed", str(speed)]
        with signals.hold():
            sim = Child("simulator", [*exe, *sim_args], env, workdir / "simulator.log")
            children.append(sim)
        sim.wait_ready()
        sim_clock = SimClock(_start(cfg), speed, time.monotonic())
        with signals.hold():
            daemon = Child("daemon", [*exe, "run", "--config", str(site), "--status-port", "0"], env,
                           workdir / "daemon.log")
            children.append(daemon)
        port = int(daemon.wait_ready().rsplit(":", 1)[1])
        _say(f"demo running: logs in {workdir}; broker 127.0.0.1:{broker_port}; status API 127.0.0.1:{port}")
        if (url := screen_url(cfg)) is not None:
            _say(f"energy screen: {url} (English: {url}?lang=en)")
        sock = workdir / "run" / "control.sock"
        _say(f"local control: campus-edge set ac-102a power_on=on setpoint_c=26 --socket {sock}")
        app = App(cfg, site, key, env, broker_port, speed)
        asyncio.run(app.run(port, sim_clock, duration_s))
    except KeyboardInterrupt:
        pass
    except (RuntimeError, OSError) as exc:
        _say(f"demo failed: {exc}", err=True)
        code = 1
    finally:
        signals.stopping = True
        _say("\nstopping the demo...")
        for c in reversed(children):  # the daemon first, while the broker still takes its goodbye
            if not c.stop():
                _say(f"demo: {c.name} did not stop within {STOP_TIMEOUT_S:g} s and was killed; see {c.log}",
                     err=True)
                code = 1
        if broker is not None:
            try:
                broker.stop(signal.SIGTERM)
            except subprocess.TimeoutExpired:
                _say("demo: mosquitto survived SIGKILL", err=True)
                code = 1
        _say("demo stopped")
        if not os.environ.get("CAMPUS_EDGE_KEEP_DEMO"):
            shutil.rmtree(workdir, ignore_errors=True)
    return code


def _start(cfg: Config) -> float:
    start = cfg.simulation.start
    assert start is not None  # the demo's site always has one
    when = datetime.fromisoformat(start)
    return (when if when.tzinfo else when.replace(tzinfo=ZoneInfo(cfg.site.timezone))).timestamp()


class SimClock:
    """The virtual school's clock as the view shows it (from its start and speed; READY marks its start)."""

    def __init__(self, start: float, speed: float, real0: float) -> None:
        self.start, self.speed, self.real0 = start, speed, real0

    def time(self) -> float:
        return self.start + (time.monotonic() - self.real0) * self.speed


class App:
    """What the city's app does in the demo (signed commands through the broker) and hears (events)."""

    def __init__(self, cfg: Config, site: Path, key: Path, env: dict[str, str], broker_port: int,
                 speed: float) -> None:
        self.cfg, self.site, self.key, self.env = cfg, site, key, env
        self.broker_port = broker_port
        self.speed = speed
        self.tz = ZoneInfo(cfg.site.timezone)
        self.pupils = roster(cfg).pupils
        names = {r.id: r.name or r.id for r in cfg.rooms}
        self.activity = Activity({str(p.card): Person(p.person, names.get(p.room, p.room)) for p in self.pupils})
        self.notes: list[str] = ["app: waiting for the gateway's cloud link..."]
        url = screen_url(cfg)
        self.screen = "" if url is None else f"energy screen (能源大屏): {url}  (English: {url}?lang=en)"
        self.link_up = asyncio.Event()
        self.devices_up = asyncio.Event()

    def say(self, note: str) -> None:
        self.notes = [*[n for n in self.notes if not n.startswith("app: waiting")][-3:], note]

    async def run(self, status_port: int, sim: SimClock, duration_s: float | None) -> None:
        """The view until `duration_s` (or cancelled), with the event feed and the app's actions beside it."""
        self.link_up, self.devices_up = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(self.feed(), name="demo app: events"),
                 asyncio.create_task(self.act(), name="demo app: commands")]
        try:
            await self.view(status_port, sim, duration_s)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def view(self, port: int, sim: SimClock, duration_s: float | None) -> None:
        start = time.monotonic()
        clear = sys.stdout.isatty()
        while duration_s is None or time.monotonic() - start < duration_s:
            try:
                _code, body = await get_json("127.0.0.1", port, "/status")
                page = render_status(body, self.cfg)
                online = sum(1 for st in body["devices"].values() if st.get("online"))
                if online >= len(body["devices"]) * 0.9:
                    self.devices_up.set()
            except OSError as exc:
                page = f"daemon not answering: {exc}"
            head = f"simulated school day: {datetime.fromtimestamp(sim.time(), self.tz):%a %H:%M} ({self.speed:g}x)"
            if clear:
                sys.stdout.write("\x1b[H\x1b[2J")
            print("\n".join([head, page, *render_activity(self.activity), *self.notes,
                             *([self.screen] if self.screen else []), "Ctrl-C stops the demo"]), flush=True)
            await asyncio.sleep(VIEW_S)

    async def feed(self) -> None:
        """The gateway's events and status, as the app receives them from the broker."""
        topics = Topics.for_config(self.cfg)
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.broker_port,
                                          identifier=f"campus-edge-demo-app-{os.getpid()}") as client:
                    await client.subscribe(topics.event("#"), qos=1)
                    await client.subscribe(topics.status, qos=1)
                    async for m in client.messages:
                        try:
                            body = json.loads(m.payload if isinstance(m.payload, bytes | str) else b"")
                        except ValueError:
                            continue
                        if not isinstance(body, dict):
                            continue
                        if m.topic.matches(topics.status):
                            if body.get("online"):
                                self.link_up.set()
                        else:
                            self.activity.note(body)
            except aiomqtt.MqttError:
                await asyncio.sleep(1.0)

    async def act(self) -> None:
        """Send the access list once the link is up; the teacher's AC and the booking once the devices are."""
        await self.link_up.wait()
        version = int(time.time())
        result = await self.ctl("send", "--action", "access.put", "--target", "site", "--params",
                                json.dumps(access_list(self.pupils, version)), "--as", "admin:A001")
        self.say(f"app: access list v{version} ({len(self.pupils)} pupils' cards) -> {_outcome(result)}")
        await self.devices_up.wait()
        teacher, room, ac = TEACHER
        result = await self.ctl("ac", ac, "--on", "--setpoint", "26", "--as", f"teacher:{teacher}", "--rooms", room)
        self.say(f"app: teacher {teacher} switched {ac} (room {room}) on at 26 °C -> {_outcome(result)}")
        booked = booked_room(self.cfg)
        if booked is not None:
            start = time.time() + BOOKING_IN_SIM_S / self.speed
            end = start + BOOKING_SIM_S / self.speed
            params = {"id": "demo-1", "start": iso(start, self.tz), "end": iso(end, self.tz), "title": "家長座談會"}
            result = await self.ctl("send", "--action", "booking.put", "--target", booked, "--params",
                                    json.dumps(params, ensure_ascii=False), "--as", "facility:F001")
            self.say(f"app: booked {booked} {iso(start, self.tz)[11:19]}-{iso(end, self.tz)[11:19]} (doors open"
                     f" {self.cfg.bookings.lead_s:g} s before) -> {_outcome(result)}")
        await self.rush()

    async def rush(self) -> None:
        """Facility staff set the overload alarms; then the classes come in and their teachers switch on."""
        ems = self.cfg.ems
        if ems is None:
            return
        levels = [{"level": "warning", "demand_kw": round(ems.contract_kw * 0.95, 1)},
                  {"level": "critical", "demand_kw": ems.contract_kw}]
        result = await self.ctl("send", "--action", "alarm.set", "--target", "site", "--params",
                                json.dumps({"levels": levels}), "--as", "facility:F001")
        self.say(f"app: overload alarms at {levels[0]['demand_kw']:g} and {levels[1]['demand_kw']:g} kW"
                 f" -> {_outcome(result)}")
        rooms = [r.id for r in self.cfg.rooms if any(d.kind == Kind.AC and getattr(d, "room", None) == r.id
                                                     for d in self.cfg.devices)][:RUSH_ROOMS]
        await asyncio.sleep(RUSH_SIM_S / self.speed)
        gate = asyncio.Semaphore(RUSH_PARALLEL)
        outcomes: dict[str, int] = {}

        async def teacher(i: int, room: str) -> None:
            await asyncio.sleep(i * RUSH_SPREAD_SIM_S / len(rooms) / self.speed)
            async with gate:
                result = await self.ctl("ac", room, "--on", "--setpoint", "26", "--as", f"teacher:T{room}",
                                        "--rooms", room)
            word = _outcome(result).split(" ")[0]
            if isinstance(result, dict) and "queued" in str(result.get("message", "")):
                word = "queued"
            outcomes[word] = outcomes.get(word, 0) + 1

        await asyncio.gather(*(teacher(i, room) for i, room in enumerate(rooms)))
        summary = ", ".join(f"{n} {w}" for w, n in sorted(outcomes.items()))
        self.say(f"app: morning rush: {len(rooms)} teachers switched their classrooms' ACs on -> {summary}")

    async def ctl(self, *args: str) -> dict[str, Any] | str:
        """`campus-edge ctl ...` signed with the demo's key: the result, or why there is none."""
        argv = [sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "ctl", *args, "--key", str(self.key),
                "--config", str(self.site)]
        proc = await asyncio.create_subprocess_exec(*argv, env=self.env, stdin=subprocess.DEVNULL,
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), CTL_TIMEOUT_S)
        except TimeoutError:
            return "no answer"
        finally:
            if proc.returncode is None:   # cancelled (the demo stops) or timed out: no ctl outlives the demo
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        try:
            result = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return f"failed: {err.decode(errors='replace').strip()[-200:]}"
        return result if isinstance(result, dict) else f"failed: {result!r}"


def _outcome(result: Mapping[str, Any] | str) -> str:
    if isinstance(result, str):
        return result
    return f"{result.get('status')} {result.get('code')}" + (f" ({result['message']})" if result.get("message") else "")


def screen_url(cfg: Config) -> str | None:
    """Where a browser on this machine finds the energy screen (None: the config has none)."""
    if cfg.screen is None or cfg.screen.listen is None:
        return None
    return page_url(*parse_listen(cfg.screen.listen))


def booked_room(cfg: Config) -> str | None:
    """The room the app books: the library, else the last room with a door."""
    rooms = [ch.room for ch in cfg.devices if isinstance(ch, RelayChannel) and ch.kind == Kind.DOOR and ch.room]
    if BOOKED_ROOM in rooms:
        return BOOKED_ROOM
    return rooms[-1] if rooms else None
