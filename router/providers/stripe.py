"""Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`.

Each `v1` is the hex HMAC-SHA256 of `"<t>.<body>"`, keyed with the whole `whsec_...` string as
UTF-8. While a secret is being rolled Stripe signs with both and sends two `v1`s: any may match.
Other schemes (`v0`, test-mode only) are ignored. The event's `type` and `id` are in the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.config.fields import Field, as_secret
from router.errors import AuthError
from router.providers.base import Provider
from router.providers.signing import TOLERANCE, Timestamped, any_matches, empty_secrets, from_hex, hmac_sha256

MAX_SIGNATURES = 16  # a header with more is not Stripe's; refuse before hashing anything


def _field(payload: Any, key: str) -> str | None:
    value = payload.get(key) if isinstance(payload, dict) else None
    return value if isinstance(value, str) and value else None


class StripeProvider(Timestamped, Provider):
    type_name = "stripe"
    bundled_schema = "stripe.json"
    options = {"secret": Field(as_secret, required=True), "tolerance": TOLERANCE}
    signature_headers = frozenset({"stripe-signature"})

    def __init__(self, name: str, options: dict[str, Any]):
        super().__init__(name, options)
        self.secret = options["secret"]
        self.tolerance = options["tolerance"]

    @classmethod
    def check(cls, options: dict[str, Any]) -> list[tuple[str | None, str]]:
        return empty_secrets(options, "secret")

    def expected(self, timestamp: str, body: bytes) -> bytes:
        return hmac_sha256(self.secret.reveal().encode("utf-8"), timestamp.encode("ascii") + b"." + body)

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        value = headers.get("stripe-signature")
        if not value or not value.strip():
            raise AuthError("missing Stripe-Signature header")
        timestamps: list[str] = []
        signatures: list[bytes] = []
        for item in value.split(","):
            key, _, val = item.strip().partition("=")
            if key == "t":
                timestamps.append(val.strip())
            elif key == "v1":
                sig = from_hex(val)
                if sig is not None:
                    signatures.append(sig)
        if len(timestamps) != 1:
            raise AuthError("Stripe-Signature must carry exactly one t=")
        if not signatures:
            raise AuthError("Stripe-Signature has no v1 signature")
        if len(signatures) > MAX_SIGNATURES:
            raise AuthError("Stripe-Signature has too many signatures")
        timestamp = self.check_timestamp(timestamps[0], "Stripe-Signature timestamp")
        if not any_matches(self.expected(timestamp, body), signatures):
            raise AuthError("no Stripe-Signature v1 matches the body")

    def event_type(self, headers: Mapping[str, str], payload: Any) -> str | None:
        return _field(payload, "type")

    def delivery_id(self, headers: Mapping[str, str], payload: Any) -> str | None:
        return _field(payload, "id")

    def sign(self, body: bytes, private_key: bytes | None = None, *, timestamp: int | None = None) -> dict[str, str]:
        t = str(self.timestamp_for_signing(timestamp))
        return {"Stripe-Signature": f"t={t},v1={self.expected(t, body).hex()}"}
