"""`campus-edge ems train`: learn each room's temperature model and habits from the gateway's history.

An offline process, run daily (numpy and scikit-learn stay out of the daemon): it reads the last
`days` of ems.history, fits per room the one-step linear model of ems.roommodel, checks it on
held-out days and writes the coefficients and habits (models/rooms.json) for the daemon.

Fitting: ordinary least squares (scikit-learn's LinearRegression) of the per-step temperature
change on the model's features. About 1,400 samples a day per room for 12 coefficients is well
determined, so ridge's shrinkage would buy nothing and would bias the AC and occupancy gains the
controller relies on; lstsq's minimum-norm answer already copes with a column that never moves (an
AC that never ran; its gains then come from the default model, see `fit_room`). The time constant
of the slow temperature (ems.roommodel) is chosen per room from SLOW_TAUS_S on the last training
days.

Evaluation: the last HOLDOUT_SHARE of days (at least one) is held out. From every held-out sample
whose next 15 minutes are recorded, the model fitted on the days before is rolled forward with the
recorded AC power, unit states and occupancy, and compared with the recorded temperature 15 minutes
on: the RMSE per room and over all rooms, next to persistence (the temperature stays as it is). The
exported coefficients are then fitted on every day. A room with too little history keeps the model it
had (or the default one).

Habits: a switch-on is `units_on` going from 0 to more. The first one of each local day gives the
usual first switch-on per weekday (the median, where the room switched on at least on half of that
weekday's days and twice); switch-ons after at least MIN_OFF_FOR_HABIT_S off give the median room
temperature at which people switch on (shorter gaps are mostly the energy manager's own rotation).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from array import array
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LinearRegression  # type: ignore[import-untyped]
from tqdm import tqdm  # type: ignore[import-untyped]

from ems.history import RoomHistory, Sample
from ems.roommodel import HARMONICS, Habits, RoomModel, RoomModels, default_model, load_models

Array = npt.NDArray[np.float64]
T = TypeVar("T")

HORIZON_S = 900.0
HOLDOUT_SHARE = 0.2
MIN_DAYS = 3                     # two to fit on (one of them to choose the slow time constant), one held out
MIN_DAY_COVERAGE_S = 6 * 3600.0  # a day counts (for MIN_DAYS and the hold-out) with this much of a room's samples
MIN_FIT_STEPS = 720              # per room: half a day of one-minute steps on the fitting days
SLOW_TAUS_S = (2 * 3600.0, 4 * 3600.0, 8 * 3600.0)
STEP_TOLERANCE = 0.5             # a step is consecutive when its length is within +/-50 % of the usual step
MIN_OFF_FOR_HABIT_S = 1800.0
TARGET_RMSE_C = 0.4
FEATURES = ("temp", "slow", "outdoor", "ac_kw", "on", "occupied", "occupied_open",
            *(f"{f}{k}" for k in range(1, HARMONICS + 1) for f in ("sin", "cos")))


class NotEnoughData(Exception):
    """The history is too short to learn from (says how much is needed)."""


@dataclass(frozen=True, slots=True)
class RoomSeries:
    """One room's samples as arrays, in time order, with local-time columns."""

    room: str
    ts: Array
    temp_c: Array
    ac_kw: Array
    units_on: Array
    occupied: Array                  # 1/0; unknown counts as 0 (as in RoomModel.step_c)
    outdoor_c: Array                 # nan where missing
    hour: Array                      # local hour 0..24
    day: npt.NDArray[np.int64]       # local day number (days since 1970-01-01 local)
    step_s: float

    @property
    def n(self) -> int:
        return len(self.ts)

    @property
    def has_outdoor(self) -> bool:
        return bool(self.n) and not bool(np.isnan(self.outdoor_c).any())

    def valid_steps(self) -> npt.NDArray[np.bool_]:
        """valid[k]: samples k and k+1 are one usual step apart."""
        dt = np.diff(self.ts)
        return (dt >= self.step_s * (1 - STEP_TOLERANCE)) & (dt <= self.step_s * (1 + STEP_TOLERANCE))

    def slow(self, tau_s: float) -> Array:
        """The slow temperature at every sample (an exponential average, as the daemon keeps it)."""
        alpha = 1 - np.exp(-np.maximum(np.diff(self.ts), 0.0) / tau_s)
        out = np.empty(self.n)
        if self.n:
            s = out[0] = self.temp_c[0]
            for k in range(1, self.n):
                s += (self.temp_c[k] - s) * alpha[k - 1]
                out[k] = s
        return out


