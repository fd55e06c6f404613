"""What the HMAC presets share: keyed digests, constant-time comparison of many candidates, and
signed timestamps checked against a tolerance in both directions."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from router.config.fields import Ctx, Field, as_duration
from router.config.source import PathT
from router.errors import AuthError

DEFAULT_TOLERANCE = 300.0  # seconds; the 5 minutes every one of these providers documents



def as_tolerance(ctx: Ctx, value: Any, path: PathT) -> float | None:
    seconds = as_duration(ctx, value, path)
    if seconds is not None and seconds < 1:
        ctx.error(path, "tolerance must be at least 1s (clocks and networks are never exact)")
        return None
    return seconds


TOLERANCE = Field(as_tolerance, default=DEFAULT_TOLERANCE)

_UNIX_SECONDS = re.compile(r"^[0-9]{1,12}$")


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def any_matches(expected: bytes, given: Iterable[bytes]) -> bool:
    """Whether any candidate equals `expected`; every candidate is compared, each in constant time."""
    found = False
    for candidate in given:
        found |= hmac.compare_digest(candidate, expected)
    return found


def from_hex(text: str) -> bytes | None:
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        return None


def from_base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (ValueError, binascii.Error):
        return None


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def empty_secrets(options: dict[str, Any], *keys: str) -> list[tuple[str | None, str]]:
    """A problem for each secret that is set but empty: anyone could sign with an empty key."""
    out: list[tuple[str | None, str]] = []
    for key in keys:
        secret = options.get(key)
        if secret is not None and not secret.reveal():
            out.append((key, f"{key} is empty; anyone could sign with an empty key"))
    return out


class Timestamped:
    """A provider that signs a timestamp: one further than `tolerance` from now, either way, is
    refused, so a captured request cannot be replayed later (or prepared for later)."""

    tolerance: float = DEFAULT_TOLERANCE
    clock: Callable[[], float] = staticmethod(time.time)

    def check_timestamp(self, value: str | None, what: str) -> str:
        """The timestamp's text as sent (what the provider signed), once it is within the tolerance."""
        text = (value or "").strip()
        if not text:
            raise AuthError(f"missing {what}")
        if not _UNIX_SECONDS.match(text):
            raise AuthError(f"{what} is not a Unix time in seconds")
        if abs(self.clock() - int(text)) > self.tolerance:
            raise AuthError(f"{what} is outside the tolerance of {self.tolerance:g}s")
        return text

    def timestamp_for_signing(self, timestamp: int | None) -> int:
        return int(self.clock()) if timestamp is None else int(timestamp)
