"""Provider presets end to end, against one real `router serve` with every preset configured.

For each preset: one valid request and a table of mutations of it (the body, each header, a
timestamp outside the tolerance, another secret, rotation); a fresh request signed by the
provider's official library; form bodies, Slack's URL verification, deduplication by the
provider's delivery id, and `$event` / `event_type`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from urllib.parse import urlencode

import pytest
import requests
from support import Downstream, RouterServer, ServedRouter, assert_clean_log, scrape, wait_until
from support.presets import (
    FORM,
    GH_SECRET,
    PRESET_ENV,
    SHOPIFY_SECRET,
    SLACK_COMMAND,
    SLACK_SECRET,
    STRIPE_SECRET,
    SW_NEW,
    SW_OLD,
    SW_OTHER,
    TWILIO_TOKEN,
    TWILIO_URL,
    Req,
    github,
    now,
    shopify,
    slack,
    slack_event_body,
    slack_interaction_body,
    standard_webhooks,
    stripe,
    stripe_body,
    stripe_sig,
    sw_body,
    twilio,
    twilio_json,
    twilio_params,
    twilio_sig,
    uid,
)

RULES = """
version: 1
providers:
  gh: {type: github, secret: "${GH_SECRET}"}
  gh-nodedupe: {type: github, secret: "${GH_SECRET}", dedupe: off}
  gh-ownkey: {type: github, secret: "${GH_SECRET}", dedupe: {key: "{{ payload.ref }}", window: 1h}}
  st: {type: stripe, secret: "${STRIPE_SECRET}"}
  sl: {type: slack, signing_secret: "${SLACK_SECRET}"}
  sw: {type: standard-webhooks, secret: ["${SW_OLD}", "${SW_NEW}"]}
  sh: {type: shopify, secret: "${SHOPIFY_SECRET}"}
  tw: {type: twilio, auth_token: "${TWILIO_TOKEN}", url: "https://hooks.example.com/twilio/sms", paths: [/twilio/sms]}
  tw-vector: {type: twilio, auth_token: "12345", url: "https://mycompany.com/myapp.php", paths: [/myapp.php]}
actions:
  seen:
    type: forward
    url: "${DOWNSTREAM}/seen"
    headers: {X-Event-Type: "{{ event_type }}"}
    body: '{"event_type": {{ event_type | tojson }}, "payload": {{ payload | tojson }}}'
  archive: {type: file, path: "{{ provider }}.jsonl"}
rules:
  - {name: gh-push, provider: [gh, gh-nodedupe, gh-ownkey], when: {$event: push}, actions: [seen]}
  - {name: st-paid, provider: st, when: {$event: payment_intent.succeeded}, actions: [seen]}
  - {name: sl-mention, provider: sl, when: {$event: app_mention}, actions: [seen]}
  - {name: sl-deploy, provider: sl, when: {$event: /deploy, text: {startswith: prod}}, actions: [seen]}
  - {name: sl-approve, provider: sl, when: {$event: block_actions}, actions: [seen]}
  - {name: sw-user, provider: sw, when: {$event: user.created}, actions: [seen]}
  - {name: sh-order, provider: sh, when: {$event: orders/create}, actions: [seen]}
  - {name: tw-stop, provider: tw, when: {Body: {startswith: STOP}}, actions: [seen, archive]}