@dataclass(frozen=True, slots=True)
class RoomReport:
    """How one room's model did."""

    room: str
    samples: int
    rmse_15min_c: float
    persistence_rmse_15min_c: float
    evaluated: int                   # 15-minute predictions on the held-out days
    slow_tau_h: float
    outdoor_sensor: bool
    ac_on_share: float
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class TrainReport:
    """What `ems train` did, for the operator and `--json`."""

    rooms: tuple[RoomReport, ...]
    skipped: Mapping[str, str]       # room -> why it keeps its previous (or the default) model
    rmse_15min_c: float              # over every held-out prediction of every trained room
    persistence_rmse_15min_c: float
    days: int
    held_out_days: int
    samples: int
    train_s: float
    out: str
    habits: Mapping[str, Habits] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {
            "rmse_15min_c": round(self.rmse_15min_c, 4),
            "persistence_rmse_15min_c": round(self.persistence_rmse_15min_c, 4),
            "target_rmse_c": TARGET_RMSE_C,
            "days": self.days, "held_out_days": self.held_out_days, "samples": self.samples,
            "train_s": round(self.train_s, 3), "out": self.out,
            "rooms": {r.room: {"samples": r.samples, "rmse_15min_c": round(r.rmse_15min_c, 4),
                               "persistence_rmse_15min_c": round(r.persistence_rmse_15min_c, 4),
                               "evaluated": r.evaluated, "slow_tau_h": r.slow_tau_h,
                               "outdoor_sensor": r.outdoor_sensor, "ac_on_share": round(r.ac_on_share, 3),
                               "warning": r.warning} for r in self.rooms},
            "skipped": dict(self.skipped),
            "habits": {room: {"first_on_min": list(h.first_on_min), "on_temp_c": h.on_temp_c,
                              "days": h.days, "switch_ons": h.switch_ons} for room, h in self.habits.items()},
        }


# -- reading ---------------------------------------------------------------------------------------
def local_columns(ts: Array, tz: ZoneInfo) -> tuple[Array, npt.NDArray[np.int64]]:
    """(local hour, local day number) of unix times (the zone's offset looked up once per hour)."""
    hours = np.floor(ts / 3600).astype(np.int64)
    offsets = {int(h): datetime.fromtimestamp(int(h) * 3600, tz).utcoffset() for h in np.unique(hours)}
    off = np.array([offsets[int(h)].total_seconds() if offsets[int(h)] else 0.0 for h in hours])  # type: ignore[union-attr]
    local = ts + off
    return (local % 86400) / 3600, np.floor(local / 86400).astype(np.int64)


def series_from(samples: Iterable[Sample], tz: ZoneInfo) -> dict[str, RoomSeries]:
    """Group samples by room into arrays (samples in any order; 8 bytes a value while reading, not a Sample each)."""
    cols: dict[str, tuple[array[float], ...]] = {}
    for s in samples:
        c = cols.get(s.room)
        if c is None:
            c = cols[s.room] = tuple(array("d") for _ in range(6))
        for col, value in zip(c, (s.ts, s.temp_c, s.ac_kw, s.units_on, 1.0 if s.occupied else 0.0,
                                  math.nan if s.outdoor_c is None else s.outdoor_c), strict=True):
            col.append(value)
    out = {}
    for room, c in sorted(cols.items()):
        order = np.argsort(np.asarray(c[0]), kind="stable")
        ts, temp, ac_kw, units_on, occupied, outdoor = (np.asarray(col, dtype=np.float64)[order] for col in c)
        hour, day = local_columns(ts, tz)
        dts = np.diff(ts)
        out[room] = RoomSeries(room=room, ts=ts, temp_c=temp, ac_kw=ac_kw, units_on=units_on, occupied=occupied,
                               outdoor_c=outdoor, hour=hour, day=day,
                               step_s=float(np.median(dts[dts > 0])) if (dts > 0).any() else 60.0)
    return out


# -- the model -------------------------------------------------------------------------------------
def features(temp: Array, slow: Array, outdoor: Array, ac_kw: Array, units_on: Array, occupied: Array,
             hour: Array) -> Array:
    """The model's feature matrix, columns in FEATURES order (RoomModel.step_c computes the same)."""
    on = (units_on > 0).astype(np.float64)
    cols = [temp, slow, outdoor, ac_kw, on, occupied, occupied * (1 - on)]
    for k in range(1, HARMONICS + 1):
        w = 2 * np.pi * k * hour / 24
        cols += [np.sin(w), np.cos(w)]
    return np.column_stack(cols)


