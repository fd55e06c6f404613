"""What every provider type provides: an authenticity check over the raw bytes, and a schema."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from router.config.fields import Field


class Provider:
    type_name: ClassVar[str]
    bundled_schema: ClassVar[str | None] = None  # a file in schemas/
    schema_required: ClassVar[bool] = False
    options: ClassVar[dict[str, Field]] = {}  # type-specific keys of the provider's entry

    def __init__(self, name: str, options: dict[str, Any]):
        self.name = name
        self.config = options  # this provider's converted options (`options` declares them)

    @classmethod
    def check(cls, options: dict[str, Any]) -> list[tuple[str | None, str]]:
        """Cross-field problems, as (key or None, message)."""
        return []

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Raise AuthError unless the raw body is authentic. `headers` keys are lower-case."""

    def sign(self, body: bytes, private_key: bytes | None = None) -> dict[str, str]:
        """The headers this provider would send with `body` (for `router sign`)."""
        return {}