"""


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, module_downstream: Downstream) -> Iterator[RouterServer]:
    """`router serve` with every preset configured: the one server of this module."""
    server = ServedRouter(tmp_path_factory.mktemp("presets"), RULES, workers=2,
                          env={**PRESET_ENV, "DOWNSTREAM": module_downstream.url})
    with server:
        yield server


def send(router: RouterServer, req: Req) -> requests.Response:
    url = router.url + req.path + ("?" + req.query if req.query else "")
    return requests.post(url, data=req.body, headers=req.headers, timeout=15)


# --------------------------------------------------------------------------- the mutation table

def _body(req: Req) -> Req:
    return req.with_body(req.body.replace(b"}", b' , "x": 1}', 1) if b"}" in req.body else req.body + b"&x=1")


def _resign(fn: Callable[..., Req], **kw: object) -> Callable[[Req], Req]:
    return lambda req: fn(req.body, **kw)


OLD, NEW = -400, 400  # seconds from now: outside the default 5m tolerance either way, by a wide margin

CASES: list[tuple[str, Callable[[], Req], Callable[[Req], Req], int]] = [
    # GitHub
    ("github-valid", github, lambda r: r, 200),
    ("github-body", github, _body, 401),
    ("github-no-signature", github, lambda r: r.without("X-Hub-Signature-256"), 401),
    ("github-no-prefix", github, lambda r: r.with_header("X-Hub-Signature-256", r.headers["X-Hub-Signature-256"][7:]),
     401),
    ("github-not-hex", github, lambda r: r.with_header("X-Hub-Signature-256", "sha256=zz"), 401),
    ("github-sha1-only", github, lambda r: r.without("X-Hub-Signature-256").with_header(
        "X-Hub-Signature", "sha1=" + hashlib.sha1(r.body).hexdigest()), 401),
    ("github-other-secret", lambda: github(secret="not-" + GH_SECRET), lambda r: r, 401),
    # Stripe
    ("stripe-valid", stripe, lambda r: r, 200),
    ("stripe-body", stripe, _body, 401),
    ("stripe-no-signature", stripe, lambda r: r.without("Stripe-Signature"), 401),
    ("stripe-no-v1", stripe, lambda r: r.with_header("Stripe-Signature", r.headers["Stripe-Signature"].split(",")[0]),
     401),
    ("stripe-timestamp-changed", stripe, lambda r: r.with_header(
        "Stripe-Signature", r.headers["Stripe-Signature"].replace("t=", "t=1", 1)), 401),
    ("stripe-old", lambda: stripe(ts=now() + OLD), lambda r: r, 401),
    ("stripe-future", lambda: stripe(ts=now() + NEW), lambda r: r, 401),
    ("stripe-other-secret", lambda: stripe(secret="whsec_other"), lambda r: r, 401),
    ("stripe-rolled-secret-two-v1", lambda: stripe(secret="whsec_other"), lambda r: r.with_header(
        "Stripe-Signature", r.headers["Stripe-Signature"] + ",v1=" + stripe_sig(
            r.body, int(r.headers["Stripe-Signature"].split(",")[0][2:]))), 200),
    ("stripe-v0-ignored", stripe, lambda r: r.with_header(
        "Stripe-Signature", r.headers["Stripe-Signature"].replace("v1=", "v0=")), 401),
    # Slack
    ("slack-valid", slack, lambda r: r, 200),
    ("slack-body", slack, _body, 401),
    ("slack-no-signature", slack, lambda r: r.without("X-Slack-Signature"), 401),
    ("slack-no-timestamp", slack, lambda r: r.without("X-Slack-Request-Timestamp"), 401),
    ("slack-timestamp-changed", slack, lambda r: r.with_header(
        "X-Slack-Request-Timestamp", str(int(r.headers["X-Slack-Request-Timestamp"]) - 1)), 401),
    ("slack-signature-version", slack, lambda r: r.with_header(
        "X-Slack-Signature", "v1=" + r.headers["X-Slack-Signature"][3:]), 401),
    ("slack-old", lambda: slack(ts=now() + OLD), lambda r: r, 401),
    ("slack-future", lambda: slack(ts=now() + NEW), lambda r: r, 401),
    ("slack-other-secret", lambda: slack(secret="not-" + SLACK_SECRET), lambda r: r, 401),
    ("slack-form-valid", lambda: slack(SLACK_COMMAND), lambda r: r, 200),
    ("slack-form-body", lambda: slack(SLACK_COMMAND), _body, 401),
    # Standard Webhooks
    ("sw-valid", standard_webhooks, lambda r: r, 200),
    ("sw-body", standard_webhooks, _body, 401),
    ("sw-no-id", standard_webhooks, lambda r: r.without("webhook-id"), 401),
    ("sw-id-changed", standard_webhooks, lambda r: r.with_header("webhook-id", "msg_other"), 401),
    ("sw-no-timestamp", standard_webhooks, lambda r: r.without("webhook-timestamp"), 401),
    ("sw-timestamp-changed", standard_webhooks, lambda r: r.with_header(
        "webhook-timestamp", str(int(r.headers["webhook-timestamp"]) - 1)), 401),
    ("sw-no-signature", standard_webhooks, lambda r: r.without("webhook-signature"), 401),
    ("sw-signature-version", standard_webhooks, lambda r: r.with_header(
        "webhook-signature", r.headers["webhook-signature"].replace("v1,", "v2,")), 401),
    ("sw-old", lambda: standard_webhooks(ts=now() + OLD), lambda r: r, 401),
    ("sw-future", lambda: standard_webhooks(ts=now() + NEW), lambda r: r, 401),
    ("sw-other-secret", lambda: standard_webhooks(secrets_=(SW_OTHER,)), lambda r: r, 401),
    ("sw-rotation-old-secret", lambda: standard_webhooks(secrets_=(SW_OLD,)), lambda r: r, 200),
    ("sw-rotation-both-listed", lambda: standard_webhooks(secrets_=(SW_OTHER, SW_NEW)), lambda r: r, 200),
    ("svix-headers", lambda: standard_webhooks(prefix="svix-"), lambda r: r, 200),
    ("svix-body", lambda: standard_webhooks(prefix="svix-"), _body, 401),
    # Shopify
    ("shopify-valid", shopify, lambda r: r, 200),
    ("shopify-body", shopify, _body, 401),
    ("shopify-no-signature", shopify, lambda r: r.without("X-Shopify-Hmac-Sha256"), 401),
    ("shopify-hex-not-base64", shopify, lambda r: r.with_header(
        "X-Shopify-Hmac-Sha256", hashlib.sha256(r.body).hexdigest()), 401),
    ("shopify-other-secret", lambda: shopify(secret="not-" + SHOPIFY_SECRET), lambda r: r, 401),
    # Twilio
    ("twilio-valid", twilio, lambda r: r, 200),
    ("twilio-body", twilio, _body, 401),
    ("twilio-no-signature", twilio, lambda r: r.without("X-Twilio-Signature"), 401),
    ("twilio-query-added", twilio, lambda r: Req(r.path, r.body, r.headers, "x=1"), 401),
    ("twilio-query-valid", lambda: twilio(query="tenant=a%20b&x=1"), lambda r: r, 200),
    ("twilio-query-changed", lambda: twilio(query="tenant=a%20b&x=1"), lambda r: Req(r.path, r.body, r.headers,
                                                                                   "tenant=a+b&x=1"), 401),
    ("twilio-default-port", lambda: twilio(url=TWILIO_URL.replace(".com/", ".com:443/")), lambda r: r, 200),
    ("twilio-other-url", lambda: twilio(url="https://elsewhere.example.com/twilio/sms"), lambda r: r, 401),
    ("twilio-other-token", lambda: twilio(token="not-" + TWILIO_TOKEN), lambda r: r, 401),
    ("twilio-json-valid", lambda: twilio_json(b'{"Body": "STOP"}'), lambda r: r, 200),
    ("twilio-json-body", lambda: twilio_json(b'{"Body": "STOP"}'), lambda r: r.with_body(b'{"Body": "GO"}'), 401),
    ("twilio-json-hash-wrong", lambda: twilio_json(b'{"Body": "STOP"}', body_hash="0" * 64), lambda r: r, 401),
    ("twilio-too-many-query-fields", twilio, lambda r: Req(r.path, r.body, r.headers, "&".join(["a"] * 1500)), 401),
    ("stripe-too-many-signatures", stripe, lambda r: r.with_header(
        "Stripe-Signature", r.headers["Stripe-Signature"] + ",v1=00" * 40), 401),
    ("sw-too-many-signatures", standard_webhooks, lambda r: r.with_header(
        "webhook-signature", r.headers["webhook-signature"] + " v1,AAAA" * 40), 401),
    ("twilio-json-without-hash", lambda: twilio_json(b'{"Body": "STOP"}'), lambda r: Req(
        r.path, r.body, {**r.headers, "X-Twilio-Signature": twilio_sig(TWILIO_URL, {})}), 401),
]


@pytest.mark.parametrize(("build", "mutate", "status"), [pytest.param(b, m, s, id=i) for i, b, m, s in CASES])
def test_mutations_of_a_valid_request(router: RouterServer, build: Callable[[], Req], mutate: Callable[[Req], Req],
                                      status: int) -> None:
    req = mutate(build())
    before = router.event_count()
    resp = send(router, req)
    assert resp.status_code == status, resp.text
    if status == 401:
        assert resp.json()["error"] == "unauthorized"
        assert router.event_count() == before  # nothing stored
        for name, value in req.headers.items():  # no signature echoed
            if "signature" in name.lower() or "hmac" in name.lower():
                longest = max(re.split(r"[,= ]", value), key=len)
                assert longest[:12] not in resp.text
    else:
        assert resp.json()["deliveries"] >= 1, resp.json()  # authentic, parsed, and routed by $event


def test_every_case_table_covers_every_preset() -> None:
    from router.providers import PROVIDER_TYPES

    presets = {"github", "stripe", "slack", "standard-webhooks", "shopify", "twilio"}
    assert presets <= set(PROVIDER_TYPES)
    prefixes = {case[0].split("-")[0] for case in CASES}
    assert {"github", "stripe", "slack", "sw", "shopify", "twilio"} <= prefixes


# --------------------------------------------------------------------------- official libraries


def test_stripe_library_signed_request(router: RouterServer) -> None:
    import stripe as stripe_lib
    body = stripe_body()
    header = stripe_lib.WebhookSignature.generate_signature_header(body.decode(), STRIPE_SECRET)
    resp = send(router, Req("/hooks/st", body, {"Content-Type": "application/json", "Stripe-Signature": header}))
    assert resp.status_code == 200, resp.text
    assert resp.json()["matched"] == ["st-paid"]


def test_slack_sdk_signed_request(router: RouterServer) -> None:
    from slack_sdk.signature import SignatureVerifier

    body, ts = slack_event_body(), str(now())
    sig = SignatureVerifier(SLACK_SECRET).generate_signature(timestamp=ts, body=body)
    resp = send(router, Req("/hooks/sl", body, {"Content-Type": "application/json",
                                                "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig}))
    assert resp.status_code == 200, resp.text
    assert resp.json()["matched"] == ["sl-mention"]


@pytest.mark.parametrize("secret", [SW_OLD, SW_NEW])
def test_standardwebhooks_library_signed_request(router: RouterServer, secret: str) -> None:
    from standardwebhooks.webhooks import Webhook

    body, msg_id, ts = sw_body(), "msg_" + uid(), datetime.now(timezone.utc)
    sig = Webhook(secret).sign(msg_id=msg_id, timestamp=ts, data=body.decode())
    resp = send(router, Req("/hooks/sw", body, {"Content-Type": "application/json", "webhook-id": msg_id,
                                                "webhook-timestamp": str(int(ts.timestamp())),
                                                "webhook-signature": sig}))
    assert resp.status_code == 200, resp.text
    assert resp.json()["matched"] == ["sw-user"]


def test_twilio_library_signed_request(router: RouterServer) -> None:
    from twilio.request_validator import RequestValidator

    params = twilio_params()
    sig = RequestValidator(TWILIO_TOKEN).compute_signature(TWILIO_URL + "?Tenant=a", params)
    resp = send(router, Req("/twilio/sms", urlencode(params).encode(),
                            {"Content-Type": FORM, "X-Twilio-Signature": sig}, "Tenant=a"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["matched"] == ["tw-stop"]


def test_twilio_published_vector_through_the_router(router: RouterServer) -> None:
    """twilio-python's own test vector: token 12345, https://mycompany.com/myapp.php?foo=1&bar=2."""
    params = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309", "To": "+18005551212",
              "Caller": "+14158675309"}
    req = Req("/myapp.php", urlencode(params).encode(),
              {"Content-Type": FORM, "X-Twilio-Signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8="}, "foo=1&bar=2")
    assert send(router, req).status_code == 200
    assert send(router, Req(req.path, req.body, req.headers, "foo=1&bar=3")).status_code == 401


