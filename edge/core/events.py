"""The in-process event bus: readings and decisions fan out to whoever subscribed.

Publishing never blocks the publisher (the Modbus loop must not wait for a slow consumer): each
subscriber has a bounded queue; when it is full the oldest message is dropped and counted.
Consumers that must not lose anything (the cloud outbox) drain fast into durable storage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """One thing that happened: `topic` is "state", "event" ..., `key` the device or event kind."""

    topic: str
    key: str
    payload: dict[str, Any]
    ts: float


@dataclass(slots=True)
class Subscription:
    topics: frozenset[str]
    queue: asyncio.Queue[Message]
    dropped: int = 0
    name: str = ""

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            yield await self.queue.get()


@dataclass
class EventBus:
    """Fan-out of `Message`s to subscribers by topic."""

    subscribers: list[Subscription] = field(default_factory=list)
    published: int = 0

    def subscribe(self, *topics: str, maxsize: int = 10_000, name: str = "") -> Subscription:
        sub = Subscription(frozenset(topics), asyncio.Queue(maxsize), name=name)
        self.subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)

    def publish(self, msg: Message) -> None:
        self.published += 1
        for sub in self.subscribers:
            if sub.topics and msg.topic not in sub.topics:
                continue
            if sub.queue.full():
                sub.queue.get_nowait()
                sub.dropped += 1
                if sub.dropped in (1, 100, 10_000):
                    log.warning("subscriber %s is slow: %d messages dropped", sub.name or "?", sub.dropped)
            sub.queue.put_nowait(msg)
