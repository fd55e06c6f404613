"""Provider types, registered in one place: adding one is a module plus one line here."""

from __future__ import annotations

from router.providers.base import Provider
from router.providers.github import GitHubProvider
from router.providers.hmac import HmacProvider, UnitaryProvider
from router.providers.panjaya import PanjayaProvider
from router.providers.shopify import ShopifyProvider
from router.providers.simple import NamirialOneShotProvider, NoneProvider
from router.providers.slack import SlackProvider
from router.providers.standard_webhooks import StandardWebhooksProvider
from router.providers.stripe import StripeProvider
from router.providers.twilio import TwilioProvider

PROVIDER_TYPES: dict[str, type[Provider]] = {
    cls.type_name: cls
    for cls in (
        PanjayaProvider,
        UnitaryProvider,
        NamirialOneShotProvider,
        HmacProvider,
        NoneProvider,
        GitHubProvider,
        StripeProvider,
        SlackProvider,
        StandardWebhooksProvider,
        ShopifyProvider,
        TwilioProvider,
    )
}

__all__ = ["PROVIDER_TYPES", "Provider"]
