"""Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the body>`, keyed with the app's client
secret (or the secret shown beside webhooks created in the admin).

The event type is the `X-Shopify-Topic` header (`orders/create`); `X-Shopify-Webhook-Id`, the
same on every retry of one delivery, deduplicates by default.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from router.config.fields import Field, as_secret
from router.errors import AuthError
from router.providers.base import Provider
from router.providers.signing import b64, empty_secrets, from_base64, hmac_sha256


class ShopifyProvider(Provider):
    type_name = "shopify"
    bundled_schema = "shopify.json"
    options = {"secret": Field(as_secret, required=True)}
    signature_headers = frozenset({"x-shopify-hmac-sha256"})

    def __init__(self, name: str, options: dict[str, Any]):
        super().__init__(name, options)
        self.secret = options["secret"]

    @classmethod
    def check(cls, options: dict[str, Any]) -> list[tuple[str | None, str]]:
        return empty_secrets(options, "secret")

    def expected(self, body: bytes) -> bytes:
        return hmac_sha256(self.secret.reveal().encode("utf-8"), body)

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        value = headers.get("x-shopify-hmac-sha256")
        if not value or not value.strip():
            raise AuthError("missing X-Shopify-Hmac-Sha256 header")
        given = from_base64(value)
        if given is None:
            raise AuthError("X-Shopify-Hmac-Sha256 is not base64")
        if not hmac.compare_digest(given, self.expected(body)):
            raise AuthError("X-Shopify-Hmac-Sha256 does not match the body")

    def event_type(self, headers: Mapping[str, str], payload: Any) -> str | None:
        return headers.get("x-shopify-topic") or None

    def delivery_id(self, headers: Mapping[str, str], payload: Any) -> str | None:
        return headers.get("x-shopify-webhook-id") or None

    def sign(self, body: bytes, private_key: bytes | None = None, *, timestamp: int | None = None) -> dict[str, str]:
        return {"X-Shopify-Hmac-Sha256": b64(self.expected(body))}
