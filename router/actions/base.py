"""What every action provides: options, a preview of what it would do, and delivery attempts (one, or a batch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from router.config.fields import Field
from router.config.settings import Settings
from router.errors import DeliveryError
from router.model import template_context
from router.pipeline.payload import is_form, parse_form
from router.providers.base import Provider

DEFAULT_TIMEOUT = 10.0
LEASE_MARGIN = 15.0  # a claim outlives the action's timeout by this much (the README's delivery promise)


@dataclass
class Delivery:
    """One delivery of one event by one action for one rule."""

    event_id: str
    provider: str
    rule: str
    action: str
    attempt: int
    received_at: str
    headers: dict[str, str]
    query: dict[str, str]
    body: bytes
    content_type: str | None
    source: Provider | None = None  # the provider's type: how its bodies parse, what it calls the event
    _payload: Any = None
    response: str | None = None  # set by the attempt: the first bytes of the destination's answer

    @property
    def payload(self) -> Any:
        if self._payload is None:
            if self.source is not None and self.source.form_bodies and is_form(self.content_type):
                self._payload = parse_form(self.body, self.source.form_json_fields)
            else:
                self._payload = json.loads(self.body.decode("utf-8"))
        return self._payload

    def context(self) -> dict[str, Any]:
        event_type = self.source.event_type(self.headers, self.payload) if self.source is not None else None
        return template_context(self.payload, self.headers, self.query, self.provider, self.event_id,
                                self.received_at, self.rule, event_type=event_type)


Result = int | None | DeliveryError  # one delivery of a batch: the downstream status (if any), or why it failed


class Action:
    type_name: ClassVar[str]
    options: ClassVar[dict[str, Field]] = {}
    default_rate: ClassVar[float | None] = None
    batches: ClassVar[bool] = False  # deliver_batch does many deliveries for the cost of about one

    def __init__(self, name: str, options: dict[str, Any], settings: Settings):
        self.name = name
        self.settings = settings
        self.timeout = float(options.get("timeout") or DEFAULT_TIMEOUT)

    @classmethod
    def check(cls, options: dict[str, Any]) -> list[tuple[str | None, str]]:
        return []

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        """What `deliver` would do, rendered, for `router test`. Raises DeliveryError on template errors."""
        raise NotImplementedError

    def deliver(self, delivery: Delivery) -> int | None:
        """One attempt. Returns the downstream status (if any); raises DeliveryError on failure."""
        raise NotImplementedError

    def deliver_batch(self, deliveries: list[Delivery]) -> list[Result]:
        """One attempt of each, in order: a status (or None) where it succeeded, the DeliveryError where not."""
        results: list[Result] = []
        for delivery in deliveries:
            try:
                results.append(self.deliver(delivery))
            except DeliveryError as exc:
                results.append(exc)
        return results
