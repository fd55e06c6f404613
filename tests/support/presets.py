"""Requests as each provider preset's sender makes them, signed the way its documentation says.

The signing here is written from the providers' documents, independently of router/providers/;
the tests also sign with the providers' official libraries, so a shared misreading would show.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

GH_SECRET = "gh-test-secret-0b6f"
STRIPE_SECRET = "whsec_stripe-test-secret-4c1d"
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SW_OLD = "whsec_" + base64.b64encode(b"standard-webhooks-old-key-32byte").decode()
SW_NEW = "whsec_" + base64.b64encode(b"standard-webhooks-new-key-32byte").decode()
SW_OTHER = "whsec_" + base64.b64encode(b"standard-webhooks-not-our-key!!!").decode()
SHOPIFY_SECRET = "shopify-test-secret-9e2a"
TWILIO_TOKEN = "twilio-test-token-77c3"
TWILIO_URL = "https://hooks.example.com/twilio/sms"
FORM = "application/x-www-form-urlencoded"

PRESET_ENV = {
    "GH_SECRET": GH_SECRET,
    "STRIPE_SECRET": STRIPE_SECRET,
    "SLACK_SECRET": SLACK_SECRET,
    "SW_OLD": SW_OLD,
    "SW_NEW": SW_NEW,
    "SHOPIFY_SECRET": SHOPIFY_SECRET,
    "TWILIO_TOKEN": TWILIO_TOKEN,
}


@dataclass
class Req:
    """One request as a provider would send it: path, raw body, headers, raw query string."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    query: str = ""

    def without(self, name: str) -> Req:
        return replace(self, headers={k: v for k, v in self.headers.items() if k.lower() != name.lower()})

    def with_header(self, name: str, value: str) -> Req:
        return replace(self, headers={**self.without(name).headers, name: value})

    def with_body(self, body: bytes) -> Req:
        return replace(self, body=body)


def now() -> int:
    return int(time.time())


def uid() -> str:
    return secrets.token_hex(8)


