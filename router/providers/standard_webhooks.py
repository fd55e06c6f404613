"""Standard Webhooks (and Svix, which sends the same scheme under `svix-*` names).

`webhook-id`, `webhook-timestamp` and `webhook-signature`: a space-separated list of
`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, keyed with the base64-decoded part of the
secret after `whsec_`. Any listed signature may match any configured secret, so a key is rotated
by listing the new secret beside the old one until the sender has switched. Versions other than
`v1` (such as the asymmetric `v1a`) are ignored.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from typing import Any

from router.config.fields import Ctx, Field, as_secret, kind
from router.config.source import PathT
from router.errors import AuthError
from router.providers.base import Provider
from router.providers.signing import TOLERANCE, Timestamped, any_matches, b64, from_base64, hmac_sha256
from router.secret import Secret

PREFIX = "whsec_"
MAX_SIGNATURES = 16  # more than a sender rotating keys would ever list; refuse before hashing


def decode_secret(secret: str) -> bytes:
    """The key: the base64 after `whsec_` (unpadded accepted, as the reference library does)."""
    text = secret[len(PREFIX):] if secret.startswith(PREFIX) else secret
    text = text.strip()
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _as_key(ctx: Ctx, value: Any, path: PathT) -> Secret | None:
    secret = as_secret(ctx, value, path)
    if secret is None:
        return None
    try:
        key = decode_secret(secret.reveal())
    except (ValueError, binascii.Error):
        ctx.error(path, "secret must be 'whsec_' followed by base64 (the Standard Webhooks form)")
        return None
    if not key:
        ctx.error(path, "secret is empty; anyone could sign with an empty key")
        return None
    return secret


def _as_keys(ctx: Ctx, value: Any, path: PathT) -> list[Secret] | None:
    """One secret, or a list of them (the old and the new, while rotating)."""
    if isinstance(value, list):
        if not value:
            ctx.error(path, "give at least one secret")
            return None
        keys = [_as_key(ctx, v, path + (i,)) for i, v in enumerate(value)]
        return None if any(k is None for k in keys) else [k for k in keys if k is not None]
    if isinstance(value, dict):
        ctx.error(path, f"expected a secret or a list of secrets, not {kind(value)}")
        return None
    key = _as_key(ctx, value, path)
    return None if key is None else [key]


class StandardWebhooksProvider(Timestamped, Provider):
    type_name = "standard-webhooks"
    bundled_schema = "standard-webhooks.json"
    options = {"secret": Field(_as_keys, required=True), "tolerance": TOLERANCE}
    signature_headers = frozenset({"webhook-signature", "svix-signature"})

    def __init__(self, name: str, options: dict[str, Any]):
        super().__init__(name, options)
        self.keys = [decode_secret(s.reveal()) for s in options["secret"]]
        self.tolerance = options["tolerance"]

    @staticmethod
    def _headers(headers: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
        # the unbranded names win; a sender uses one set or the other, never a mix
        prefix = "webhook-" if any(h in headers for h in ("webhook-id", "webhook-timestamp", "webhook-signature")) \
            else "svix-"
        return headers.get(prefix + "id"), headers.get(prefix + "timestamp"), headers.get(prefix + "signature")

    @staticmethod
    def signed_content(msg_id: str, timestamp: str, body: bytes) -> bytes:
        # header values arrive as latin-1 text (PEP 3333): this gives back the bytes that were sent
        return f"{msg_id}.{timestamp}.".encode("latin-1", "replace") + body

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        msg_id, timestamp, signature = self._headers(headers)
        if not msg_id or not msg_id.strip():
            raise AuthError("missing webhook-id header")
        if not signature or not signature.strip():
            raise AuthError("missing webhook-signature header")
        timestamp = self.check_timestamp(timestamp, "webhook-timestamp")
        given: list[bytes] = []
        items = signature.split()
        if len(items) > MAX_SIGNATURES:
            raise AuthError("webhook-signature lists too many signatures")
        for item in items:
            version, sep, value = item.partition(",")
            if sep and version == "v1":
                decoded = from_base64(value)
                if decoded is not None:
                    given.append(decoded)
        if not given:
            raise AuthError("webhook-signature has no v1 signature")
        content = self.signed_content(msg_id, timestamp, body)
        if not any(any_matches(hmac_sha256(key, content), given) for key in self.keys):
            raise AuthError("no webhook-signature matches the body")

    def event_type(self, headers: Mapping[str, str], payload: Any) -> str | None:
        value = payload.get("type") if isinstance(payload, dict) else None
        return value if isinstance(value, str) and value else None

    def delivery_id(self, headers: Mapping[str, str], payload: Any) -> str | None:
        msg_id = self._headers(headers)[0]
        return msg_id.strip() if msg_id and msg_id.strip() else None

    def sign(self, body: bytes, private_key: bytes | None = None, *, timestamp: int | None = None) -> dict[str, str]:
        t = str(self.timestamp_for_signing(timestamp))
        msg_id = "msg_" + secrets.token_hex(12)
        signature = " ".join(f"v1,{b64(hmac_sha256(key, self.signed_content(msg_id, t, body)))}" for key in self.keys)
        return {"webhook-id": msg_id, "webhook-timestamp": t, "webhook-signature": signature}
