"""Secrets: a value that prints as <secret>, and the redaction of known secret text."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, urlsplit

REDACTED = "<secret>"


class Secret:
    """A string that is never shown. `reveal()` is the one way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def matches(self, candidate: str | bytes | None) -> bool:
        """Constant-time comparison with what a client sent."""
        if candidate is None:
            return False
        if isinstance(candidate, str):
            candidate = candidate.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(self._value.encode("utf-8"), candidate)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(Secret)


class Redactor:
    """Replaces every known secret string in a text by <secret>.

    Fed with the values of secret fields and of every ${VAR} the rules file expanded, so a
    message that happens to quote one (a template error, a URL) cannot leak it. A secret is
    also known by its distinctive parts, since what quotes it often quotes only a part: a
    destination answering `Cannot POST /services/T0/B0/xyz` echoes a Slack webhook's path, not
    its URL. See `parts`.
    """

    MIN_LENGTH = 4  # shorter values are too likely to be ordinary words

    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for s in secrets:
            self.add(s)

    def add(self, value: str) -> None:
        for text in (value, *parts(value)):
            if text and len(text) >= self.MIN_LENGTH and text not in self._secrets:
                self._secrets.add(text)
                self._pattern = None

    def __call__(self, text: str) -> str:
        if not self._secrets:
            return text
        if self._pattern is None:
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))
        return self._pattern.sub(REDACTED, text)


def distinctive(part: str) -> bool:
    """Long enough and random-looking enough to be (part of) a secret, not a word of a URL such as
    `services`, `hooks` or `v1`: 16 characters or more, or 8 or more with a digit in them."""
    return len(part) >= 16 or (len(part) >= 8 and any(c.isdigit() for c in part))


def parts(value: str) -> list[str]:
    """The pieces of a secret that may be quoted on their own.

    For a URL: its path and query (what a server echoes back), the password in its user info,
    every distinctive path segment and query value. For any secret: the part after a known
    prefix (`whsec_`, `Bearer `), and its percent-encoded form (how it appears in a URL)."""
    out: list[str] = []
    try:
        split = urlsplit(value) if "://" in value else None
    except ValueError:  # not a URL after all (`http://[` opens an IPv6 address it never closes): kept whole
        split = None
    if split is not None:
        if split.path not in ("", "/"):
            out.append(split.path)
            if split.query:
                out.append(f"{split.path}?{split.query}")
        if split.password:
            out.append(split.password)
        out += [seg for seg in split.path.split("/") if distinctive(seg)]
        for _, v in parse_qsl(split.query, keep_blank_values=True):
            if distinctive(v):
                out.append(v)
                out.append(quote(v, safe=""))
    for prefix in ("whsec_", "Bearer ", "Basic ", "Token "):
        if value.startswith(prefix) and len(value) > len(prefix):
            out.append(value[len(prefix):])
    encoded = quote(value, safe="")
    if encoded != value:
        out.append(encoded)
    return out
