"""`forward`: send the event to a URL, raw bytes and Content-Type unchanged unless a body is templated.

Optionally signed in the Standard Webhooks form (`webhook-id`, `webhook-timestamp`,
`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`) so the receiver can verify us.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from typing import Any

from router.actions import http
from router.actions.base import Action, Delivery
from router.config.fields import (
    Ctx,
    Field,
    PathT,
    as_bool,
    as_duration,
    as_secret,
    as_str,
    as_structured_template,
    as_template_map,
    as_url,
    check_mapping,
    convert_fields,
    one_of,
)
from router.errors import DeliveryError
from router.templates import StructuredTemplate, Template, TemplateError


def standard_webhooks_key(secret: str) -> bytes:
    """`whsec_` then base64, as the Standard Webhooks specification has it."""
    value = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    return base64.b64decode(value, validate=True)


def standard_webhooks_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": f"v1,{signature}"}


def _as_sign(ctx: Ctx, value: Any, path: PathT) -> bytes | None:
    node = check_mapping(ctx, value, path, "sign")
    if node is None:
        return None
    out = convert_fields(ctx, node, path, {"secret": Field(as_secret, required=True)})
    secret = out["secret"]
    if secret is None:
        return None
    try:
        key = standard_webhooks_key(secret.reveal())
    except (binascii.Error, ValueError):
        ctx.error(path + ("secret",), "sign.secret must be 'whsec_' followed by base64 (Standard Webhooks form)")
        return None
    if len(key) < 16:
        ctx.error(path + ("secret",), "sign.secret is shorter than 16 bytes; use at least 24 random bytes")
        return None
    return key


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # a header name (RFC 9110 5.1)


def _as_headers(ctx: Ctx, value: Any, path: PathT) -> dict[str, Template] | None:
    """Header templates; a name that is no header name, or a constant value holding a control
    character, is refused here rather than at every delivery."""
    headers = as_template_map(ctx, value, path)
    if headers is None:
        return None
    for name, template in headers.items():
        if not _TOKEN.match(name):
            ctx.error(path + (name,), f"'{name}' is not a header name (letters, digits and !#$%&'*+-.^_`|~ only)",
                      at_key=True)
        elif template.is_constant:
            bad = http.forbidden_header_char({name: template.source})
            if bad is not None:
                ctx.error(path + (name,), f"the value would contain {bad[1]}, which no header may hold")
    return headers


class ForwardAction(Action):
    type_name = "forward"
    options = {
        "url": Field(as_url, required=True),
        "method": Field(one_of("POST", "PUT", "PATCH", "GET", "DELETE"), default="POST"),
        "headers": Field(_as_headers, default={}),
        "body": Field(as_structured_template),
        "content_type": Field(as_str),
        "timeout": Field(as_duration, default=10.0),
        "sign": Field(_as_sign),
        "follow_redirects": Field(as_bool, default=False),
    }

    def __init__(self, name: str, options: dict[str, Any], settings: Any):
        super().__init__(name, options, settings)
        self.url: str = options["url"]
        self.method: str = options["method"] or "POST"
        self.headers: dict[str, Template] = options["headers"] or {}
        self.body: Template | StructuredTemplate | None = options["body"]
        self.content_type: str | None = options["content_type"]
        self.sign_key: bytes | None = options["sign"]
        self.follow_redirects = bool(options["follow_redirects"])

    def _request(self, d: Delivery) -> tuple[dict[str, Any], bytes]:
        # the template context costs a parse of the payload: only when something is templated
        templated = self.body is not None or any(not t.is_constant for t in self.headers.values())
        context = d.context() if templated else {}
        try:
            headers = {name: t.render(context) for name, t in self.headers.items()}
            if self.body is None:
                body = d.body
                content_type = d.content_type or "application/json"
            elif isinstance(self.body, StructuredTemplate):
                body = json.dumps(self.body.render(context), ensure_ascii=False).encode("utf-8")
                content_type = "application/json"
            else:
                body = self.body.render(context).encode("utf-8")
                content_type = "application/json"
        except TemplateError as exc:
            raise DeliveryError(str(exc), retryable=False) from None
        bad = http.forbidden_header_char(headers)
        if bad is not None:
            raise DeliveryError(f"header {bad[0]!r} would contain {bad[1]}; refused", retryable=False)
        out: dict[str, str | bytes] = {"Content-Type": self.content_type or content_type, "User-Agent": http.USER_AGENT}
        out.update(headers)
        out.update(
            {
                "X-Router-Event-Id": d.event_id,
                "X-Router-Provider": d.provider,
                "X-Router-Rule": d.rule,
                "X-Router-Attempt": str(d.attempt),
            }
        )
        for name, value in out.items():
            if isinstance(value, str) and not value.isascii():
                out[name] = value.encode("utf-8")  # sent as bytes, not mangled
        if (self.body is None and self.content_type is None and d.content_type and not d.content_type.isascii()
                and not any(name.lower() == "content-type" for name in headers)):
            # the server's WSGI layer decoded the request's header bytes as latin-1 (PEP 3333):
            # encoding it back gives the bytes the provider sent, unchanged
            out["Content-Type"] = d.content_type.encode("latin-1", "replace")
        if self.sign_key is not None:
            # the id is stable across retries, so a receiver can deduplicate on it
            digest = hashlib.sha256(f"{d.rule}\0{self.name}".encode()).hexdigest()[:12]
            out.update(standard_webhooks_headers(self.sign_key, f"{d.event_id}_{digest}", int(time.time()), body))
        return out, body

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        headers, body = self._request(delivery)
        headers = {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in headers.items()}
        if self.sign_key is not None:
            headers["webhook-signature"] = "v1,<computed at delivery>"
        for name in self.headers:
            if headers.get(name) and self.headers[name].is_constant:
                headers[name] = "<configured>"
        return {"method": self.method, "url": self.url, "headers": headers, "body": body.decode("utf-8", "replace")}

    def deliver(self, delivery: Delivery) -> int | None:
        headers, body = self._request(delivery)
        response = http.send(
            self.method, self.url, headers=headers, data=body, timeout=self.timeout, follow_redirects=self.follow_redirects
        )
        http.raise_for_status(response, self.settings.retry_after_cap)
        delivery.response = http.snippet(response)
        return response.status
