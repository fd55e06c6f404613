"""Why an event did what it did: every rule, matched or not, and each action as it would be sent.

`explain()` returns plain data (dataclasses with `to_dict()`), so `router test --explain` prints it
and a web page can render the same thing. It decides nothing of its own: the rules that match are
the service's own `RuleSet.match`, and the trace walks the same compiled conditions (their `tree`)
to say which condition failed and what value the event had at that path.

Nothing is sent. Rendered actions pass through the rules file's redactor, and the previews
already show credentials as `<secret>` / `<configured>`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from router.config.model import Config
from router.config.source import fmt_path
from router.errors import DeliveryError, RequestError, SchemaError
from router.model import iso_utc, new_event_id, now_ts
from router.pipeline import payload as payloads
from router.pipeline.conditions import Check, EventView, Group, Rule

MAX_VALUES = 10  # values shown for a path with [*]; more are counted, not listed


@dataclass
class ConditionTrace:
    """One part of a rule's `when`, evaluated against the event."""

    kind: str  # "check", "all", "any" or "not"
    holds: bool
    where: str  # its place in the rules file: rules[2].when.data.is_error
    path: str | None = None  # a check's path into the event
    expected: Any = None  # a check's matcher, as written
    found: list[Any] | None = None  # the values at the path ([] when it is missing)
    missing: bool = False
    failed: list[str] = field(default_factory=list)  # the operators that did not hold, with their argument
    parts: list[ConditionTrace] = field(default_factory=list)


@dataclass
class RuleTrace:
    name: str
    line: int
    status: str  # "matched", "no match", "other provider", "not evaluated"
    reason: str  # one line a person reads
    stop: bool = False
    ended_evaluation: bool = False  # this rule matched with `stop: true`
    actions: list[str] = field(default_factory=list)
    condition: ConditionTrace | None = None

    @property
    def matched(self) -> bool:
        return self.status == "matched"


@dataclass
class ActionPreview:
    rule: str
    action: str
    type: str
    rendered: dict[str, Any] | None = None  # what would be sent
    error: str | None = None  # why it would fail permanently


@dataclass
class Explanation:
    provider: str
    provider_type: str
    event_id: str
    received_at: str
    valid: bool
    error: str | None = None  # the payload was refused: why (the HTTP status is in `status`)
    status: int = 200
    violations: list[dict[str, Any]] = field(default_factory=list)  # a 422's detail
    rules: list[RuleTrace] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)
    stopped_by: str | None = None
    actions: list[ActionPreview] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def explain(config: Config, provider: str, body: bytes, headers: dict[str, str] | None = None,
            query: dict[str, str] | None = None, *, content_type: str | None = None,
            event_id: str | None = None, received_at: str | None = None) -> Explanation:
    """Explain what `config` does with this event. `provider` must be one of config.providers."""
    spec = config.providers[provider]
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    query = dict(query or {})
    received = now_ts()
    out = Explanation(provider, spec.type, event_id or new_event_id(received), received_at or iso_utc(received), True)
    try:
        data = payloads.parse_payload(body, content_type or headers.get("content-type"), forms=spec.impl.form_bodies,
                                      json_fields=spec.impl.form_json_fields)
        payloads.validate(spec.validator, data)
    except SchemaError as exc:
        out.valid, out.status, out.error, out.violations = False, exc.status, exc.message, exc.detail
        return out
    except RequestError as exc:
        out.valid, out.status, out.error = False, exc.status, exc.message
        return out

    view = EventView(data, headers, query, provider, spec.impl.event_type(headers, data))
    matched = config.router.match(view)  # the service's own decision; the trace only explains it
    names = {r.name for r in matched}
    out.matched = [r.name for r in matched]
    stopper = matched[-1] if matched and matched[-1].stop else None
    out.stopped_by = stopper.name if stopper else None

    for rule in config.rules:
        out.rules.append(_rule_trace(rule, view, rule.name in names, stopper))

    redact = config.redactor
    from router.actions.base import Delivery

    for rule in matched:
        for action_name in rule.actions:
            action = config.actions[action_name]
            delivery = Delivery(out.event_id, provider, rule.name, action_name, 1, out.received_at, headers, query,
                                body, content_type or headers.get("content-type", "application/json"),
                                source=spec.impl)
            preview = ActionPreview(rule.name, action_name, action.type)
            try:
                preview.rendered = _redacted(action.impl.preview(delivery), redact)
            except DeliveryError as exc:
                preview.error = redact(exc.message)
            out.actions.append(preview)
    return out


def _rule_trace(rule: Rule, view: EventView, matched: bool, stopper: Rule | None) -> RuleTrace:
    trace = RuleTrace(rule.name, rule.line, "", "", stop=rule.stop, actions=list(rule.actions))
    if rule.providers is not None and view.provider not in rule.providers:
        trace.status = "other provider"
        trace.reason = f"for provider {', '.join(sorted(rule.providers))}, not {view.provider}"
        return trace
    if stopper is not None and rule.index > stopper.index:
        trace.status = "not evaluated"
        trace.reason = f"rule {stopper.name} matched with stop: true"
        return trace
    tree = rule.condition.tree
    trace.condition = _trace(tree, view) if tree is not None and tree.parts else None
    if matched:
        trace.status = "matched"
        trace.reason = "no conditions" if trace.condition is None else "every condition holds"
        trace.ended_evaluation = rule.stop
    else:
        trace.status = "no match"
        failing = _first_failing(trace.condition)
        trace.reason = _describe(failing) if failing is not None else "the condition does not hold"
    return trace


