"""The MQTT topic contract (CONTRACT.md section 3): `P = {topic_prefix}/{school_id}/{gateway_id}`."""

from __future__ import annotations

from dataclasses import dataclass

from edge.core.config import Config

DEFAULT_PREFIX = "campus/v1"


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic of one gateway, built from `P`."""

    base: str

    @classmethod
    def of(cls, prefix: str, school_id: str, gateway_id: str) -> Topics:
        return cls(f"{prefix.strip('/')}/{school_id}/{gateway_id}")

    @classmethod
    def for_config(cls, cfg: Config) -> Topics:
        prefix = cfg.cloud.topic_prefix if cfg.cloud is not None else DEFAULT_PREFIX
        return cls.of(prefix, cfg.site.school_id, cfg.site.gateway_id)

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    def state(self, device_id: str) -> str:
        return f"{self.base}/state/{device_id}"

    def event(self, kind: str) -> str:
        return f"{self.base}/event/{kind}"

    @property
    def cmd(self) -> str:
        return f"{self.base}/cmd"

    @property
    def cmd_result(self) -> str:
        return f"{self.base}/cmd/result"

    @property
    def all(self) -> str:
        return f"{self.base}/#"

    def kind_of(self, topic: str) -> str | None:
        """`status`, `state`, `event`, `cmd` or `result` for one of our topics; None for others."""
        if not topic.startswith(self.base + "/"):
            return None
        rest = topic[len(self.base) + 1:]
        if rest == "cmd/result":
            return "result"
        head = rest.split("/", 1)[0]
        return head if head in ("status", "state", "event", "cmd") else None


def audience(school_id: str, gateway_id: str) -> str:
    """The `aud` claim a command for this gateway carries."""
    return f"{school_id}/{gateway_id}"