# --------------------------------------------------------------------------- Slack's URL verification


def test_slack_url_verification_is_answered_and_not_stored(router: RouterServer) -> None:
    challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P-" + uid()
    body = json.dumps({"token": "x", "challenge": challenge, "type": "url_verification"}).encode()
    events = router.event_count()
    handshakes = scrape(router.url).value("router_events_received_total", provider="sl", outcome="handshake")
    resp = send(router, slack(body))
    assert resp.status_code == 200
    assert resp.json() == {"challenge": challenge}
    assert router.event_count() == events
    wait_until(lambda: scrape(router.url).value("router_events_received_total", provider="sl",
                                                outcome="handshake") == handshakes + 1, what="the handshake counted")

    forged = send(router, slack(body, secret="not-the-signing-secret"))
    assert forged.status_code == 401
    assert challenge not in forged.text


# --------------------------------------------------------------------------- form bodies


def _delivered(downstream: Downstream, event_id: str) -> dict:
    [rec] = downstream.wait_for(1, path="/seen", where=lambda r: r.headers.get("x-router-event-id") == event_id)
    return {"event_type": rec.headers.get("x-event-type"), **rec.json()}


def test_slack_slash_command_form(router: RouterServer, module_downstream: Downstream) -> None:
    resp = send(router, slack(SLACK_COMMAND))
    assert resp.status_code == 200, resp.text
    assert resp.json()["matched"] == ["sl-deploy"]  # $event is the command; `text` a form field
    event_id = resp.json()["event_id"]
    assert router.event_body(event_id) == SLACK_COMMAND  # the raw bytes are what is stored
    seen = _delivered(module_downstream, event_id)
    assert seen["event_type"] == "/deploy"
    assert seen["payload"]["command"] == "/deploy"
    assert seen["payload"]["text"] == "prod now"
    assert seen["payload"]["response_url"] == "https://hooks.slack.com/commands/T1/1/x"


