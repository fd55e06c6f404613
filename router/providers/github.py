"""GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` with the webhook's secret.

The event type is the `X-GitHub-Event` header; `X-GitHub-Delivery` (a GUID per delivery, kept when
GitHub redelivers) deduplicates by default.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from router.config.fields import Field, as_secret
from router.errors import AuthError
from router.providers.base import Provider
from router.providers.signing import empty_secrets, from_hex, hmac_sha256

PREFIX = "sha256="


class GitHubProvider(Provider):
    type_name = "github"
    bundled_schema = "github.json"
    options = {"secret": Field(as_secret, required=True)}
    signature_headers = frozenset({"x-hub-signature-256", "x-hub-signature"})

    def __init__(self, name: str, options: dict[str, Any]):
        super().__init__(name, options)
        self.secret = options["secret"]

    @classmethod
    def check(cls, options: dict[str, Any]) -> list[tuple[str | None, str]]:
        return empty_secrets(options, "secret")

    def expected(self, body: bytes) -> bytes:
        return hmac_sha256(self.secret.reveal().encode("utf-8"), body)

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        value = (headers.get("x-hub-signature-256") or "").strip()
        if not value:
            raise AuthError("missing X-Hub-Signature-256 header")
        if value[: len(PREFIX)].lower() != PREFIX:
            raise AuthError("X-Hub-Signature-256 does not start with sha256=")
        given = from_hex(value[len(PREFIX):])
        if given is None:
            raise AuthError("X-Hub-Signature-256 is not hexadecimal")
        if not hmac.compare_digest(given, self.expected(body)):
            raise AuthError("X-Hub-Signature-256 does not match the body")

    def event_type(self, headers: Mapping[str, str], payload: Any) -> str | None:
        return headers.get("x-github-event") or None

    def delivery_id(self, headers: Mapping[str, str], payload: Any) -> str | None:
        return headers.get("x-github-delivery") or None

    def sign(self, body: bytes, private_key: bytes | None = None, *, timestamp: int | None = None) -> dict[str, str]:
        return {"X-Hub-Signature-256": PREFIX + self.expected(body).hex()}
