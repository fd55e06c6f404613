"""The inspector's pages: events, one event, dead letters (with replay), and try a payload.

Every page is plain HTML from Jinja templates with autoescaping always on, a strict
Content-Security-Policy, and nothing from another origin. Everything that changes state is a
POST carrying the CSRF token. Filters are GET parameters so a URL can be shared.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import yaml
from flask import Blueprint, Response, redirect, request, url_for
from jinja2 import Environment, PackageLoader, StrictUndefined
from werkzeug.wrappers import Response as BaseResponse

from router import logs
from router.config.fields import parse_duration
from router.config.inspector import InspectorSettings
from router.config.model import Config, ProviderSpec
from router.model import JobState, iso_utc
from router.pipeline.explain import explain, pretty
from router.store.base import Cursor, DeadFilter, EventFilter, EventSummary, json_path_steps
from router.web.inspector.auth import Guard, csrf_ok, csrf_token
from router.web.state import RouterState

PAGE_SIZES = (25, 50, 100, 200)
SEARCH_BUDGET = 0.04  # seconds of searching per page when a filter needs more than the time index
REFRESH_SECONDS = 5
STATES = [s.value for s in JobState]
_EVENT_ID = re.compile(r"^evt_[0-9a-f]{12,40}$")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with our own forms
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_env = Environment(loader=PackageLoader("router.web.inspector", "templates"), autoescape=True,
                   undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
# a value as JSON text, escaped by autoescaping like any other text (Jinja's tojson writes \u003c for <)
_env.filters["json"] = lambda value: json.dumps(value, ensure_ascii=False, default=str)


class BadFilter(ValueError):
    pass


def _ts_param(name: str, value: str | None) -> float | None:
    """A time as a filter takes it: ISO 8601 (UTC unless it says otherwise), or a duration ago (`15m`)."""
    if not value or not value.strip():
        return None
    text = value.strip()
    ago = parse_duration(text)
    if ago is not None:
        return time.time() - ago
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise BadFilter(f"{name}: '{text[:40]}' is not a time (2026-01-31, 2026-01-31T12:00, or 15m, 2h, 1d ago)") \
            from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _text_param(name: str, limit: int = 500) -> str | None:
    value = request.args.get(name, "").strip()
    if len(value) > limit:
        raise BadFilter(f"{name}: at most {limit} characters")
    return value or None


def _limit_param() -> int:
    try:
        value = int(request.args.get("limit", "50"))
    except ValueError:
        value = 50
    return min(max(value, 1), PAGE_SIZES[-1])


def _pretty(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, indent=2, ensure_ascii=False)
    return str(value)


# the bundled provider types whose payload names its event type at the top level
_PAYLOAD_EVENT_KEYS = {"panjaya": "event", "namirial-oneshot": "event_type"}


def event_type_of(spec: ProviderSpec | None, headers: dict[str, str], payload: Any) -> str | None:
    """The event's type where the provider type knows it: its own `event_type(headers, payload)`
    (the presets' `$event`), else the payload key the bundled types use; None when neither says."""
    if spec is None:
        return None
    method = getattr(spec.impl, "event_type", None)
    if callable(method):
        try:
            found = method(headers, payload)
        except Exception:  # a provider's guess must not break the page
            found = None
        if found is not None:
            return str(found)
    key = _PAYLOAD_EVENT_KEYS.get(spec.type)
    if key is not None and isinstance(payload, dict):
        value = payload.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    return None


def _event_type(config: Config, row: EventSummary) -> str | None:
    spec = config.providers.get(row.provider)
    if spec is None or row.body is None:
        return None
    try:
        payload = json.loads(row.body)
    except ValueError:
        return None
    return event_type_of(spec, row.headers, payload)


def _done_message() -> str | None:
    """What the last POST did, from a fixed set: a link cannot make the page say anything else."""
    done, number = request.args.get("done"), request.args.get("n", request.args.get("job", ""))
    if not number.isdigit():
        return None
    return {"requeued": f"re-queued delivery {number}",
            "not-dead": f"delivery {number} is not a dead letter (nothing done)",
            "bulk": f"re-queued {number} dead letter(s)"}.get(done or "")


# (the config they were read from, them): one pair, swapped whole, so threads never see half of one
_rule_sources: tuple[Any, dict[str, str]] = (None, {})


def rule_sources(config: Config) -> dict[str, str]:
    """Each rule's `when:` as written in the rules file (${VAR}s unexpanded, so no secret shows)."""
    global _rule_sources
    held, cached = _rule_sources
    found: dict[str, str] | None = cached if held is config else None
    if found is None:
        found = {}
        try:
            raw = yaml.safe_load(config.source_text) or {}
            for node in raw.get("rules") or []:
                if isinstance(node, dict) and "name" in node:
                    when = node.get("when")
                    found[str(node["name"])] = "always (no when:)" if when is None else \
                        yaml.safe_dump(when, sort_keys=False, allow_unicode=True).strip()
        except Exception:  # the text loaded once; anything odd here only costs the explanation
            found = {}
        _rule_sources = (config, found)  # one config at a time: a reload makes a new one
    return found


def explanation(config: Config, provider: str, body: bytes, headers: dict[str, str], query: dict[str, str], *,
                content_type: str | None = None, event_id: str | None = None,
                received_at: str | None = None) -> dict[str, Any] | None:
    """What `router test --explain` says of this event with the rules as they are now, as plain data
    (every rule, matched or not, with the condition that failed and the value the event had), which
    `_why.html` renders; None when it cannot be said (a provider no longer in the rules file)."""
    if provider not in config.providers:
        return None
    try:
        found = explain(config, provider, body, headers, query, content_type=content_type, event_id=event_id,
                        received_at=received_at)
    except Exception as exc:  # an explanation must never cost the page
        logs.warning("inspector: could not explain an event", error=f"{type(exc).__name__}: {exc}")
        return None
    return found.to_dict()


def blueprint(state: RouterState) -> Blueprint:
    bp = Blueprint("inspector", __name__, static_folder="static", static_url_path="/static")
    guard = Guard()

    def settings() -> InspectorSettings | None:
        current = state.config.settings.inspector
        return current if current is not None and current.enabled else None

    def render(template: str, status: int = 200, **context: Any) -> Response:
        current = settings()
        assert current is not None
        context.setdefault("message", None)
        html = _env.get_template(template).render(
            url_for=url_for, csrf=csrf_token(current), request=request, states=STATES, iso=iso_utc,
            providers=sorted(state.config.providers), rules=[r.name for r in state.config.rules],
            actions=sorted(state.config.actions), page_sizes=PAGE_SIZES, search_ms=int(SEARCH_BUDGET * 1000),
            **context)
        return Response(html, status=status, content_type="text/html; charset=utf-8")

    @bp.before_request
    def authenticate() -> Response | None:
        current = settings()
        if current is None:  # turned off by a reload
            return Response("not found\n", status=404, content_type="text/plain; charset=utf-8")
        auth = request.authorization
        if auth is None or auth.type != "basic" or not guard.allows(current, auth.username, auth.password):
            if auth is not None:
                logs.warning("inspector login refused", client=request.remote_addr)
            return Response("authentication required\n", status=401, content_type="text/plain; charset=utf-8",
                            headers={"WWW-Authenticate": 'Basic realm="router inspector", charset="UTF-8"'})
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("Origin")
            # the host only: behind a TLS proxy the browser says https:// while this hop is http://
            if origin is not None and urlsplit(origin).netloc != request.host:
                return Response("cross-origin request refused\n", status=403,
                                content_type="text/plain; charset=utf-8")
            limit = state.config.settings.max_body_bytes * 2 + 65536  # a payload and its headers, form-encoded
            if request.content_length is None or request.content_length > limit:
                return Response("a form needs a Content-Length within the body limit\n",
                                status=411 if request.content_length is None else 413,
                                content_type="text/plain; charset=utf-8")
            if not csrf_ok(current, request.form.get("csrf")):
                return Response("missing or wrong CSRF token; reload the page and try again\n", status=403,
                                content_type="text/plain; charset=utf-8")
        return None

    @bp.after_request
    def secure(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        return response

    # ------------------------------------------------------------------ events

    def event_filter() -> tuple[EventFilter, dict[str, Any]]:
        args = {k: v for k, v in request.args.items() if k in
                ("provider", "rule", "state", "since", "until", "q", "path", "value", "limit") and v.strip()}
        filt = EventFilter(provider=_text_param("provider", 100), rule=_text_param("rule", 200),
                           state=_text_param("state", 20), since=_ts_param("since", request.args.get("since")),
                           until=_ts_param("until", request.args.get("until")), limit=_limit_param(),
                           text=_text_param("q"), json_path=_text_param("path", 200), json_value=_text_param("value"))
        if filt.state is not None and filt.state not in STATES:
            raise BadFilter(f"state: one of {', '.join(STATES)}")
        if filt.json_path is not None:
            try:
                json_path_steps(filt.json_path)
            except ValueError as exc:
                raise BadFilter(f"path: {exc}") from None
        return filt, args

    def event_rows() -> dict[str, Any]:
        filt, args = event_filter()
        after = Cursor.decode(request.args.get("cursor"))
        page = state.store.browse_events(filt, after, budget=SEARCH_BUDGET)
        config = state.config
        rows = [{"e": row, "type": _event_type(config, row)} for row in page.rows]
        next_url = url_for(".events", **args, cursor=page.next.encode()) if page.next else None
        return {"rows": rows, "page": page, "args": args, "next_url": next_url, "first_page": after is None}

    @bp.get("/")
    def events() -> Response:
        try:
            context = event_rows()
        except BadFilter as exc:
            return render("events.html", 400, rows=[], page=None, args=dict(request.args), next_url=None,
                          first_page=True, message=str(exc), refresh=0)
        if request.args.get("fragment") == "rows":
            return render("_event_rows.html", **context)
        return render("events.html", refresh=REFRESH_SECONDS if context["first_page"] else 0, **context)

    @bp.get("/events/<event_id>")
    def event(event_id: str) -> Response:
        found = state.store.show_event(event_id) if _EVENT_ID.match(event_id) else None
        if found is None:
            return render("missing.html", 404, what="event", ident=event_id[:80])
        redact = state.config.redactor
        payload_text = redact(_pretty(found["payload"]))
        headers = {k: redact(str(v)) for k, v in sorted(found["headers"].items())}
        query = {k: redact(str(v)) for k, v in sorted(found["query"].items())}
        sources = rule_sources(state.config)
        known = {r.name for r in state.config.rules}
        why = [{"rule": name, "when": sources.get(name), "known": name in known} for name in found["matched"]]
        stored = state.store.event(found["event_id"])
        explained = explanation(state.config, found["provider"], stored.body, found["headers"], found["query"],
                                content_type=found["content_type"], event_id=found["event_id"],
                                received_at=found["received_at"]) if stored is not None else None
        event_type = event_type_of(state.config.providers.get(found["provider"]), found["headers"], found["payload"])
        return render("event.html", e=found, payload_text=payload_text, headers=headers, query=query, why=why,
                      explained=explained, event_type=event_type, message=_done_message())

    # ------------------------------------------------------------------ dead letters

    def dead_filter() -> tuple[DeadFilter, dict[str, Any]]:
        args = {k: v for k, v in request.args.items()
                if k in ("action", "rule", "provider", "since", "until", "limit") and v.strip()}
        filt = DeadFilter(action=_text_param("action", 200), rule=_text_param("rule", 200),
                          provider=_text_param("provider", 100), since=_ts_param("since", request.args.get("since")),
                          until=_ts_param("until", request.args.get("until")), limit=_limit_param())
        return filt, args

    @bp.get("/dead")
    def dead() -> Response:
        try:
            filt, args = dead_filter()
        except BadFilter as exc:
            return render("dead.html", 400, rows=[], args=dict(request.args), next_url=None, total=0, message=str(exc))
        after = Cursor.decode(request.args.get("cursor"))
        page = state.store.browse_dead(filt, after)
        total = state.store.count_dead_matching(filt)
        next_url = url_for(".dead", **args, cursor=page.next.encode()) if page.next else None
        return render("dead.html", rows=page.rows, args=args, next_url=next_url, total=total,
                      message=_done_message())

    @bp.get("/dead/replay")
    def replay_confirm() -> Response:
        try:
            filt, args = dead_filter()
        except BadFilter as exc:
            return render("dead.html", 400, rows=[], args=dict(request.args), next_url=None, total=0, message=str(exc))
        # pinned to now, so what dies after this page is not swept up by the confirmation
        asof = time.time()
        if filt.until is None or filt.until > asof:
            filt.until = asof
        count = state.store.count_dead_matching(filt)
        pinned = {"action": filt.action or "", "rule": filt.rule or "", "provider": filt.provider or "",
                  "since_ts": "" if filt.since is None else repr(filt.since), "asof": repr(filt.until)}
        return render("replay_confirm.html", count=count, args=args, pinned=pinned)

    @bp.post("/dead/replay")
    def replay_many() -> BaseResponse:
        form = request.form
        try:
            since = form.get("since_ts")
            filt = DeadFilter(action=form.get("action") or None, rule=form.get("rule") or None,
                              provider=form.get("provider") or None, since=float(since) if since else None,
                              until=float(form.get("asof", "")))
        except ValueError:
            return render("dead.html", 400, rows=[], args={}, next_url=None, total=0,
                          message="the confirmation form was incomplete; start again from the dead letters")
        count = state.store.replay_dead_matching(filt)
        logs.info("dead letters replayed from the inspector", count=count, action=filt.action, rule=filt.rule,
                  provider=filt.provider)
        args: dict[str, Any] = {k: v for k, v in form.items() if k in ("action", "rule", "provider") and v}
        return redirect(url_for(".dead", **args, done="bulk", n=count), code=303)

    @bp.post("/jobs/<int:job_id>/replay")
    def replay_one(job_id: int) -> BaseResponse:
        count = state.store.replay(str(job_id))
        logs.info("dead letter replayed from the inspector", job_id=job_id, count=count)
        done = "requeued" if count else "not-dead"
        event_id = request.form.get("event_id", "")
        if _EVENT_ID.match(event_id):
            return redirect(url_for(".event", event_id=event_id, done=done, job=job_id), code=303)
        return redirect(url_for(".dead", done=done, job=job_id), code=303)

    # ------------------------------------------------------------------ try a payload

    @bp.route("/try", methods=["GET", "POST"])
    def try_payload() -> Response:
        config = state.config
        form = request.form if request.method == "POST" else request.args
        provider = form.get("provider") or (sorted(config.providers)[0] if config.providers else "")
        body_text = form.get("payload", "")
        headers_text = form.get("headers", "")
        context: dict[str, Any] = {"provider": provider, "payload": body_text, "headers_text": headers_text,
                                   "result": None, "invalid": None, "explained": None}
        if request.method == "GET":
            return render("try.html", **context)
        if provider not in config.providers:
            context["invalid"] = ["no provider of that name in the rules file"]
            return render("try.html", 400, **context)
        headers: dict[str, str] = {}
        for n, line in enumerate(headers_text.splitlines(), 1):
            if not line.strip():
                continue
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                context["invalid"] = [f"headers line {n}: write Name: value"]
                return render("try.html", 400, **context)
            headers[name.strip().lower()] = value.strip()
        body = body_text.replace("\r\n", "\n").encode("utf-8")
        if len(body) > config.settings.max_body_bytes:
            context["invalid"] = [f"the payload is larger than max_body_bytes ({config.settings.max_body_bytes})"]
            return render("try.html", 413, **context)
        # the dry run of `router test --explain`: its code, so the page and the command agree
        found = explain(config, provider, body, headers, {})
        if not found.valid:
            context["invalid"] = [f"{'.'.join(str(x) for x in d['loc'])}: {d['msg']} ({d['type']})"
                                  for d in found.violations] or [found.error or "invalid payload"]
            return render("try.html", found.status, **context)
        sources = rule_sources(config)
        context["explained"] = found.to_dict()
        context["result"] = {
            "matched": found.matched,
            "why": [{"rule": name, "when": sources.get(name), "known": True} for name in found.matched],
            "actions": [{"rule": a.rule, "action": a.action, "type": a.type, "error": a.error,
                         "text": None if a.rendered is None else pretty(a.rendered)} for a in found.actions],
        }
        return render("try.html", **context)

    return bp


__all__ = ["blueprint", "rule_sources"]
