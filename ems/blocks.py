"""Demand measurement: clock-aligned 15-minute blocks from a meter's readings (DOMAIN.md section 2).

`DemandMeter` takes the site meter's readings (`update`) and says where the present block stands
(`status`): the energy so far E_tau, the block average so far, the projected block average and the
power still allowed for the rest of the block, P_allow = (C*T - E_tau) / (T - tau).

How a reading becomes energy, between the previous reading and this one:
- both carry the energy counter and it advanced plausibly (0 <= dE <= 3*C*dt, plus one counter step of
  slack): the counter's increment, spread evenly over the interval (exact however long the gap);
- otherwise (no counter, or a counter that went backwards, was reset or jumped: `counter_faults`
  counts those) the power is integrated: trapezoid between the two powers, but a gap longer than
  `stale_after_s` is integrated with the later reading's power (the earlier one says nothing about the
  gap); a reading without power holds the previous power;
- a gap longer than `max_gap_s` (the daemon was down) is not integrated at all: the block the meter
  comes back in is measured from that reading on, and the blocks inside the gap are not recorded.
A non-finite power or counter is ignored (as if the field were absent), a negative counter too; a
negative power (export through the meter, e.g. rooftop PV) counts as 0 kW: demand is import.
A reading at or before the previous one is ignored.

Blocks are aligned to the epoch: start = floor(t / T) * T. Every real time zone's offset is a whole
multiple of 15 minutes, so these are also the local :00/:15/:30/:45 blocks. A block the meter saw only
part of (the daemon started inside it) is extrapolated from the covered part at the covered average;
a completed block is recorded only when at least half of it was covered.

The projection holds the latest power to the end of the block (no smoothing: a unit that starts shows
up at once, which is what the controller must react to); between readings, `status` extends E_tau with
the latest power, unless the data is stale.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Final

from ems.types import BLOCK_S, BlockStatus

COUNTER_SLACK_KWH: Final = 0.1     # one step of the coarsest common counter (0.1 kWh): not a jump
JUMP_FACTOR: Final = 3.0           # a counter advancing faster than 3x the contract is implausible
ALLOW_LIMIT_FACTOR: Final = 10.0   # |allow_kw| is clamped to 10x the contract: near the block's end
                                   # the formula divides by almost nothing, and no site adds or sheds more
MIN_COVERAGE: Final = 0.5          # a completed block seen for less than this share is not recorded
KEEP_BLOCKS: Final = 2 * 96        # completed blocks kept: two days
SNAPSHOT_VERSION: Final = 1


def block_start(t: float, block_s: float = BLOCK_S) -> float:
    """The start of the clock-aligned block holding unix time `t`."""
    start = math.floor(t / block_s) * block_s
    if start > t:              # t / block_s rounded up onto the next boundary
        start -= block_s
    elif t - start >= block_s:
        start += block_s
    return start


def _clean_power(v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return max(0.0, v)


def _clean_counter(v: float | None) -> float | None:
    if v is None or not math.isfinite(v) or v < 0:
        return None
    return v


class DemandMeter:
    """The site meter's readings folded into 15-minute demand blocks against contract `contract_kw`."""

    def __init__(self, contract_kw: float, *, stale_after_s: float = 15.0, block_s: float = BLOCK_S,
                 max_gap_s: float = 3600.0) -> None:
        for name, v in (("contract_kw", contract_kw), ("stale_after_s", stale_after_s), ("block_s", block_s),
                        ("max_gap_s", max_gap_s)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"DemandMeter: {name} must be a positive number, got {v!r}")
        self.contract_kw = contract_kw
        self.stale_after_s = stale_after_s
        self.block_s = block_s
        self.max_gap_s = max_gap_s
        self.counter_faults = 0     # counter went backwards / reset / jumped: power was integrated instead
        self.ignored = 0            # readings with nothing usable, or not after the previous one
        self.completed: deque[tuple[float, float]] = deque(maxlen=KEEP_BLOCKS)   # (start, avg_kw)
        self.peak_kw = 0.0          # highest completed block since the last reset_peak
        self.peak_start: float | None = None
        self.sliding_peak_kw = 0.0  # highest 15-minute average over any window since the last reset_peak
        self.sliding_kw: float | None = None   # the average over the last 15 minutes (None until covered)
        self._start: float | None = None       # block of the latest reading
        self._covered_from = 0.0               # the block's energy is known from here on
        self._e_kwh = 0.0                      # energy in the block from _covered_from to _last_ts
        self._last_ts: float | None = None
        self._last_p_kw: float | None = None
        self._last_counter: float | None = None
        self._cum_kwh = 0.0                    # energy since the measurement (re)started, for the window
        self._window: deque[tuple[float, float]] = deque()   # (ts, cum_kwh) over the last block_s

    # -- readings ----------------------------------------------------------------------------------
    def update(self, ts: float, power_kw: float | None, energy_kwh: float | None) -> None:
        """Fold one meter reading taken at unix time `ts` (power in kW, import counter in kWh) in."""
        if not math.isfinite(ts):
            raise ValueError(f"DemandMeter.update: ts must be a finite unix time, got {ts!r}")
        p = _clean_power(power_kw)
        e = _clean_counter(energy_kwh)
        last = self._last_ts
        if (p is None and e is None) or (last is not None and ts <= last):
            self.ignored += 1
            return
        if last is None or self._start is None or ts - last > self.max_gap_s:
            self._restart(ts, p, e)
            return
        dt = ts - last
        p0, p1, counter_kw = self._segment(dt, p, e)
        self._integrate(last, ts, p0, p1)
        self._last_ts = ts
        self._last_p_kw = p if p is not None else (counter_kw if counter_kw is not None else self._last_p_kw)
        self._last_counter = e

    def _segment(self, dt: float, p: float | None, e: float | None) -> tuple[float, float, float | None]:
        """The power over the interval as a line from p0 to p1 (kW), and the counter's mean power if used."""
        if e is not None and self._last_counter is not None:
            d = e - self._last_counter
            if 0.0 <= d <= JUMP_FACTOR * self.contract_kw * dt / 3600.0 + COUNTER_SLACK_KWH:
                kw = d * 3600.0 / dt
                return kw, kw, kw
            self.counter_faults += 1
        if p is None:
            held = self._last_p_kw or 0.0
            return held, held, None
        if dt > self.stale_after_s or self._last_p_kw is None:
            return p, p, None
        return self._last_p_kw, p, None

    def _integrate(self, t0: float, t1: float, p0: float, p1: float) -> None:
        assert self._start is not None
        slope = (p1 - p0) / (t1 - t0)

        def kwh(a: float, b: float) -> float:
            return (b - a) * (2 * p0 + slope * ((a - t0) + (b - t0))) / 2 / 3600.0

        t = t0
        while t1 >= self._start + self.block_s:   # a reading exactly at a boundary opens the next block
            end = self._start + self.block_s
            self._e_kwh += kwh(t, end)
            self._finalise(end)
            self._start, self._covered_from, self._e_kwh, t = end, end, 0.0, end
        self._e_kwh += kwh(t, t1)
        self._cum_kwh += kwh(t0, t1)
        self._slide(t1)

    def _restart(self, ts: float, p: float | None, e: float | None) -> None:
        if self._start is not None and self._last_ts is not None:
            self._finalise(self._last_ts)
        self._start = block_start(ts, self.block_s)
        self._covered_from, self._e_kwh = ts, 0.0
        self._last_ts, self._last_p_kw, self._last_counter = ts, p, e
        self._window.clear()
        self._window.append((ts, self._cum_kwh))
        self.sliding_kw = None

    def _finalise(self, upto: float) -> None:
        """Record the present block as completed (it is over); its energy is known up to `upto`."""
        assert self._start is not None
        covered = min(upto, self._start + self.block_s) - self._covered_from
        if covered < MIN_COVERAGE * self.block_s:
            return
        avg_kw = self._e_kwh * 3600.0 / covered
        self.completed.append((self._start, avg_kw))
        if avg_kw > self.peak_kw:
            self.peak_kw, self.peak_start = avg_kw, self._start

    def _slide(self, ts: float) -> None:
        self._window.append((ts, self._cum_kwh))
        horizon = ts - self.block_s
        while len(self._window) >= 2 and self._window[1][0] <= horizon:
            self._window.popleft()
        t_a, c_a = self._window[0]
        if t_a > horizon:
            return   # not yet a whole window of data
        t_b, c_b = self._window[1]
        at_horizon = c_a + (c_b - c_a) * (horizon - t_a) / (t_b - t_a)
        self.sliding_kw = (self._cum_kwh - at_horizon) * 3600.0 / self.block_s
        self.sliding_peak_kw = max(self.sliding_peak_kw, self.sliding_kw)

    # -- the present block -------------------------------------------------------------------------
    def status(self, now: float) -> BlockStatus:
        """Where the block holding `now` stands; a `now` before the latest reading is taken as that reading's time."""
        if not math.isfinite(now):
            raise ValueError(f"DemandMeter.status: now must be a finite unix time, got {now!r}")
        C, T = self.contract_kw, self.block_s
        if self._last_ts is not None:
            now = max(now, self._last_ts)
        start = block_start(now, T)
        tau = now - start
        stale = self._last_ts is None or now - self._last_ts > self.stale_after_s
        p = self._last_p_kw
        if self._last_ts is None or self._start is None:
            e_cov, cov_from = 0.0, now
        else:
            hold = 0.0 if stale or p is None else p
            if start == self._start:
                e_cov = self._e_kwh + hold * (now - self._last_ts) / 3600.0
                cov_from = self._covered_from
            elif stale:
                e_cov, cov_from = 0.0, now
            else:
                e_cov, cov_from = hold * tau / 3600.0, start
        cov_s = now - cov_from
        if cov_from > start:   # the start of the block was not seen: fill it at the covered average
            fill_kw = e_cov * 3600.0 / cov_s if cov_s > 0 else (0.0 if stale else (p or 0.0))
            e_cov += fill_kw * (cov_from - start) / 3600.0
        avg_kw = e_cov * 3600.0 / tau if tau > 0 else (p or 0.0)
        hold_kw = p if p is not None and not stale else avg_kw   # stale: nothing is extended
        projected_kw = (e_cov * 3600.0 + hold_kw * (T - tau)) / T
        limit = ALLOW_LIMIT_FACTOR * C
        raw = (C * T - e_cov * 3600.0) / (T - tau)   # tau < T always (block_start)
        allow_kw = min(limit, max(-limit, raw))
        return BlockStatus(start=start, elapsed_s=tau, energy_kwh=e_cov, avg_kw=avg_kw, projected_kw=projected_kw,
                           allow_kw=allow_kw, power_kw=p, contract_kw=C, stale=stale)

    def peak_kw_since(self, t0: float) -> float:
        """The highest completed block that started at or after `t0` (within the kept history); 0 if none."""
        return max((avg for start, avg in self.completed if start >= t0), default=0.0)

    def reset_peak(self) -> None:
        """Start a new billing period: forget the peak and the sliding peak (the history stays)."""
        self.peak_kw, self.peak_start = 0.0, None
        self.sliding_peak_kw = self.sliding_kw if self.sliding_kw is not None else 0.0

    # -- persistence -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything needed to carry on after a restart, as JSON-able data."""
        return {
            "version": SNAPSHOT_VERSION, "block_s": self.block_s,
            "start": self._start, "covered_from": self._covered_from, "energy_kwh": self._e_kwh,
            "last_ts": self._last_ts, "last_power_kw": self._last_p_kw, "last_counter_kwh": self._last_counter,
            "completed": [[s, a] for s, a in self.completed],
            "peak_kw": self.peak_kw, "peak_start": self.peak_start, "sliding_peak_kw": self.sliding_peak_kw,
            "counter_faults": self.counter_faults,
        }

    def restore(self, data: dict[str, Any], now: float | None = None) -> None:
        """Take a snapshot back; the running block's energy only if `now` (when given) is still in that block."""
        try:
            if data["version"] != SNAPSHOT_VERSION or float(data["block_s"]) != self.block_s:
                raise ValueError(f"DemandMeter.restore: snapshot version/block_s {data['version']}/{data['block_s']}"
                                 f" does not match {SNAPSHOT_VERSION}/{self.block_s}")
            completed = [(float(s), float(a)) for s, a in data["completed"]]
            peak_kw, sliding = float(data["peak_kw"]), float(data["sliding_peak_kw"])
            peak_start = None if data["peak_start"] is None else float(data["peak_start"])
            start = None if data["start"] is None else float(data["start"])
            last_ts = None if data["last_ts"] is None else float(data["last_ts"])
            last_p = None if data["last_power_kw"] is None else float(data["last_power_kw"])
            last_c = None if data["last_counter_kwh"] is None else float(data["last_counter_kwh"])
            covered_from, e_kwh = float(data["covered_from"]), float(data["energy_kwh"])
            faults = int(data["counter_faults"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ValueError) and str(exc).startswith("DemandMeter"):
                raise
            raise ValueError(f"DemandMeter.restore: a damaged snapshot ({type(exc).__name__}: {exc})") from None
        self.completed = deque(completed, maxlen=KEEP_BLOCKS)
        self.peak_kw, self.peak_start, self.sliding_peak_kw = peak_kw, peak_start, sliding
        self.counter_faults = faults
        self._cum_kwh, self._window, self.sliding_kw = 0.0, deque(), None
        if start is None or last_ts is None or (now is not None and block_start(now, self.block_s) != start):
            self._start, self._last_ts, self._last_p_kw, self._last_counter = None, None, None, None
            self._e_kwh = 0.0
            return
        self._start, self._covered_from, self._e_kwh = start, covered_from, e_kwh
        self._last_ts, self._last_p_kw, self._last_counter = last_ts, last_p, last_c
        self._window.append((last_ts, 0.0))