def test_slack_interaction_payload_field_is_json(router: RouterServer, module_downstream: Downstream) -> None:
    body = slack_interaction_body()
    resp = send(router, slack(body))
    assert resp.status_code == 200, resp.text
    assert resp.json()["matched"] == ["sl-approve"]
    seen = _delivered(module_downstream, resp.json()["event_id"])
    assert seen["payload"]["payload"]["actions"][0]["value"] == "42"


def test_twilio_form_is_routed_on_its_fields(router: RouterServer, module_downstream: Downstream) -> None:
    req = twilio()
    resp = send(router, req)
    assert resp.status_code == 200, resp.text
    assert resp.json()["matched"] == ["tw-stop"]
    event_id = resp.json()["event_id"]
    assert router.event_body(event_id) == req.body
    seen = _delivered(module_downstream, event_id)
    assert seen["payload"]["Body"] == "STOP sending me texts"
    assert seen["payload"]["AccountSid"] == "AC" + "0" * 32

    archive = router.workdir / "var" / "files" / "tw.jsonl"

    def archived() -> dict | None:
        lines = archive.read_text("utf-8").splitlines() if archive.exists() else []
        return next((line for line in map(json.loads, lines) if line["event_id"] == event_id), None)

    line = wait_until(archived, what="the event's line in the archive")
    assert line["payload"]["Body"] == "STOP sending me texts"  # the form, as an object, in the file too