def _outdoor(series: RoomSeries, model_mean: float) -> Array:
    return series.outdoor_c if series.has_outdoor else np.full(series.n, model_mean)


def fit_room(series: RoomSeries, fit_mask: npt.NDArray[np.bool_], slow_tau_s: float) -> RoomModel:
    """Least-squares fit of the per-step change on the samples where fit_mask (and the step) holds."""
    valid = series.valid_steps()
    k = np.flatnonzero(fit_mask[:-1] & valid)
    if len(k) == 0:
        raise NotEnoughData(f"room {series.room}: no consecutive samples to fit on")
    use_outdoor = series.has_outdoor
    outdoor_mean = float(np.mean(series.outdoor_c)) if use_outdoor else default_model(series.room).outdoor_mean_c
    x = features(series.temp_c, series.slow(slow_tau_s), _outdoor(series, outdoor_mean), series.ac_kw,
                 series.units_on, series.occupied, series.hour)[k]
    if not use_outdoor:
        x[:, FEATURES.index("outdoor")] = 0.0   # no outdoor sensor: the hour harmonics stand in for it
    dt = series.ts[k + 1] - series.ts[k]
    y = (series.temp_c[k + 1] - series.temp_c[k]) * series.step_s / dt
    reg = LinearRegression().fit(x, y)
    coef = dict(zip(FEATURES, (float(c) for c in reg.coef_), strict=True))
    fallback = default_model(series.room, series.step_s)
    if not (series.ac_kw[k] > 0).any():
        # the AC never ran on these days: nothing says how it cools, so keep the default's gain
        coef["ac_kw"], coef["on"] = fallback.k_ac_kw, fallback.k_on
    return RoomModel(
        room=series.room, bias=float(reg.intercept_), k_temp=coef["temp"], k_slow=coef["slow"],
        k_outdoor=coef["outdoor"] if use_outdoor else 0.0, k_ac_kw=coef["ac_kw"], k_on=coef["on"],
        k_occupied=coef["occupied"], k_occupied_open=coef["occupied_open"],
        k_hour=tuple(coef[f] for f in FEATURES[7:]), step_s=series.step_s, slow_tau_s=slow_tau_s,
        outdoor_mean_c=outdoor_mean, n_samples=len(k))


def starts(series: RoomSeries, mask: npt.NDArray[np.bool_], horizon_s: float = HORIZON_S) -> npt.NDArray[np.int64]:
    """Samples in mask from which the next horizon_s are recorded step by step."""
    h = round(horizon_s / series.step_s)
    if series.n <= h:
        return np.zeros(0, dtype=np.int64)
    run = np.concatenate([[0], np.cumsum(series.valid_steps())])
    k = np.arange(series.n - h)
    found: npt.NDArray[np.int64] = k[(run[k + h] - run[k] == h) & mask[: series.n - h]]
    return found


def rollout_errors(model: RoomModel, series: RoomSeries, at: npt.NDArray[np.int64],
                   horizon_s: float = HORIZON_S) -> tuple[Array, Array]:
    """(model error, persistence error) of the horizon_s prediction from every sample in `at`."""
    h = round(horizon_s / series.step_s)
    coef = np.array([model.k_temp, model.k_slow, model.k_outdoor, model.k_ac_kw, model.k_on, model.k_occupied,
                     model.k_occupied_open, *model.k_hour])
    alpha = 1 - math.exp(-series.step_s / model.slow_tau_s)
    outdoor = _outdoor(series, model.outdoor_mean_c)
    t = series.temp_c[at].copy()
    s = series.slow(model.slow_tau_s)[at]
    for j in range(h):
        i = at + j
        x = features(t, s, outdoor[i], series.ac_kw[i], series.units_on[i], series.occupied[i], series.hour[i])
        t = t + x @ coef + model.bias
        s = s + (t - s) * alpha
    truth = series.temp_c[at + h]
    return t - truth, series.temp_c[at] - truth


def rmse(errors: Array) -> float:
    return float(np.sqrt(np.mean(errors**2))) if len(errors) else math.nan


