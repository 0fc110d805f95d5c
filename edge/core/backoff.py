"""Exponential backoff with jitter: one helper for every retry loop (buses, devices, the cloud link, telemetry)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def backoff_delay(failures: int, base_s: float, max_s: float, jitter: float = 0.0,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait after the `failures`-th failure in a row: base·2^(n-1), capped, then ± jitter."""
    if failures <= 0:
        return 0.0
    delay = min(max_s, base_s * 2.0 ** min(failures - 1, 60))
    if jitter:
        delay *= 1 + (rng or random).uniform(-jitter, jitter)
    return delay


@dataclass
class Backoff:
    """The retry state of one failing thing: how many failures in a row and when to try again."""

    base_s: float = 1.0
    max_s: float = 300.0
    jitter: float = 0.2          # ± share, so things that failed together do not retry together
    rng: random.Random = field(default_factory=random.Random, repr=False)
    failures: int = 0
    retry_at: float = 0.0

    def fail(self, now: float) -> float:
        """Count a failure at `now`; returns the delay until `retry_at`."""
        self.failures += 1
        delay = backoff_delay(self.failures, self.base_s, self.max_s, self.jitter, self.rng)
        self.retry_at = now + delay
        return delay

    def reset(self) -> None:
        self.failures = 0
        self.retry_at = 0.0