@pytest.mark.parametrize(("body", "why"), [
    (b"command=%2Fdeploy&command=%2Fother", "twice"),
    (b"payload=%7Bnot+json", "payload"),
    (b"text=%ff", "UTF-8"),
    (b"command", "name=value"),
], ids=["duplicate-field", "payload-not-json", "escape-not-utf8", "not-pairs"])
def test_a_bad_form_is_400_after_authentication(router: RouterServer, body: bytes, why: str) -> None:
    resp = send(router, slack(body))
    assert resp.status_code == 400, resp.text
    assert why in resp.json()["message"]


def test_a_form_to_a_provider_that_sends_json_is_400(router: RouterServer) -> None:
    req = github(b"payload=%7B%7D").with_header("Content-Type", FORM)
    assert send(router, req).status_code == 400


def test_a_json_body_labelled_as_a_form_is_not_sniffed(router: RouterServer) -> None:
    resp = send(router, slack(slack_event_body(), content_type=FORM))
    assert resp.status_code == 400  # parsed as the form it claims to be, and refused


# --------------------------------------------------------------------------- deduplication by default


@pytest.mark.parametrize("make_pair", [
    pytest.param(lambda: (lambda d: (github(delivery=d), github(delivery=d)))(uid()), id="github-delivery"),
    pytest.param(lambda: (lambda b: (stripe(b), stripe(b, ts=now() - 1)))(stripe_body()), id="stripe-event-id"),
    pytest.param(lambda: (lambda b: (slack(b), slack(b, ts=now() - 1)))(slack_event_body()), id="slack-event-id"),
    pytest.param(lambda: (lambda m: (standard_webhooks(msg_id=m), standard_webhooks(msg_id=m, ts=now() - 1)))(
        "msg_" + uid()), id="webhook-id"),
    pytest.param(lambda: (lambda m: (standard_webhooks(msg_id=m, prefix="svix-"), standard_webhooks(msg_id=m)))(
        "msg_" + uid()), id="svix-id-is-webhook-id"),
    pytest.param(lambda: (lambda w: (shopify(webhook_id=w), shopify(webhook_id=w)))(uid()), id="shopify-webhook-id"),
])
def test_a_redelivery_is_a_duplicate(router: RouterServer, make_pair: Callable[[], tuple[Req, Req]]) -> None:
    first, again = make_pair()
    one = send(router, first).json()
    two = send(router, again).json()
    assert one["deliveries"] == 1 and "duplicate" not in one
    assert two == {"event_id": one["event_id"], "duplicate": True, "matched": one["matched"], "deliveries": 0}