def choose_slow_tau(series: RoomSeries, fit_days: Sequence[int]) -> float:
    """The slow time constant that predicts the last fitting days best from the ones before."""
    if len(fit_days) < 2:
        return SLOW_TAUS_S[1]
    n_val = max(1, round(len(fit_days) * 0.25))
    inner = series.day < fit_days[-n_val]
    check = np.isin(series.day, fit_days[-n_val:])
    at = starts(series, check)
    if len(at) == 0 or not inner.any():
        return SLOW_TAUS_S[1]
    scores = []
    for tau in SLOW_TAUS_S:
        try:
            scores.append((rmse(rollout_errors(fit_room(series, inner, tau), series, at)[0]), tau))
        except NotEnoughData:
            return SLOW_TAUS_S[1]
    return min(scores)[1]


# -- habits ----------------------------------------------------------------------------------------
def habits_of(series: RoomSeries) -> Habits:
    """Usual first switch-on per weekday and the median temperature at a switch-on (module docstring)."""
    on = series.units_on > 0
    first: dict[int, float] = {}          # local day -> minute of its first switch-on
    temps: list[float] = []
    last_on_ts = -math.inf
    for k in range(1, series.n):
        if on[k - 1]:
            last_on_ts = series.ts[k - 1]
        if on[k] and not on[k - 1]:
            first.setdefault(int(series.day[k]), float(series.hour[k] * 60))
            if series.ts[k] - last_on_ts >= MIN_OFF_FOR_HABIT_S:
                temps.append(float(series.temp_c[k - 1]))
    days = np.unique(series.day)
    first_on: list[float | None] = []
    for weekday in range(7):
        seen = [int(d) for d in days if (int(d) + 3) % 7 == weekday]   # 1970-01-01 was a Thursday
        mins = [first[d] for d in seen if d in first]
        usual = len(mins) >= 2 and len(mins) * 2 >= len(seen)
        first_on.append(round(float(np.median(mins)), 1) if usual else None)
    on_temp = round(float(np.median(temps)), 2) if temps else None
    return Habits(room=series.room, first_on_min=tuple(first_on), on_temp_c=on_temp, days=len(days),
                  switch_ons=len(temps))


def covered_days(rooms: Iterable[RoomSeries]) -> list[int]:
    """Local days on which some room has at least MIN_DAY_COVERAGE_S of samples."""
    cover: dict[int, float] = defaultdict(float)
    for s in rooms:
        days, counts = np.unique(s.day, return_counts=True)
        for d, c in zip(days, counts, strict=True):
            cover[int(d)] = max(cover[int(d)], float(c) * s.step_s)
    return sorted(d for d, c in cover.items() if c >= MIN_DAY_COVERAGE_S)


class _Bar(tqdm):  # type: ignore[misc]
    """tqdm without its monitor thread (it lives for the whole process; these bars tick often enough)."""

    monitor_interval = 0


def _bar(items: Iterable[T], progress: bool, desc: str, unit: str) -> Iterable[T]:
    """A progress bar on stderr, or the items as they are."""
    if not progress:
        return items
    bar: Iterable[T] = _Bar(items, desc=desc, unit=unit, file=sys.stderr)
    return bar


