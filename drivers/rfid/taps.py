"""A tap: one presentation of a card at a reader, however many frames the reader sends for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Purpose = Literal["gate", "door", "health"]
REPEAT_WINDOW_S = 2.0  # an RDM6300 repeats its frame every ~65 ms while a tag is held at it


@dataclass(frozen=True, slots=True)
class Tap:
    """A card presented at a reader (the access-control part decides on door taps)."""

    reader: str
    card: str                 # decimal card number (CONTRACT.md)
    purpose: Purpose
    door: str | None          # the door a `door` reader opens
    at: float                 # time.monotonic() when the frame's last byte was received (latency)
    ts: float                 # unix seconds of the driver's clock


class RepeatFilter:
    """Tells a new tap from a card still held at the reader.

    A card read again less than `window_s` after its previous read is the same tap, so a card held
    for a minute is one tap; taken away for `window_s` and shown again, it is a new one. Cards are
    tracked apart: two cards waved in turn are two taps each time.
    """

    def __init__(self, window_s: float = REPEAT_WINDOW_S) -> None:
        if window_s < 0:
            raise ValueError("window_s must be >= 0")
        self.window_s = window_s
        self._seen: dict[str, float] = {}

    def is_new(self, card: str, at: float) -> bool:
        """Note that `card` was read at monotonic time `at`; True when this starts a new tap."""
        if len(self._seen) > 1:
            self._seen = {c: t for c, t in self._seen.items() if at - t < self.window_s}
        prev = self._seen.get(card)
        self._seen[card] = at
        return prev is None or at - prev >= self.window_s
