"""The change feed: a capped Redis Stream of every transition, read with long polls."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import redis

from ..models import rfc3339
from .keys import Keys
from .scripts import wrap_errors

STREAM_ID = re.compile(r"^\d+(-\d+)?$")
# Event fields that hold numbers or times rather than text.
_INT_FIELDS = ("version", "leases")
_TIME_FIELDS = ("at", "expires_at", "blind_since")


def _id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def event_json(stream_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """Return one stream entry as the API shows it."""
    out: dict[str, Any] = {"id": stream_id}
    for name, value in fields.items():
        if name in _INT_FIELDS:
            out[name] = int(value)
        elif name in _TIME_FIELDS:
            out[name] = rfc3339(int(value))
        elif name == "changed":
            out[name] = [item for item in value.split(",") if item]
        elif name == "reregistered":
            out[name] = value == "1"
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class EventBatch:
    """Events after a position, the position to ask from next, and whether some were trimmed."""

    events: list[dict[str, Any]]
    next: str
    truncated: bool


class EventFeed:
    """Reads of the event stream; writes happen inside the store's scripts."""

    def __init__(self, client: redis.Redis, blocking_client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.blocking = blocking_client  # its socket timeout outlasts the longest wait
        self.key = keys.events

    @wrap_errors
    def position(self) -> str:
        """Return the ID of the newest event, or "0-0" when there is none."""
        newest = self.redis.xrevrange(self.key, count=1)
        return newest[0][0] if newest else "0-0"

    @wrap_errors
    def read(self, after: str, wait_s: float, count: int = 100) -> EventBatch:
        """Return up to `count` events after `after`, waiting up to `wait_s` for the first."""
        if wait_s > 0:
            reply = self.blocking.xread({self.key: after}, count=count, block=int(wait_s * 1000))
            entries = reply[0][1] if reply else []
        else:
            entries = self.redis.xrange(self.key, min=f"({after}" if after != "0" else "-", count=count)
        events = [event_json(entry_id, fields) for entry_id, fields in entries]
        next_id = entries[-1][0] if entries else after
        return EventBatch(events=events, next=next_id, truncated=self._trimmed_after(after))

    def _trimmed_after(self, after: str) -> bool:
        try:
            info = self.redis.xinfo_stream(self.key)
        except redis.ResponseError:  # no stream yet
            return False
        # The cap trims the oldest entries: some after `after` are gone when entries were
        # trimmed at all and the oldest kept one is newer than `after`.
        first = info.get("first-entry")
        trimmed = info.get("entries-added", info["length"]) > info["length"]
        return trimmed and first is not None and _id_tuple(first[0]) > _id_tuple(after)
