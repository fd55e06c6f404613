"""Provider types, registered in one place: adding one is a module plus one line here."""

from __future__ import annotations

from router.providers.base import Provider
from router.providers.hmac import HmacProvider, UnitaryProvider
from router.providers.panjaya import PanjayaProvider
from router.providers.simple import NamirialOneShotProvider, NoneProvider

PROVIDER_TYPES: dict[str, type[Provider]] = {
    cls.type_name: cls
    for cls in (PanjayaProvider, UnitaryProvider, NamirialOneShotProvider, HmacProvider, NoneProvider)
}

__all__ = ["PROVIDER_TYPES", "Provider"]