def _trace(node: Check | Group, view: EventView) -> ConditionTrace:
    where = fmt_path(node.where)
    if isinstance(node, Check):
        values = node.resolver.all(view)
        holds = node.test(values)
        shown = values[:MAX_VALUES] + ([f"... {len(values) - MAX_VALUES} more"] if len(values) > MAX_VALUES else [])
        failed = [] if holds else [f"{op} {_short(arg)}" for op, arg in node.why_not(values)]
        return ConditionTrace("check", holds, where, path=node.path, expected=node.matcher, found=shown,
                              missing=not values, failed=failed)
    if node.kind == "all" and len(node.parts) == 1:
        return _trace(node.parts[0], view)  # `all` around one part says nothing of its own
    parts = [_trace(p, view) for p in node.parts]
    if node.kind == "any":
        holds = any(p.holds for p in parts)
    elif node.kind == "not":
        holds = not all(p.holds for p in parts)
    else:
        holds = all(p.holds for p in parts)
    return ConditionTrace(node.kind, holds, where, parts=parts)


def _first_failing(trace: ConditionTrace | None) -> ConditionTrace | None:
    if trace is None or trace.holds:
        return None
    if trace.kind in ("all",):
        for part in trace.parts:
            if not part.holds:
                return _first_failing(part) or part
    return trace


def _describe(t: ConditionTrace) -> str:
    if t.kind == "check":
        found = "the path is missing" if t.missing else f"the event has {_values(t.found or [])}"
        return f"{t.path}: {'; '.join(t.failed) or 'does not hold'} failed ({found})"
    if t.kind == "any":
        return f"{t.where}: none of {len(t.parts)} alternatives holds"
    if t.kind == "not":
        return f"{t.where}: the negated condition holds"
    return f"{t.where}: does not hold"


def _values(values: list[Any]) -> str:
    if len(values) == 1:
        return _short(values[0])
    return "[" + ", ".join(_short(v) for v in values) + "]"


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _redacted(value: Any, redact: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(v, redact) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v, redact) for k, v in value.items()}
    return value


def render_text(ex: Explanation) -> str:
    """The explanation as a person reads it in a terminal (the caller escapes control characters)."""
    lines = [f"event {ex.event_id} from provider '{ex.provider}' ({ex.provider_type})"]
    if not ex.valid:
        lines.append(f"payload refused (HTTP {ex.status}): {ex.error}")
        for d in ex.violations:
            lines.append(f"  {'.'.join(str(x) for x in d['loc'])}: {d['msg']} ({d['type']})")
        return "\n".join(lines)
    lines.append("payload: valid")
    lines.append("rules, in file order:")
    marks = {"matched": "MATCH", "no match": "no", "other provider": "skip", "not evaluated": "skip"}
    for r in ex.rules:
        at = f" (line {r.line})" if r.line else ""
        lines.append(f"  [{marks[r.status]:5}] {r.name}{at}: {r.reason}")
        if r.condition is not None and r.status in ("matched", "no match"):
            lines.extend(_condition_lines(r.condition, 10))
        if r.ended_evaluation:
            lines.append("          stop: true -- evaluation ends here")
    lines.append(f"matched: {', '.join(ex.matched) if ex.matched else '(no rule)'}")
    if ex.stopped_by:
        lines.append(f"stopped by: {ex.stopped_by}")
    for a in ex.actions:
        lines.append(f"- rule {a.rule} -> action {a.action} ({a.type})")
        if a.error is not None:
            lines.append(f"    would fail permanently: {a.error}")
        else:
            lines.extend("    " + line for line in pretty(a.rendered).splitlines())
    return "\n".join(lines)


def _condition_lines(t: ConditionTrace, depth: int) -> list[str]:
    pad = " " * depth
    mark = "ok  " if t.holds else "FAIL"
    if t.kind == "check":
        found = "(missing)" if t.missing else _values(t.found or [])
        line = f"{pad}{mark} {t.path}: {_short(t.expected)} -- event has {found}"
        if t.failed:
            line += f"; failed: {', '.join(t.failed)}"
        return [line]
    out = [f"{pad}{mark} {t.kind}:"]
    for part in t.parts:
        out.extend(_condition_lines(part, depth + 2))
    return out


def pretty(rendered: Any) -> str:
    """An action's preview, with a JSON body shown as indented JSON rather than one escaped line."""
    if not isinstance(rendered, dict):
        return json.dumps(rendered, indent=2, ensure_ascii=False)
    lines: list[str] = []
    for key, value in rendered.items():
        if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
            try:  # a JSON body (or a JSON line of a file) shown as JSON, not as one escaped string
                value = json.loads(value)
            except ValueError:
                pass
        if key == "body" and isinstance(value, str):
            lines.append("body: " + (value if "\n" not in value else "\n" + value))
            continue
        text = json.dumps(value, indent=2, ensure_ascii=False)
        lines.append(f"{key}: {text}")
    return "\n".join(lines)
