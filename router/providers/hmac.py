"""HMAC signatures: Unitary's (base64 SHA-256 in X-Hub-Signature-256) and the generic `hmac` type."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac as _hmac
from collections.abc import Mapping
from typing import Any

from router.config.fields import Field, as_secret, as_str, one_of
from router.errors import AuthError
from router.providers.base import Provider


class HmacProvider(Provider):
    """Generic: `secret`, `header`, `algorithm`, `encoding`, optional `prefix` such as `sha256=`."""

    type_name = "hmac"
    schema_required = True
    options = {
        "secret": Field(as_secret, required=True),
        "header": Field(as_str, default="X-Signature"),
        "algorithm": Field(one_of("sha256", "sha512", "sha1"), default="sha256"),
        "encoding": Field(one_of("hex", "base64"), default="hex"),
        "prefix": Field(as_str, default=""),
    }

    def __init__(self, name: str, options: dict[str, Any]):
        super().__init__(name, options)
        self.secret = options["secret"]
        self.header = options["header"] or "X-Signature"
        self.digest = getattr(hashlib, options["algorithm"] or "sha256")
        self.encoding = options["encoding"] or "hex"
        self.prefix = options["prefix"] or ""

    @classmethod
    def check(cls, options: dict[str, Any]) -> list[tuple[str | None, str]]:
        secret = options.get("secret")
        if secret is not None and not secret:
            return [("secret", "secret is empty; anyone could sign with an empty key")]
        return []

    def expected(self, body: bytes) -> bytes:
        return _hmac.new(self.secret.reveal().encode("utf-8"), body, self.digest).digest()

    def encode(self, digest: bytes) -> str:
        return digest.hex() if self.encoding == "hex" else base64.b64encode(digest).decode("ascii")

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        value = headers.get(self.header.lower())
        if not value:
            raise AuthError(f"missing {self.header} header")
        value = value.strip()
        if self.prefix:
            if not value[: len(self.prefix)].lower() == self.prefix.lower():
                raise AuthError(f"{self.header} does not start with the expected prefix")
            value = value[len(self.prefix):]
        try:
            given = bytes.fromhex(value) if self.encoding == "hex" else base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            raise AuthError(f"{self.header} is not {self.encoding}") from None
        if not _hmac.compare_digest(given, self.expected(body)):
            raise AuthError(f"{self.header} does not match the body")

    def sign(self, body: bytes, private_key: bytes | None = None, *, timestamp: int | None = None) -> dict[str, str]:
        return {self.header: self.prefix + self.encode(self.expected(body))}


class UnitaryProvider(HmacProvider):
    """Unitary: HMAC-SHA256 of the raw body, base64, in X-Hub-Signature-256.

    Unitary sends no header when no key is set up; so without `secret` nothing is checked, and
    with it the header is required.
    """

    type_name = "unitary"
    bundled_schema = "unitary.json"
    schema_required = False
    options = {"secret": Field(as_secret)}

    def __init__(self, name: str, options: dict[str, Any]):
        Provider.__init__(self, name, options)
        self.secret = options.get("secret")
        self.header = "X-Hub-Signature-256"
        self.digest = hashlib.sha256
        self.encoding = "base64"
        self.prefix = ""

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        if self.secret is None:
            return
        value = headers.get("x-hub-signature-256", "")
        if value.strip().lower().startswith("sha256="):  # GitHub-style form, same bytes
            headers = {"x-hub-signature-256": value.strip()[7:]}
        super().verify(body, headers)

    def sign(self, body: bytes, private_key: bytes | None = None, *, timestamp: int | None = None) -> dict[str, str]:
        return super().sign(body) if self.secret is not None else {}
