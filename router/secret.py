"""Secrets: a value that prints as <secret>, and the redaction of known secret text."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable

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
    message that happens to quote one (a template error, a URL) cannot leak it.
    """

    MIN_LENGTH = 4  # shorter values are too likely to be ordinary words

    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for s in secrets:
            self.add(s)

    def add(self, value: str) -> None:
        if value and len(value) >= self.MIN_LENGTH and value not in self._secrets:
            self._secrets.add(value)
            self._pattern = None

    def __call__(self, text: str) -> str:
        if not self._secrets:
            return text
        if self._pattern is None:
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))
        return self._pattern.sub(REDACTED, text)
