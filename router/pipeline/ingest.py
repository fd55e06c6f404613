"""The ingest pipeline, from raw request to an event ready to commit (the README's processing order).

Shared by the HTTP endpoint and `router test`, so a dry run decides exactly as the service does.
Order: allow-list (403), token and signature over the raw bytes (401), JSON object (400),
schema (422), then rules; deduplication happens inside the store's commit.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from router.config.model import Config, ProviderSpec
from router.errors import AuthError, RequestError
from router.model import NewEvent, iso_utc, new_event_id, now_ts, template_context
from router.pipeline import payload as payloads
from router.pipeline.conditions import EventView, Rule
from router.templates import TemplateError

# headers that prove authenticity are not kept with the event: they are credentials, not data
_CREDENTIAL_HEADERS = {"authorization", "cookie", "x-router-token", "x-signature", "x-hub-signature-256", "proxy-authorization"}


@dataclass
class Incoming:
    provider: str
    body: bytes
    headers: dict[str, str]  # lower-cased keys
    query: dict[str, str]
    remote_addr: str | None = None
    content_type: str | None = None


@dataclass
class Accepted:
    event: NewEvent
    view: EventView
    payload: dict[str, Any]
    matched: list[Rule] = field(default_factory=list)


def client_address(remote_addr: str | None, headers: Mapping[str, str], trusted: list) -> ipaddress._BaseAddress | None:
    """The client's address: the peer, or, when the peer is a trusted proxy, the nearest untrusted
    address in X-Forwarded-For read from the right (entries left of it are the client's to forge)."""
    try:
        addr = ipaddress.ip_address((remote_addr or "").strip())
    except ValueError:
        return None
    if not trusted or not any(addr in net for net in trusted):
        return addr
    forwarded = headers.get("x-forwarded-for", "")
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            hop_addr = ipaddress.ip_address(hop)
        except ValueError:
            return None  # a garbled chain: trust none of it
        if not any(hop_addr in net for net in trusted):
            return hop_addr
        addr = hop_addr
    return addr


def authenticate(config: Config, spec: ProviderSpec, incoming: Incoming) -> None:
    if spec.allow_from is not None:
        addr = client_address(incoming.remote_addr, incoming.headers, config.settings.trusted_proxies)
        if addr is None or not any(addr.version == net.version and addr in net for net in spec.allow_from):
            raise AuthError("client address is not allowed", status=403, code="forbidden")
    if spec.token is not None:
        given = incoming.query.get("token")
        if given is None:
            given = incoming.headers.get("x-router-token")
        if given is None:
            raise AuthError("missing token (query parameter 'token' or header X-Router-Token)")
        if not spec.token.matches(given):
            raise AuthError("token is not valid")
    spec.impl.verify(incoming.body, incoming.headers)


def accept(config: Config, spec: ProviderSpec, incoming: Incoming) -> Accepted:
    """Authenticate, parse, validate and route; the result is ready to commit."""
    authenticate(config, spec, incoming)
    payload = payloads.parse_body(incoming.body)
    payloads.validate(spec.validator, payload)

    received = now_ts()
    event_id = new_event_id(received)
    headers = {k: v for k, v in incoming.headers.items() if k not in _CREDENTIAL_HEADERS and k != _sig_header(spec)}
    query = {k: v for k, v in incoming.query.items() if k != "token"}
    view = EventView(payload, headers, query, spec.name)
    matched = config.router.match(view)

    dedupe_key = None
    if spec.dedupe is not None:
        context = template_context(payload, headers, query, spec.name, event_id, iso_utc(received), None)
        try:
            dedupe_key = spec.dedupe.render(context)
        except TemplateError:
            dedupe_key = None  # a key we cannot compute deduplicates nothing; the event is still taken

    event = NewEvent(
        id=event_id,
        provider=spec.name,
        received_ts=received,
        headers=headers,
        query=query,
        content_type=incoming.content_type,
        body=incoming.body,
        matched=[r.name for r in matched],
        jobs=[(r.name, a) for r in matched for a in r.actions],
        dedupe_key=dedupe_key,
        dedupe_window=spec.dedupe.window if spec.dedupe else 0.0,
    )
    return Accepted(event, view, payload, matched)


def _sig_header(spec: ProviderSpec) -> str:
    header = getattr(spec.impl, "header", None)
    return header.lower() if isinstance(header, str) else ""


__all__ = ["Accepted", "Incoming", "RequestError", "accept", "authenticate", "client_address"]
