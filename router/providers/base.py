"""What every provider type provides: an authenticity check over the raw bytes, and a schema.

Presets for well-known senders also say how their bodies parse (`form_bodies`), which header or
field names the event type (`event_type`, `$event` in rules) and the delivery id that deduplicates
by default (`delivery_id`), and may answer a handshake themselves (`handshake`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from router.config.fields import Field


class Provider:
    type_name: ClassVar[str]
    bundled_schema: ClassVar[str | None] = None  # a file in schemas/
    schema_required: ClassVar[bool] = False
    options: ClassVar[dict[str, Field]] = {}  # type-specific keys of the provider's entry
    # application/x-www-form-urlencoded bodies are accepted (and become an object of names to values)
    form_bodies: ClassVar[bool] = False
    # form fields whose value is itself JSON (Slack's interactive `payload=`)
    form_json_fields: ClassVar[frozenset[str]] = frozenset()
    # lower-cased headers that carry a signature: credentials, so not stored with the event
    signature_headers: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, options: dict[str, Any]):
        self.name = name
        self.config = options  # this provider's converted options (`options` declares them)

    @classmethod
    def check(cls, options: dict[str, Any]) -> list[tuple[str | None, str]]:
        """Cross-field problems, as (key or None, message)."""
        return []

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Raise AuthError unless the raw body is authentic. `headers` keys are lower-case."""

    def verify_request(self, body: bytes, headers: Mapping[str, str], query_string: str) -> None:
        """Like `verify`, for providers that sign more than the body (Twilio signs the URL and its
        query string exactly as received)."""
        self.verify(body, headers)

    def event_type(self, headers: Mapping[str, str], payload: Any) -> str | None:
        """The event's type as this provider names it (`$event` in rules, `event_type` in templates)."""
        return None

    def delivery_id(self, headers: Mapping[str, str], payload: Any) -> str | None:
        """The provider's own id of this delivery, which deduplicates when no `dedupe` is configured."""
        return None

    def handshake(self, payload: Any) -> dict[str, Any] | None:
        """The answer to an (authentic) handshake request, which is then neither routed nor stored."""
        return None

    def sign(self, body: bytes, private_key: bytes | None = None, *, timestamp: int | None = None) -> dict[str, str]:
        """The headers this provider would send with `body` (for `router sign`); `timestamp` (Unix
        seconds, default now) for the types that sign one."""
        return {}

    def sign_query(self, body: bytes) -> str:
        """A query string the provider would add to its URL for `body` (Twilio's `bodySHA256`)."""
        return ""