def hmac256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def jbytes(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


# --------------------------------------------------------------------------- GitHub


def github_body() -> bytes:
    return jbytes({"ref": "refs/heads/main", "repository": {"id": 1, "name": "r", "full_name": "o/r"},
                   "sender": {"login": "octocat", "id": 1}})


def github(body: bytes | None = None, *, secret: str = GH_SECRET, event: str = "push", delivery: str | None = None,
           path: str = "/hooks/gh") -> Req:
    body = github_body() if body is None else body
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return Req(path, body, {"Content-Type": "application/json", "X-GitHub-Event": event,
                            "X-GitHub-Delivery": delivery or uid(), "X-Hub-Signature-256": sig})


# --------------------------------------------------------------------------- Stripe


def stripe_body(event_id: str | None = None, type_: str = "payment_intent.succeeded") -> bytes:
    return jbytes({"id": event_id or "evt_" + uid(), "object": "event", "type": type_, "created": now(),
                   "data": {"object": {"id": "pi_1", "object": "payment_intent", "amount": 2000}}})


def stripe_sig(body: bytes, ts: int, secret: str = STRIPE_SECRET) -> str:
    return hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def stripe(body: bytes | None = None, *, ts: int | None = None, secret: str = STRIPE_SECRET) -> Req:
    body = stripe_body() if body is None else body
    ts = now() if ts is None else ts
    return Req("/hooks/st", body, {"Content-Type": "application/json",
                                   "Stripe-Signature": f"t={ts},v1={stripe_sig(body, ts, secret)}"})


# --------------------------------------------------------------------------- Slack


def slack_event_body(event_id: str | None = None) -> bytes:
    return jbytes({"token": "x", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
                   "event_id": event_id or "Ev" + uid(), "event_time": now(),
                   "event": {"type": "app_mention", "text": "<@U1> deploy", "user": "U2"}})


SLACK_COMMAND = (b"token=xyz&team_id=T1&channel_id=C1&user_id=U1&command=%2Fdeploy&text=prod+now"
                 b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1%2F1%2Fx&trigger_id=1.2.3")


def slack_interaction_body() -> bytes:
    payload = {"type": "block_actions", "user": {"id": "U1"}, "actions": [{"action_id": "approve", "value": "42"}]}
    return urlencode({"payload": json.dumps(payload)}).encode()


def slack(body: bytes | None = None, *, ts: int | None = None, secret: str = SLACK_SECRET,
          content_type: str | None = None) -> Req:
    body = slack_event_body() if body is None else body
    ts = now() if ts is None else ts
    sig = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    ctype = content_type or ("application/json" if body.startswith(b"{") else FORM)
    return Req("/hooks/sl", body, {"Content-Type": ctype, "X-Slack-Request-Timestamp": str(ts),
                                   "X-Slack-Signature": sig})


# --------------------------------------------------------------------------- Standard Webhooks


def sw_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sw_body() -> bytes:
    return jbytes({"type": "user.created", "timestamp": "2026-12-01T22:00:00Z", "data": {"id": "u_1"}})


def sw_sig(secret: str, msg_id: str, ts: int, body: bytes) -> str:
    return "v1," + base64.b64encode(hmac256(sw_key(secret), f"{msg_id}.{ts}.".encode() + body)).decode()


def standard_webhooks(body: bytes | None = None, *, ts: int | None = None, secrets_: tuple[str, ...] = (SW_NEW,),
                      msg_id: str | None = None, prefix: str = "webhook-") -> Req:
    body = sw_body() if body is None else body
    ts = now() if ts is None else ts
    msg_id = msg_id or "msg_" + uid()
    signature = " ".join(sw_sig(s, msg_id, ts, body) for s in secrets_)
    return Req("/hooks/sw", body, {"Content-Type": "application/json", f"{prefix}id": msg_id,
                                   f"{prefix}timestamp": str(ts), f"{prefix}signature": signature})


# --------------------------------------------------------------------------- Shopify


def shopify_body() -> bytes:
    return jbytes({"id": 820982911946154508, "admin_graphql_api_id": "gid://shopify/Order/820982911946154508",
                   "email": "jon@example.com", "total_price": "10.00"})


def shopify(body: bytes | None = None, *, secret: str = SHOPIFY_SECRET, webhook_id: str | None = None) -> Req:
    body = shopify_body() if body is None else body
    sig = base64.b64encode(hmac256(secret.encode(), body)).decode()
    return Req("/hooks/sh", body, {"Content-Type": "application/json", "X-Shopify-Topic": "orders/create",
                                   "X-Shopify-Webhook-Id": webhook_id or uid(), "X-Shopify-Hmac-Sha256": sig,
                                   "X-Shopify-Shop-Domain": "shop.myshopify.com"})


# --------------------------------------------------------------------------- Twilio


def twilio_params() -> dict[str, str]:
    return {"AccountSid": "AC" + "0" * 32, "MessageSid": "SM" + uid() * 2, "From": "+15550001111",
            "To": "+15550002222", "Body": "STOP sending me texts", "ApiVersion": "2010-04-01"}


def twilio_sig(url: str, params: dict[str, str], token: str = TWILIO_TOKEN) -> str:
    text = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), text.encode(), hashlib.sha1).digest()).decode()


def twilio(params: dict[str, str] | None = None, *, query: str = "", url: str = TWILIO_URL,
           token: str = TWILIO_TOKEN) -> Req:
    params = twilio_params() if params is None else params
    signed_url = url + ("?" + query if query else "")
    return Req("/twilio/sms", urlencode(params).encode(), {"Content-Type": FORM,
                                                             "X-Twilio-Signature": twilio_sig(signed_url, params, token)},
               query)


def twilio_json(body: bytes, *, token: str = TWILIO_TOKEN, body_hash: str | None = None) -> Req:
    query = "bodySHA256=" + (body_hash or hashlib.sha256(body).hexdigest())
    return Req("/twilio/sms", body, {"Content-Type": "application/json",
                                     "X-Twilio-Signature": twilio_sig(f"{TWILIO_URL}?{query}", {}, token)}, query)
