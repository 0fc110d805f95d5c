"""Telemetry to an InfluxDB v2 write API (InfluxDB 2.x, VictoriaMetrics): CONTRACT.md section 4.

Why not influxdb-client: importing it costs ~30 MB RSS (reactivex, urllib3, dateutil) against a
daemon target of 60 MB; this writer is line protocol, gzip and one POST, with `http.client` in a
worker thread (bench/telemetry_bench.py measures both imports).

Flow: "state" messages from the event bus become `Point`s (`cloud_sync.lineproto`); a per-device
sampler (`cloud_sync.sampler`) keeps at most one point per `sample_s` window and writes at once
when `on` or `online` flips; every `flush_s` (`cloud.influx.flush_s`, 10 s by default) the sender
POSTs what is due. Nothing is written to the SD card while the server answers: only when a POST
fails retryably do the points go to the durable buffer, a `cloud_sync.outbox.Outbox` of its own
(`telemetry.db`, class "telemetry": SQLite WAL, bounded, oldest-first thinning and dropping with
counters, rows deleted only after a 2xx). The buffer is drained first on the next success and on
start after a restart.

Answers: 2xx delivered; 429, 5xx and network errors retried with jittered exponential backoff
(Retry-After respected); 401/403/404 (token or bucket wrong: the data is fine) retried slowly so an
operator's fix loses nothing the bound kept; 413 halves the batch; any other 4xx drops the batch,
counted and logged (retrying a bad line would block everything behind it for ever).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http.client
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

from cloud_sync.lineproto import Point, encode_body, make_point
from cloud_sync.outbox import Outbox
from cloud_sync.retry import downward_backoff
from cloud_sync.sampler import DEFAULT_SAMPLE_S, HEARTBEAT_S, Sampler, devices_of, state_fields, state_ts_ms
from edge.core.clock import Clock
from edge.core.config import Config, InfluxConfig
from edge.core.events import EventBus, Message, Subscription

log = logging.getLogger(__name__)

BATCH_LINES = 5000              # lines per POST (~150 kB raw, ~15 kB gzip)
MEMORY_MAX_LINES = 20_000       # more than this waiting in memory goes to the buffer at once
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
HTTP_TIMEOUT_S = 10.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
BACKOFF_JITTER = 0.5            # each wait is drawn from [1 - JITTER, 1] x the step
AUTH_BACKOFF_S = 300.0          # 401/403/404: a person has to fix the config; don't hammer meanwhile
RETRY_AFTER_MAX_S = 600.0
STOP_FLUSH_S = 2.0              # on shutdown, one last delivery attempt at most this long

Outcome = Literal["ok", "retry", "auth", "too_large", "drop"]


# -- HTTP ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WriteResult:
    outcome: Outcome
    status: int | None              # None: no answer (network error)
    retry_after_s: float | None = None
    detail: str = ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_MAX_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, delta), RETRY_AFTER_MAX_S)


def classify(status: int) -> Outcome:
    """What to do with a batch after this HTTP status."""
    if 200 <= status < 300:
        return "ok"
    if status == 429 or status >= 500:
        return "retry"
    if status in (401, 403, 404):
        return "auth"
    if status == 413:
        return "too_large"
    return "drop"


def write_url(influx: InfluxConfig) -> str:
    q = urlencode({"org": influx.org, "bucket": influx.bucket, "precision": "ms"})
    return f"{influx.url.rstrip('/')}/api/v2/write?{q}"


def post_write(url: str, body: bytes, token: str | None, *, timeout_s: float = HTTP_TIMEOUT_S,
               content_encoding: str = "gzip") -> WriteResult:
    """One blocking POST of a gzip line-protocol body (run it in a worker thread)."""
    u = urlsplit(url)
    conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(u.hostname or "", u.port, timeout=timeout_s)
    headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Encoding": content_encoding,
               "Accept": "application/json", "User-Agent": "campus-edge"}
    if token:
        headers["Authorization"] = f"Token {token}"
    try:
        conn.request("POST", f"{u.path}?{u.query}", body=body, headers=headers)
        resp = conn.getresponse()
        detail = resp.read(2048).decode("utf-8", "replace").strip()
        retry_after = parse_retry_after(resp.getheader("Retry-After"))
        return WriteResult(classify(resp.status), resp.status, retry_after, detail)
    except (OSError, http.client.HTTPException) as exc:
        return WriteResult("retry", None, None, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


# -- the service --------------------------------------------------------------------------------
@dataclass(slots=True)
class TelemetryStats:
    points: int = 0                 # built from state messages and write_ems
    sampled_out: int = 0            # replaced within their window by a newer value
    sent: int = 0                   # acknowledged by a 2xx
    rejected: int = 0               # dropped after a 4xx (not 429/401/403/404/413)
    requests: int = 0
    failures: int = 0               # retryable failures (network, 5xx, 429, auth)
    bytes_sent: int = 0             # gzip bodies of successful requests
    buffered: int = 0               # points that went to the durable buffer
    last_error: str = ""
    buffer: dict[str, Any] = field(default_factory=dict)


class TelemetryWriter:
    """`async with TelemetryWriter(cfg, bus, storage_dir=..., clock=...) as tw:` runs the writer."""

    def __init__(self, cfg: Config, events: EventBus, *, storage_dir: str | Path, clock: Clock,
                 flush_s: float | None = None, sample_s: Mapping[str, float] | None = None,
                 heartbeat_s: float = HEARTBEAT_S, max_bytes: int = DEFAULT_MAX_BYTES,
                 batch_lines: int = BATCH_LINES, backoff_min_s: float = BACKOFF_MIN_S,
                 backoff_max_s: float = BACKOFF_MAX_S, auth_backoff_s: float = AUTH_BACKOFF_S,
                 timeout_s: float = HTTP_TIMEOUT_S) -> None:
        if cfg.cloud is None or cfg.cloud.influx is None:
            raise ValueError("TelemetryWriter needs cloud.influx in the configuration")
        self.influx = cfg.cloud.influx
        self.url = write_url(self.influx)
        self.cfg = cfg
        self.events = events
        self.clock = clock
        self.flush_s = self.influx.flush_s if flush_s is None else flush_s
        self.heartbeat_ms = round(heartbeat_s * 1000)
        self.batch_lines = batch_lines
        self._retry = downward_backoff(backoff_min_s, backoff_max_s, BACKOFF_JITTER)      # 429, 5xx, network
        self._auth_retry = downward_backoff(auth_backoff_s, auth_backoff_s, BACKOFF_JITTER)  # 401/403/404: no growth
        self.timeout_s = timeout_s
        windows = {**DEFAULT_SAMPLE_S, **(sample_s or {})}
        self._devices = devices_of(cfg)
        self._samplers = {dev_id: Sampler(max(1, round(windows[d.kind] * 1000)))
                          for dev_id, d in self._devices.items()}
        self._site = {"school": cfg.site.school_id, "gateway": cfg.site.gateway_id}
        self.buffer = Outbox(Path(storage_dir) / "telemetry.db", max_bytes=max_bytes, clock=clock)
        self.stats_ = TelemetryStats()
        self._memory: list[tuple[str, str]] = []    # (device or "ems", line) not yet sent nor buffered
        self._sending: list[tuple[str, str]] = []   # taken from _memory by a POST still in flight
        self._spilling: set[asyncio.Future[Any]] = set()  # buffer inserts running in worker threads
        self._token: str | None = None
        self._wake = asyncio.Event()
        self._sub: Subscription | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._bg: list[asyncio.Task[None]] = []
        self._failing = False

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> TelemetryWriter:
        self._sub = self.events.subscribe("state", name="telemetry")
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._bg = [self._tasks.create_task(self._ingest(self._sub), name="telemetry-ingest"),
                    self._tasks.create_task(self._sender(), name="telemetry-send")]
        pending = self.buffer.stats().pending["telemetry"]
        log.info("telemetry to %s: %d points buffered from before", self.url, pending)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._tasks is not None
        assert self._sub is not None
        for t in self._bg:
            t.cancel()
        await self._tasks.__aexit__(None, None, None)
        self._unsend()  # cancelled mid-POST: maybe delivered, maybe not; at-least-once says send again
        self.events.unsubscribe(self._sub)
        while not self._sub.queue.empty():
            self._on_message(self._sub.queue.get_nowait())
        self._close_windows(force=True)
        try:
            await asyncio.wait_for(self.flush(), STOP_FLUSH_S)
        except TimeoutError:
            log.warning("telemetry: server slow at shutdown; points stay buffered")
        finally:
            self._unsend()
            await self._persist()
            self.buffer.close()

    # -- producing -------------------------------------------------------------------------------
    def write_ems(self, block_avg_kw: float, projected_kw: float, contract_kw: float, shed_units: int) -> None:
        """One `ems` point now (the EMS calls this once per decision)."""
        p = make_point("ems", self._site, {"block_avg_kw": block_avg_kw, "projected_kw": projected_kw,
                                           "contract_kw": contract_kw, "shed_units": shed_units},
                       round(self.clock.time() * 1000))
        if p is not None:
            self.stats_.points += 1
            self._emit("ems", [p])

    async def _ingest(self, sub: Subscription) -> None:
        async for msg in sub:
            self._on_message(msg)

    def _on_message(self, msg: Message) -> None:
        dev = self._devices.get(msg.key)
        if msg.topic != "state" or dev is None:
            return
        p = make_point(dev.measurement, dev.tags, state_fields(dev.kind, msg.payload),
                       state_ts_ms(msg.payload, msg.ts))
        if p is None:
            return
        self.stats_.points += 1
        sampler = self._samplers[msg.key]
        before = sampler.replaced
        self._emit(msg.key, sampler.offer(p))
        self.stats_.sampled_out += sampler.replaced - before

    def _emit(self, key: str, points: Sequence[Point]) -> None:
        self._memory += [(key, p.line()) for p in points]
        if len(self._memory) >= MEMORY_MAX_LINES:
            self._spill()
            self._wake.set()

    def _close_windows(self, force: bool = False) -> None:
        now_ms = round(self.clock.time() * 1000)
        for key, s in self._samplers.items():
            if force and s.pending is not None:
                self._emit(key, s.take())
            else:
                self._emit(key, s.due(now_ms, self.heartbeat_ms))

    # -- sending ---------------------------------------------------------------------------------
    async def _sender(self) -> None:
        # Wakes every flush_s even while backing off: what came in meanwhile goes to disk, so a long
        # Retry-After or an auth failure does not leave minutes of points in memory only.
        retry_at: float | None = None
        while True:
            delay = self.flush_s if retry_at is None else max(0.0, min(self.flush_s, retry_at - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            self._close_windows()
            if retry_at is not None and time.monotonic() < retry_at:
                await self._persist()
                continue
            retry_in = await self.flush()
            retry_at = None if retry_in is None else time.monotonic() + retry_in

    async def flush(self) -> float | None:
        """Send what is due: memory first if nothing is buffered, then the buffer. Seconds to back off, or None.

        A line in flight from memory is in `_sending` until answered; a cancellation puts it back.
        """
        if self._memory and not self._failing and not self.buffer.stats().pending["telemetry"]:
            while self._memory:
                # out of `_memory` while in flight (`_persist` may run meanwhile), back in unless answered
                self._sending, self._memory = self._memory[:self.batch_lines], self._memory[self.batch_lines:]
                res = await self._post([line for _, line in self._sending])
                if res.outcome == "ok":
                    self.stats_.sent += len(self._sending)
                    self._sending = []
                elif res.outcome == "drop":
                    self._reject(len(self._sending), res)
                    self._sending = []
                else:
                    self._unsend()
                    await self._persist()
                    return self._backoff(res)
        await self._persist()
        return await self._drain()

    async def _drain(self) -> float | None:
        limit = self.batch_lines
        while True:
            batch = await self.buffer.next_batch(limit)
            if not batch:
                self._failing = False
                return None
            res = await self._post([m.payload.decode() for m in batch])
            if res.outcome == "ok":
                await self.buffer.aack([m.seq for m in batch])
                self.stats_.sent += len(batch)
                continue
            if res.outcome == "drop" or (res.outcome == "too_large" and len(batch) == 1):
                await self.buffer.aack([m.seq for m in batch])
                self._reject(len(batch), res)
                continue
            self.buffer.rewind()
            if res.outcome == "too_large":
                limit = max(1, len(batch) // 2)
                continue
            return self._backoff(res)

    async def _post(self, lines: list[str]) -> WriteResult:
        body = encode_body(lines)
        token = self._read_token()
        res = await asyncio.to_thread(post_write, self.url, body, token, timeout_s=self.timeout_s)
        self.stats_.requests += 1
        if res.outcome == "ok":
            self.stats_.bytes_sent += len(body)
            self._retry.reset()
            if self._failing:
                log.info("telemetry: %s answers again", self.url)
        return res

    def _reject(self, n: int, res: WriteResult) -> None:
        self.stats_.rejected += n
        self.stats_.last_error = f"HTTP {res.status}: {res.detail}"
        log.error("telemetry: %d points refused by %s (HTTP %s: %s); dropped", n, self.url, res.status,
                  res.detail[:200])

    def _backoff(self, res: WriteResult) -> float:
        self.stats_.failures += 1
        self.stats_.last_error = f"HTTP {res.status}: {res.detail}" if res.status else res.detail
        if res.outcome == "auth":
            self._token = None  # re-read the token file: it may have been fixed
            wait = self._auth_retry.fail(time.monotonic())
        else:
            wait = self._retry.fail(time.monotonic())
        if res.retry_after_s is not None:
            wait = max(wait, res.retry_after_s)
        if not self._failing or res.outcome == "auth":
            log.warning("telemetry: %s; buffering, next attempt in %.1f s", self.stats_.last_error, wait)
        self._failing = True
        return wait

    def _unsend(self) -> None:
        """A POST from memory that got no usable answer (or was cancelled): its lines are due again."""
        self._memory, self._sending = self._sending + self._memory, []

    async def _persist(self) -> None:
        """Memory to the buffer; returns once every insert started so far has committed."""
        self._spill()
        if self._spilling:
            await asyncio.wait(set(self._spilling))

    def _spill(self) -> None:
        """Start moving memory to the buffer in a worker thread: up to MEMORY_MAX_LINES rows in one
        transaction (and maybe a WAL checkpoint) is disk I/O the event loop must not wait for."""
        if not self._memory:
            return
        lines, self._memory = self._memory, []
        rows: list[tuple[str, bytes, Literal["telemetry"], str | None]] = [
            (key, line.encode(), "telemetry", "") for key, line in lines]
        fut = asyncio.get_running_loop().run_in_executor(None, self._store, rows)
        self._spilling.add(fut)

        def done(f: asyncio.Future[Any]) -> None:
            self._spilling.discard(f)
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                self.stats_.last_error = f"buffer: {exc}"
                log.error("telemetry: %d points could not be buffered: %s", len(rows), exc)
            else:
                self.stats_.buffered += len(rows)

        fut.add_done_callback(done)

    def _store(self, rows: list[tuple[str, bytes, Literal["telemetry"], str | None]]) -> None:
        self.buffer.put_many(rows)
        self.buffer.maybe_checkpoint()

    def _read_token(self) -> str | None:
        if self._token is None and self.influx.token_file is not None:
            try:
                self._token = Path(self.influx.token_file).read_text().strip()
            except OSError as exc:
                log.error("telemetry: cannot read token file %s: %s", self.influx.token_file, exc)
        return self._token

    def stats(self) -> TelemetryStats:
        b = self.buffer.stats()
        self.stats_.buffer = {"pending": b.pending["telemetry"], "bytes": b.bytes_used, "max_bytes": b.max_bytes,
                              "thinned": b.telemetry_thinned, "dropped": b.telemetry_dropped}
        return self.stats_