def test_dedupe_off_keeps_every_delivery(router: RouterServer) -> None:
    delivery = uid()
    one = send(router, github(delivery=delivery, path="/hooks/gh-nodedupe")).json()
    two = send(router, github(delivery=delivery, path="/hooks/gh-nodedupe")).json()
    assert "duplicate" not in two and two["event_id"] != one["event_id"]


def test_a_providers_own_dedupe_replaces_the_default(router: RouterServer) -> None:
    ref = "refs/heads/" + uid()
    body = json.dumps({"ref": ref, "sender": {"login": "o", "id": 1}}).encode()
    other = json.dumps({"ref": ref + "-other", "sender": {"login": "o", "id": 1}}).encode()
    delivery = uid()
    one = send(router, github(body, delivery=delivery, path="/hooks/gh-ownkey")).json()
    # the same delivery id with another key is new; another delivery id with the same key is not
    assert "duplicate" not in send(router, github(other, delivery=delivery, path="/hooks/gh-ownkey")).json()
    again = send(router, github(body, path="/hooks/gh-ownkey")).json()
    assert again.get("duplicate") is True and again["event_id"] == one["event_id"]


# --------------------------------------------------------------------------- what is kept


def test_signature_headers_are_not_stored(router: RouterServer) -> None:
    for req in (github(), stripe(), slack(), standard_webhooks(), standard_webhooks(prefix="svix-"), shopify(),
                twilio()):
        resp = send(router, req)
        assert resp.status_code == 200, resp.text
        event = router.store().event(resp.json()["event_id"])
        assert event is not None
        stored = {k.lower() for k in event.headers}
        for name in ("x-hub-signature-256", "stripe-signature", "x-slack-signature", "webhook-signature",
                     "svix-signature", "x-shopify-hmac-sha256", "x-twilio-signature"):
            assert name not in stored


def test_schema_still_applies(router: RouterServer) -> None:
    body = json.dumps({"id": "evt_" + uid(), "object": "event"}).encode()  # no type, no data
    resp = send(router, stripe(body))
    assert resp.status_code == 422
    assert {"loc": ["body", "type"], "msg": "field required", "type": "missing"} in resp.json()["detail"]


def test_zz_the_log_is_clean_and_holds_no_secret(router: RouterServer) -> None:
    """Defined last, so it runs after every request above has been logged."""
    assert_clean_log(router)
    text = router.log_text()
    for name, secret in PRESET_ENV.items():
        assert secret.removeprefix("whsec_") not in text, name
