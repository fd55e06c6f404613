"""Providers that sign nothing: protected by `token` and `allow_from`, which every provider takes."""

from __future__ import annotations

from router.providers.base import Provider


class NamirialOneShotProvider(Provider):
    """Namirial One-Shot / Uanataca VideoID: no signature from the provider.

    The only protection is a secret in the callback URL we hand them (`token`) and an address
    allow-list (`allow_from`); use both.
    """

    type_name = "namirial-oneshot"
    bundled_schema = "namirial-oneshot.json"


class NoneProvider(Provider):
    """No authenticity check of its own; `schema` optional."""

    type_name = "none"
