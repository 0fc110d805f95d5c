"""`campus-edge demo` and `campus-edge simulate` stop their whole process tree on SIGTERM, SIGHUP and Ctrl-C.

Each run takes a census of the processes it started (descendants by parent, and every process in
their sessions: the demo starts each child in its own session) while it runs, signals only the
command's own pid, and then requires every one of them gone and exit status 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port

EXE = [sys.executable, "-m", "edge.cli"]
EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "example-school.yaml"
STOP_WITHIN_S = 20.0
# as from a terminal, whatever the test runner inherited (nohup ignores SIGHUP); env execs in place
DEFAULT_SIGNALS = ["env", "--default-signal=HUP,INT,TERM"]
SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGHUP, id="SIGHUP"),
           pytest.param(signal.SIGINT, id="SIGINT")]


@dataclass(frozen=True, slots=True)
class Entry:
    pid: int
    ppid: int
    sid: int
    start: int  # clock ticks after boot: with the pid, names one process even if the pid is reused
    state: str
    cmdline: str


def _table() -> dict[int, Entry]:
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        f = stat.rsplit(")", 1)[1].split()
        out[int(d.name)] = Entry(int(d.name), int(f[1]), int(f[3]), int(f[19]), f[0], cmd)
    return out


def _tree(root: int) -> set[tuple[int, int]]:
    """(pid, start) of `root`'s descendants and of every process sharing a session with one of them."""
    table = _table()
    found = {root}
    grew = True
    while grew:
        sids = {table[p].sid for p in found if p in table}
        more = {e.pid for e in table.values() if e.ppid in found or e.sid in sids}
        grew = not more <= found
        found |= more
    found.discard(root)
    return {(p, table[p].start) for p in found if p in table}


def _alive(census: set[tuple[int, int]]) -> list[Entry]:
    table = _table()
    return [table[p] for p, start in census if p in table and table[p].start == start and table[p].state != "Z"]


def _strays(marker: str) -> list[Entry]:
    """Any live socat, mosquitto or campus-edge process whose command line names the test's directory."""
    return [e for e in _table().values() if marker in e.cmdline and e.state != "Z"
            and any(word in e.cmdline for word in ("socat", "mosquitto", "edge.cli"))]


def _example(tmp: Path) -> Path:
    """The example school with its Modbus TCP bus on a free port."""
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "port: 15020" in text
    path = tmp / "school.yaml"
    path.write_text(text.replace("port: 15020", f"port: {free_port()}"), encoding="utf-8")
    return path


@contextlib.contextmanager
def _started(argv: list[str], tmp: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """Run `argv` (its output in a file: nobody reads a pipe while it prints its view); kill leftovers after."""
    out = tmp / "stdout.txt"
    with out.open("wb") as fh:
        proc = subprocess.Popen([*DEFAULT_SIGNALS, *argv], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        yield proc, out
    finally:
        census = _tree(proc.pid) if proc.poll() is None else set()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for e in _alive(census) + _strays(str(tmp)):  # only what this test started
            with contextlib.suppress(ProcessLookupError):
                os.kill(e.pid, signal.SIGKILL)


def _wait_for(out: Path, proc: subprocess.Popen[bytes], text: str, within: float) -> None:
    deadline = time.monotonic() + within
    while text not in out.read_text(encoding="utf-8", errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} from {proc.args} (exit {proc.returncode}):\n"
                                 + out.read_text(encoding="utf-8", errors="replace")[-3000:])
        time.sleep(0.1)


def _stop_and_census(proc: subprocess.Popen[bytes], sig: int, out: Path, marker: str, *,
                     expect: dict[str, int]) -> None:
    census = _tree(proc.pid)
    running = _alive(census)
    for word, n in expect.items():  # the census sees what it must: else an empty one would pass
        assert sum(1 for e in running if word in e.cmdline) >= n, (word, [e.cmdline for e in running])
    proc.send_signal(sig)
    try:
        rc = proc.wait(STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{proc.args} still running {STOP_WITHIN_S} s after {sig.name}") from None
    left = _alive(census) + [e for e in _strays(marker) if (e.pid, e.start) not in census]
    assert not left, f"left running after {sig.name}: " + "; ".join(f"{e.pid} {e.cmdline}" for e in left)
    assert rc == 0, f"exit {rc} after {sig.name}:\n" + out.read_text(encoding="utf-8", errors="replace")[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", SIGNALS)
def test_demo_stops_its_whole_tree(sig: signal.Signals, tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the demo's work directory (ptys, broker) lands here
    with _started([*EXE, "demo", "--config", str(_example(tmp_path))], tmp_path, env) as (proc, out):
        _wait_for(out, proc, "demo running:", within=45)
        _stop_and_census(proc, sig, out, str(tmp_path),
                         expect={"mosquitto": 1, "simulate": 1, "socat": 3, " run ": 1})
    assert "demo stopped" in out.read_text(encoding="utf-8")
    assert not list(tmp_path.glob("campus-edge-demo-*")), "the demo's work directory is left behind"


@pytest.mark.parametrize("sig", SIGNALS)
def test_simulate_stops_its_whole_tree(sig: signal.Signals, tmp_path: Path) -> None:
    env = {**os.environ, "CAMPUS_EDGE_RUN_DIR": str(tmp_path / "run"), "CAMPUS_EDGE_STATE_DIR": str(tmp_path / "st")}
    with _started([*EXE, "simulate", "--config", str(_example(tmp_path))], tmp_path, env) as (proc, out):
        _wait_for(out, proc, "READY", within=30)
        _stop_and_census(proc, sig, out, str(tmp_path), expect={"socat": 3})
    assert not [p for p in (tmp_path / "run").iterdir() if p.is_symlink()], "pty links left behind"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_demo_stops_while_starting_and_a_second_signal_does_not_cut_the_stop_short(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    with _started([*EXE, "demo", "--config", str(_example(tmp_path))], tmp_path, env) as (proc, out):
        census: set[tuple[int, int]] = set()
        deadline = time.monotonic() + 30
        while sum(1 for e in _alive(census) if "socat" in e.cmdline) < 3:  # the simulator is up, the daemon not
            assert proc.poll() is None, out.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, "the simulator's ptys did not appear"
            census |= _tree(proc.pid)
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # an impatient second Ctrl-C while the children stop
        census |= _tree(proc.pid)
        assert proc.wait(STOP_WITHIN_S) == 0, out.read_text(encoding="utf-8")
        left = _alive(census) + _strays(str(tmp_path))
        assert not left, "; ".join(f"{e.pid} {e.cmdline}" for e in left)
    assert "demo running" not in out.read_text(encoding="utf-8")  # it was stopped while starting
