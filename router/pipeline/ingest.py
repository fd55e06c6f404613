"""The ingest pipeline, from raw request to an event ready to commit (the README's processing order).

Shared by the HTTP endpoint and `router test`, so a dry run decides exactly as the service does.
Order: allow-list (403), token and signature over the raw bytes (401), JSON object or, for the
providers that send them, a form (400), a provider's handshake (answered, not stored), schema
(422), then rules; deduplication happens inside the store's commit.
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

DEFAULT_DEDUPE_WINDOW = 86400.0  # a provider's delivery id deduplicates for a day unless `dedupe` says otherwise


@dataclass
class Incoming:
    provider: str
    body: bytes
    headers: dict[str, str]  # lower-cased keys
    query: dict[str, str]
    remote_addr: str | None = None
    content_type: str | None = None
    query_string: str = ""  # as received: Twilio signs it


class Handshake(Exception):
    """An authentic handshake (Slack's URL verification): answer 200 with `answer`, store nothing."""

    def __init__(self, answer: dict[str, Any]):
        super().__init__("handshake")
        self.answer = answer


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
            raise AuthError("client address is not allowed", status=403, code="forbidden", check="allow-list")
    if spec.token is not None:
        given, via = incoming.query.get("token"), "query parameter token"
        if given is None:
            given, via = incoming.headers.get("x-router-token"), "header X-Router-Token"
        if given is None:
            raise AuthError("missing token (query parameter 'token' or header X-Router-Token)", check="token")
        if not spec.token.matches(given):
            raise AuthError("token is not valid", check="token", given_in=via)
    try:
        spec.impl.verify_request(incoming.body, incoming.headers, incoming.query_string)
    except AuthError as exc:
        header = getattr(spec.impl, "header", None)
        if isinstance(header, str) and "header" not in exc.facts:
            exc.facts["header"] = header
        raise


def accept(config: Config, spec: ProviderSpec, incoming: Incoming) -> Accepted:
    """Authenticate, parse, validate and route; the result is ready to commit."""
    authenticate(config, spec, incoming)
    impl = spec.impl
    payload = payloads.parse_payload(incoming.body, incoming.content_type, forms=impl.form_bodies,
                                     json_fields=impl.form_json_fields)
    answer = impl.handshake(payload)
    if answer is not None:
        raise Handshake(answer)
    payloads.validate(spec.validator, payload)

    received = now_ts()
    event_id = new_event_id(received)
    hidden = spec.hidden_headers
    headers = {k: v for k, v in incoming.headers.items() if k not in hidden}
    query = {k: v for k, v in incoming.query.items() if k != "token"}
    event_type = impl.event_type(incoming.headers, payload)
    view = EventView(payload, headers, query, spec.name, event_type)
    matched = config.router.match(view)

    dedupe_key = None
    if spec.dedupe is not None:
        context = template_context(payload, headers, query, spec.name, event_id, iso_utc(received), None,
                                   event_type=event_type)
        try:
            dedupe_key = spec.dedupe.render(context)
        except TemplateError:
            dedupe_key = None  # a key we cannot compute deduplicates nothing; the event is still taken
    elif spec.default_dedupe:
        # the provider's own delivery id, which it keeps when it retries
        dedupe_key = impl.delivery_id(incoming.headers, payload)

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
        dedupe_window=spec.dedupe.window if spec.dedupe else DEFAULT_DEDUPE_WINDOW,
    )
    return Accepted(event, view, payload, matched)


__all__ = ["Accepted", "Handshake", "Incoming", "RequestError", "accept", "authenticate", "client_address"]
