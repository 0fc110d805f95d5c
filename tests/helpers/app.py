"""The app side of the cloud tests: an MQTT client that watches a gateway's topics, and command claims."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import aiomqtt

from cloud_sync.topics import Topics

AUDIENCE = "014601/gw-t"  # the gateway of sites.small_school


class Msg(NamedTuple):
    topic: str
    body: Any  # the parsed JSON, or the raw bytes if it is none
    retained: bool


class Watcher:
    """An app-side client: keeps every message it is subscribed to, waits for the ones a test expects."""

    def __init__(self, client: aiomqtt.Client | None, topics: Topics) -> None:
        self.client, self.topics = client, topics
        self.messages: list[Msg] = []
        self._new = asyncio.Event()

    async def run(self) -> None:
        assert self.client is not None
        async for m in self.client.messages:
            raw = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw
            self.messages.append(Msg(str(m.topic), body, m.retain))
            self._new.set()

    async def wait_for(self, pred: Callable[[str, Any, bool], object], within_s: float = 10.0,
                       since: int = 0) -> Msg:
        """The first message from `since` on for which `pred(topic, body, retained)` holds."""
        async with asyncio.timeout(within_s):
            while True:
                for msg in self.messages[since:]:
                    if pred(*msg):
                        return msg
                self._new.clear()
                await self._new.wait()

    async def result(self, jti: str | None, within_s: float = 10.0) -> dict[str, Any]:
        _, body, _ = await self.wait_for(lambda t, b, _r: t == self.topics.cmd_result and isinstance(b, dict)
                                         and b.get("id") == jti, within_s)
        return dict(body)

    async def send(self, payload: str | bytes) -> None:
        assert self.client is not None
        await self.client.publish(self.topics.cmd, payload, qos=1)


@asynccontextmanager
async def watching(port: int, topics: Topics, *, only: str | None = None, watcher: Watcher | None = None,
                   **client: Any) -> AsyncIterator[Watcher]:
    """A Watcher on the broker at 127.0.0.1:`port`, subscribed to `only` (else the gateway's every topic).

    `watcher` carries one's messages on across connections; `client` goes to aiomqtt.Client (credentials).
    """
    client.setdefault("identifier", f"app-{uuid.uuid4().hex[:8]}")
    async with aiomqtt.Client("127.0.0.1", port, **client) as app:
        await app.subscribe(only or topics.all, qos=1)
        w = watcher or Watcher(app, topics)
        w.client = app
        reader = asyncio.create_task(w.run(), name=f"test-watcher-{client['identifier']}")
        try:
            yield w
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def claims(**over: Any) -> dict[str, Any]:
    """A facility user's ac.set of ac-301a for the small school's gateway, valid for a minute; `over` changes it."""
    now = int(time.time())
    base = {"jti": uuid.uuid4().hex, "iat": now, "exp": now + 60, "aud": AUDIENCE, "sub": "F001",
            "role": "facility", "action": "ac.set", "target": "ac-301a", "params": {"power_on": True}}
    base.update(over)
    return base
