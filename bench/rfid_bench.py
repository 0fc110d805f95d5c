"""RFID readers: how fast the framings parse, and how long a tap takes from the wire to the `card` event.

(a) Parsers (`drivers.rfid.framing`, pure, no I/O): a stream of distinct cards per framing, fed one
frame per `feed` (as a 9600-baud port delivers them) and in 4096-byte chunks (a backlog), with and
without 10 % of the stream being noise and broken frames. Frames per second, best of `--repeat`.

(b) Tap latency (`drivers.rfid.driver.RfidDriver`, one `rdm6300` reader): a frame of a new card is
written on the reader's end of a socat pty pair (and, for comparison in the same run, by a
socket:// peer on loopback); the latency runs from the return of the write of the frame's last
byte to the driver's `card` event reaching its sink, and `receipt` from the same write to the
arrival time the driver stamps on the tap (`Tap.at`). A pty ignores the baud rate: the 14.6 ms a
14-byte frame takes on a real 9600-baud line (10 bits per byte) come on top, and are given apart.
A random pause of 5-25 ms separates taps.

    .venv/bin/python bench/rfid_bench.py [--taps 300] [--frames 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import document, emit, free_port, run_guarded, self_cpu_s, summary_ms

from drivers.rfid.driver import RfidDriver
from drivers.rfid.framing import FRAMINGS, Framing, decoder, frame
from drivers.rfid.taps import Tap
from edge.core.config import RfidReader
from edge.core.model import DeviceState
from simulator.ptys import PtyPair

BAUD = 9600
RDM6300_WIRE_MS = 14 * 10 / BAUD * 1000


def card_range(framing: Framing) -> int:
    return {"rdm6300": 1 << 32, "wiegand26": 1 << 24, "wiegand34": 1 << 32, "line": 10**10}[framing]


def stream(framing: Framing, frames: int, noise: float, rng: random.Random) -> list[bytes]:
    """`frames` frames of random cards; with `noise`, that share of pieces is garbage or a broken frame."""
    out: list[bytes] = []
    for _ in range(frames):
        f = frame(framing, rng.randrange(card_range(framing)))
        if noise and rng.random() < noise:
            out.append(rng.choice([rng.randbytes(8), f[: len(f) // 2] + b"\n", f[:-3] + b"99" + f[-1:]]))
        out.append(f)
    return out


def parse_rate(pieces: list[bytes], framing: Framing, chunk: int | None, repeat: int) -> dict[str, Any]:
    data = b"".join(pieces)
    feeds = pieces if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    best = float("inf")
    got = 0
    for _ in range(repeat):
        dec = decoder(framing)
        t0 = time.perf_counter()
        got = 0
        for piece in feeds:
            got += len(dec.feed(piece))
        best = min(best, time.perf_counter() - t0)
    return {"frames": got, "seconds": round(best, 4), "frames_per_s": round(got / best),
            "mib_per_s": round(len(data) / best / 2**20, 1)}


def parsers(frames: int, repeat: int) -> dict[str, Any]:
    rng = random.Random(1)
    out: dict[str, Any] = {}
    for framing in FRAMINGS:
        clean = stream(framing, frames, 0.0, rng)
        noisy = stream(framing, frames, 0.1, rng)
        out[framing] = {"one_frame_per_feed": parse_rate(clean, framing, None, repeat),
                        "chunks_4096": parse_rate(clean, framing, 4096, repeat),
                        "noisy_one_piece_per_feed": parse_rate(noisy, framing, None, repeat)}
    return out


class Sink:
    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.event_at = 0.0
        self.cards: list[str] = []
        self.open = asyncio.Event()

    def on_state(self, device_id: str, state: DeviceState, online: bool, ts: float) -> None:
        if online:
            self.open.set()

    def on_health(self, device_id: str, online: bool, reason: str | None) -> None:
        pass

    def on_event(self, kind: str, body: Mapping[str, Any]) -> None:
        self.event_at = time.monotonic()
        self.cards.append(str(body["card"]))
        self.arrived.set()


async def taps_through(port: str, write: Any, taps: int, rng: random.Random, sink: Sink) -> dict[str, Any]:
    rdr = RfidReader.model_validate({"id": "gate-1", "kind": "rfid", "port": port, "framing": "rdm6300",
                                     "purpose": "gate"})
    latency: list[float] = []
    receipt: list[float] = []
    stamped: list[Tap] = []
    hooked = asyncio.Event()

    async def hook(tap: Tap) -> None:
        stamped.append(tap)
        hooked.set()

    cpu0 = self_cpu_s()
    async with RfidDriver([rdr], sink) as drv:
        drv.on_tap = hook
        await asyncio.wait_for(sink.open.wait(), 10)
        for n in range(taps):
            sink.arrived.clear()
            hooked.clear()
            card = 1_000_000 + n                         # a new card each time: never folded as a repeat
            data = frame("rdm6300", card)
            await write(data)
            written = time.monotonic()
            await asyncio.wait_for(sink.arrived.wait(), 10)
            latency.append(sink.event_at - written)
            await asyncio.wait_for(hooked.wait(), 10)     # the hook's task has the tap's arrival stamp
            receipt.append(stamped[n].at - written)
            await asyncio.sleep(rng.uniform(0.005, 0.025))
        stats = drv.stats()
    cpu = self_cpu_s() - cpu0
    return {"tap_to_event": summary_ms(latency), "write_to_receipt": summary_ms(receipt),
            "taps": stats["taps"], "drops": stats["drops"], "process_cpu_s": round(cpu, 2)}


async def latency(taps: int) -> dict[str, Any]:
    rng = random.Random(2)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rfid-bench-") as tmp:
        async with PtyPair(str(Path(tmp) / "tty")) as pty:
            fd = os.open(pty.sim_device, os.O_RDWR | os.O_NOCTTY)
            try:
                async def pty_write(data: bytes) -> None:
                    os.write(fd, data)

                out["pty"] = await taps_through(pty.device, pty_write, taps, rng, Sink())
            finally:
                os.close(fd)
    writers: list[asyncio.StreamWriter] = []
    connected = asyncio.Event()

    async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)
        connected.set()

    port = free_port()
    server = await asyncio.start_server(accept, "127.0.0.1", port)
    try:
        async def sock_write(data: bytes) -> None:
            await asyncio.wait_for(connected.wait(), 10)
            writers[-1].write(data)
            await writers[-1].drain()

        out["socket"] = await taps_through(f"socket://127.0.0.1:{port}", sock_write, taps, rng, Sink())
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--taps", type=int, default=300)
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    started = time.time()
    parsed = parsers(args.frames, args.repeat)
    lat = run_guarded(latency(args.taps), limit_s=60 + args.taps)
    p50 = {k: v["tap_to_event"]["p50_ms"] for k, v in lat.items()}
    doc = document("rfid_bench", started, parsers=parsed, tap_latency=lat,
                   rdm6300_wire_time_9600_baud_ms=round(RDM6300_WIRE_MS, 1),
                   ratios={"pty_over_socket_p50": round(p50["pty"] / p50["socket"], 2) if p50["socket"] else None,
                           "rdm6300_frames_per_s_over_wire_limit": round(
                               parsed["rdm6300"]["one_frame_per_feed"]["frames_per_s"] / (1000 / RDM6300_WIRE_MS))},
                   notes=["a pty ignores the baud rate: add the wire time for a real 9600-baud reader",
                          "latency is measured from the return of os.write / drain of the last byte"])
    emit("rfid_bench", doc)


if __name__ == "__main__":
    main()
