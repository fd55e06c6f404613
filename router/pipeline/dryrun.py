"""The dry run behind `router test` and the inspector's "try a payload": parse, validate, match,
and render each action as it would be sent, sending nothing (the signature check is skipped)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from router.actions.base import Delivery
from router.config.model import Config, ProviderSpec
from router.errors import DeliveryError
from router.model import iso_utc, new_event_id, now_ts
from router.pipeline import payload as payloads
from router.pipeline.conditions import EventView


@dataclass
class DryRun:
    provider: str
    matched: list[str]
    actions: list[dict[str, Any]] = field(default_factory=list)  # rule, action, type, and rendered or error

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "matched": self.matched, "actions": self.actions}


def dry_run(config: Config, spec: ProviderSpec, body: bytes, headers: Mapping[str, str],
            query: Mapping[str, str]) -> DryRun:
    """What the service would do with this request; raises SchemaError or RequestError as the
    endpoint would answer 422 or 400. `headers` keys are lower-case."""
    data = payloads.parse_body(body)
    payloads.validate(spec.validator, data)
    header_map, query_map = dict(headers), dict(query)
    matched = config.router.match(EventView(data, header_map, query_map, spec.name))
    received = now_ts()
    event_id = new_event_id(received)
    result = DryRun(spec.name, [r.name for r in matched])
    for rule in matched:
        for action_name in rule.actions:
            action = config.actions[action_name]
            delivery = Delivery(event_id, spec.name, rule.name, action_name, 1, iso_utc(received),
                                header_map, query_map, body, header_map.get("content-type", "application/json"))
            entry: dict[str, Any] = {"rule": rule.name, "action": action_name, "type": action.type}
            try:
                entry["rendered"] = action.impl.preview(delivery)
            except DeliveryError as exc:
                entry["error"] = exc.message
            result.actions.append(entry)
    return result
