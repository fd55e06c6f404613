"""The loaded rules file: providers, actions and rules, each checked and compiled."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

from router.actions.base import Action
from router.config.settings import RetryPolicy, Settings
from router.errors import Problem
from router.pipeline.conditions import Rule, RuleSet
from router.pipeline.payload import SchemaValidator
from router.providers.base import Provider
from router.secret import Redactor, Secret
from router.store.uri import describe
from router.templates import Template

IPNetwork = IPv4Network | IPv6Network

@dataclass
class Dedupe:
    """`key` is one template, or a list of templates whose rendered parts are encoded as a JSON
    array, so ("a:b", "c") and ("a", "b:c") are different keys whatever the parts hold."""

    key: Template | list[Template]
    window: float

    def render(self, context: dict[str, Any]) -> str | None:
        """The key for an event, or None (deduplicate nothing) when it renders empty."""
        if isinstance(self.key, Template):
            return self.key.render(context).strip() or None
        parts = [t.render(context).strip() for t in self.key]
        if not any(parts):
            return None
        return json.dumps(parts, ensure_ascii=False, separators=(",", ":"))


@dataclass
class ProviderSpec:
    name: str
    type: str
    impl: Provider
    validator: SchemaValidator | None
    token: Secret | None
    allow_from: list[IPNetwork] | None
    dedupe: Dedupe | None
    paths: list[str]
    # without `dedupe`, the provider's own delivery id (if it sends one) deduplicates; `dedupe: off` stops that
    default_dedupe: bool = True

    @functools.cached_property
    def hidden_headers(self) -> frozenset[str]:
        """The headers of this provider's requests that are credentials, not data: never stored
        (worked out once per loaded provider, not once per request)."""
        header = getattr(self.impl, "header", None)
        own = {header.lower()} if isinstance(header, str) else set()
        return frozenset(CREDENTIAL_HEADERS | set(self.impl.signature_headers) | own)


# headers that prove authenticity are not kept with an event: they are credentials, not data
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "x-router-token", "x-signature", "x-hub-signature-256",
                                "proxy-authorization"})


@dataclass
class ActionSpec:
    name: str
    type: str
    impl: Action
    retry: RetryPolicy
    rate: float | None
    timeout: float


@dataclass
class Config:
    path: Path
    settings: Settings
    providers: dict[str, ProviderSpec]
    actions: dict[str, ActionSpec]
    rules: list[Rule]
    router: RuleSet
    redactor: Redactor
    paths: dict[str, str]  # extra URL path -> provider name
    source_text: str = ""
    warnings: list[Problem] = field(default_factory=list)  # loads, but probably not what was meant

    @property
    def version_stamp(self) -> str:
        """Names this text of the rules file (the first 12 hex digits of its SHA-256)."""
        import hashlib

        return hashlib.sha256(self.source_text.encode("utf-8")).hexdigest()[:12]

    def summary(self) -> str:
        return (
            f"{len(self.providers)} provider(s), {len(self.actions)} action(s), {len(self.rules)} rule(s); "
            f"store {describe(self.settings.store)}"
        )