# -- the run ---------------------------------------------------------------------------------------
def train(history_path: Path | str, out_path: Path | str, *, days: float = 14, progress: bool = True,
          tz: str = "Asia/Taipei", now: float | None = None) -> TrainReport:
    """Learn every room in the last `days` of history, write `out_path`; NotEnoughData when there is too little."""
    began = time.perf_counter()
    zone = ZoneInfo(tz)
    if not Path(history_path).is_file():
        raise NotEnoughData(f"no history at {history_path} (the daemon records it in its storage folder)")
    history = RoomHistory(history_path, readonly=True)
    if not history.available:
        raise OSError(f"{history_path} cannot be opened as a history database (see the log)")
    try:
        span = history.span()
        if span is None:
            raise NotEnoughData(f"{history_path} holds no samples yet")
        samples = history.read(since=span[1] - days * 86400)
        rooms = series_from(_bar(samples, progress, "reading history", " samples"), zone)
        if history.errors:
            raise OSError(f"{history_path} could not be read to the end (see the log)")
    finally:
        history.close()
    all_days = covered_days(rooms.values())
    if len(all_days) < MIN_DAYS:
        raise NotEnoughData(f"need at least {MIN_DAYS} days with {MIN_DAY_COVERAGE_S / 3600:g} h of samples "
                            f"(the daemon records one per room per minute; the last {days:g} days are used), "
                            f"found {len(all_days)}")
    n_hold = max(1, round(len(all_days) * HOLDOUT_SHARE))
    fit_days, hold_days = all_days[:-n_hold], all_days[-n_hold:]

    models: dict[str, RoomModel] = {}
    reports: list[RoomReport] = []
    skipped: dict[str, str] = {}
    errors, persistence = [], []
    trained_at = time.time() if now is None else now
    for room, series in _bar(rooms.items(), progress, "fitting rooms", " rooms"):
        fit_mask = series.day < hold_days[0]
        fit_steps = int((fit_mask[:-1] & series.valid_steps()).sum())
        at = starts(series, np.isin(series.day, hold_days))
        if fit_steps < MIN_FIT_STEPS or len(at) == 0:
            skipped[room] = (f"{fit_steps} consecutive steps on the fitting days (needs {MIN_FIT_STEPS}) and "
                             f"{len(at)} 15-minute windows on the held-out days (needs 1)")
            continue
        tau = choose_slow_tau(series, fit_days)
        err, pers = rollout_errors(fit_room(series, fit_mask, tau), series, at)
        errors.append(err)
        persistence.append(pers)
        share = float((series.units_on > 0).mean())
        warning = None
        if share == 0:
            warning = "the AC never ran: its cooling comes from the default model"
        elif float((series.units_on == 0).mean()) < 0.05:
            warning = "the AC was almost never off: the room's warming is poorly known"
        final = fit_room(series, np.ones(series.n, dtype=bool), tau)
        models[room] = replace(final, trained_at=trained_at, rmse_15min_c=round(rmse(err), 4))
        reports.append(RoomReport(room, series.n, rmse(err), rmse(pers), len(at), tau / 3600, series.has_outdoor,
                                  share, warning))
    if not models:
        raise NotEnoughData("no room has enough history: " + "; ".join(f"{r}: {why}" for r, why in skipped.items()))
    previous = load_models(out_path)
    for room in skipped:
        if room in previous.rooms:
            models[room] = previous.rooms[room]     # a room short of data this time keeps its last model
    habits = {room: habits_of(series) for room, series in rooms.items()}
    RoomModels(rooms=models, habits=habits, trained_at=trained_at, tz=tz).save(out_path)
    all_err, all_pers = np.concatenate(errors), np.concatenate(persistence)
    return TrainReport(rooms=tuple(reports), skipped=skipped, rmse_15min_c=rmse(all_err),
                       persistence_rmse_15min_c=rmse(all_pers), days=len(all_days), held_out_days=n_hold,
                       samples=sum(s.n for s in rooms.values()), train_s=time.perf_counter() - began,
                       out=str(out_path), habits=habits)


def _text(report: TrainReport) -> str:
    lines = [f"{len(report.rooms)} rooms from {report.days} days ({report.samples} samples), "
             f"{report.held_out_days} held out: 15-minute RMSE {report.rmse_15min_c:.3f} degC "
             f"(persistence {report.persistence_rmse_15min_c:.3f}, target {TARGET_RMSE_C}), {report.train_s:.1f} s"]
    for r in report.rooms:
        lines.append(f"  {r.room}: {r.rmse_15min_c:.3f} degC over {r.evaluated} predictions"
                     + (f" ({r.warning})" if r.warning else ""))
    lines += [f"  {room}: skipped, {why}" for room, why in report.skipped.items()]
    lines.append(f"written to {report.out}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`campus-edge ems train`: 0 written, 2 bad usage or not enough history, 1 a failure."""
    parser = argparse.ArgumentParser(prog="campus-edge ems train",
                                     description="Learn each room's temperature model and habits from the history.")
    parser.add_argument("--history", required=True, type=Path, help="the daemon's history.db")
    parser.add_argument("--out", required=True, type=Path, help="where to write the models (models/rooms.json)")
    parser.add_argument("--days", type=float, default=14.0, help="days of history to learn from (default 14)")
    parser.add_argument("--tz", default="Asia/Taipei", help="the site's time zone (default Asia/Taipei)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    if not args.days > 0:
        print(f"ems train: --days must be > 0, got {args.days}", file=sys.stderr)
        return 2
    try:
        ZoneInfo(args.tz)
    except (ZoneInfoNotFoundError, ValueError):
        print(f"ems train: unknown time zone --tz {args.tz!r}", file=sys.stderr)
        return 2
    try:
        report = train(args.history, args.out, days=args.days, progress=not args.no_progress, tz=args.tz)
    except NotEnoughData as exc:
        print(f"ems train: not enough data: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"ems train: failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_json(), indent=2) if args.json else _text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
