"""Retry waits of the cloud link and the telemetry writer: `edge.core.backoff`, jittered downward only."""

from __future__ import annotations

import random

from edge.core.backoff import Backoff


def downward_backoff(min_s: float, max_s: float, jitter: float, rng: random.Random | None = None) -> Backoff:
    """Waits of min_s, x2, x4 ... capped at max_s, each drawn uniformly from [(1 - jitter) x step, step].

    Never above the step, so max_s is a true cap (a broker down for an hour sees one attempt per
    max_s at most). The core helper jitters ± around its step: centred on (1 - jitter/2) x step with
    ± jitter/(2 - jitter), its range is exactly [(1 - jitter) x step, step].
    """
    centre = 1.0 - jitter / 2.0
    return Backoff(base_s=min_s * centre, max_s=max_s * centre, jitter=jitter / (2.0 - jitter),
                   rng=rng or random.Random())
