"""Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<timestamp>:<body>">` keyed with the app's
signing secret, and `X-Slack-Request-Timestamp`.

Slack sends JSON (the Events API) and forms (slash commands; interactivity, whose `payload` field
is JSON). Its URL verification handshake is answered here, once the request is proven authentic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.config.fields import Field, as_secret
from router.errors import AuthError
from router.providers.base import Provider
from router.providers.signing import TOLERANCE, Timestamped, any_matches, empty_secrets, from_hex, hmac_sha256

VERSION = "v0"


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class SlackProvider(Timestamped, Provider):
    type_name = "slack"
    bundled_schema = "slack.json"
    options = {"signing_secret": Field(as_secret, required=True), "tolerance": TOLERANCE}
    form_bodies = True
    form_json_fields = frozenset({"payload"})
    signature_headers = frozenset({"x-slack-signature"})

    def __init__(self, name: str, options: dict[str, Any]):
        super().__init__(name, options)
        self.secret = options["signing_secret"]
        self.tolerance = options["tolerance"]

    @classmethod
    def check(cls, options: dict[str, Any]) -> list[tuple[str | None, str]]:
        return empty_secrets(options, "signing_secret")

    def expected(self, timestamp: str, body: bytes) -> bytes:
        base = f"{VERSION}:{timestamp}:".encode("ascii") + body
        return hmac_sha256(self.secret.reveal().encode("utf-8"), base)

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        value = (headers.get("x-slack-signature") or "").strip()
        if not value:
            raise AuthError("missing X-Slack-Signature header")
        if not value.startswith(VERSION + "="):
            raise AuthError("X-Slack-Signature is not a v0= signature")
        given = from_hex(value[len(VERSION) + 1:])
        if given is None:
            raise AuthError("X-Slack-Signature is not hexadecimal")
        timestamp = self.check_timestamp(headers.get("x-slack-request-timestamp"), "X-Slack-Request-Timestamp")
        if not any_matches(self.expected(timestamp, body), [given]):
            raise AuthError("X-Slack-Signature does not match the body")

    def event_type(self, headers: Mapping[str, str], payload: Any) -> str | None:
        if not isinstance(payload, dict):
            return None
        event = payload.get("event")
        interactive = payload.get("payload")
        return (
            (_str(event.get("type")) if isinstance(event, dict) else None)  # Events API
            or _str(payload.get("command"))  # slash command
            or (_str(interactive.get("type")) if isinstance(interactive, dict) else None)  # interactivity
            or _str(payload.get("type"))  # url_verification, app_rate_limited
        )

    def delivery_id(self, headers: Mapping[str, str], payload: Any) -> str | None:
        return _str(payload.get("event_id")) if isinstance(payload, dict) else None

    def handshake(self, payload: Any) -> dict[str, Any] | None:
        if isinstance(payload, dict) and payload.get("type") == "url_verification":
            challenge = payload.get("challenge")
            if isinstance(challenge, str):
                return {"challenge": challenge}
        return None

    def sign(self, body: bytes, private_key: bytes | None = None, *, timestamp: int | None = None) -> dict[str, str]:
        t = str(self.timestamp_for_signing(timestamp))
        headers = {"X-Slack-Request-Timestamp": t, "X-Slack-Signature": f"{VERSION}={self.expected(t, body).hex()}"}
        if not body.lstrip().startswith(b"{"):
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        return headers
