"""What every action provides: options, a preview of what it would do, and one delivery attempt."""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from router.config import Field, Settings

DEFAULT_TIMEOUT = 10.0
LEASE_MARGIN = 15.0  # a claim outlives the action's timeout by this much (SPEC section 6)


@dataclass
class Delivery:
    """One delivery of one event by one action for one rule."""

    event_id: str
    provider: str
    rule: str
    action: str
    attempt: int
    received_at: str
    headers: dict[str, str]
    query: dict[str, str]
    body: bytes
    content_type: str | None
    _payload: Any = None

    @property
    def payload(self) -> Any:
        if self._payload is None:
            self._payload = json.loads(self.body.decode("utf-8"))
        return self._payload

    def context(self) -> dict[str, Any]:
        return {
            "payload": self.payload,
            "headers": dict(self.headers),
            "query": dict(self.query),
            "provider": self.provider,
            "event_id": self.event_id,
            "received_at": self.received_at,
            "rule": self.rule,
        }


class Action:
    type_name: ClassVar[str]
    options: ClassVar[dict[str, Field]] = {}
    default_rate: ClassVar[float | None] = None

    def __init__(self, name: str, options: dict[str, Any], settings: Settings):
        self.name = name
        self.settings = settings
        self.timeout = float(options.get("timeout") or DEFAULT_TIMEOUT)

    @classmethod
    def check(cls, options: dict[str, Any]) -> list[tuple[str | None, str]]:
        return []

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        """What `deliver` would do, rendered, for `router test`. Raises DeliveryError on template errors."""
        raise NotImplementedError

    def deliver(self, delivery: Delivery) -> int | None:
        """One attempt. Returns the downstream status (if any); raises DeliveryError on failure."""
        raise NotImplementedError


# --------------------------------------------------------------------------- HTTP outcomes shared by forward and slack

RETRYABLE_STATUS = {408, 425, 429}


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
