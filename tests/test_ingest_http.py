"""The HTTP interface (README "How an event flows" and "Providers") against a real gunicorn with two workers and a real SQLite store.

One server serves every built-in provider type; each test sends one request, mutated in one way from a
valid one, and checks the status, the JSON answer and what reached the store.
"""

from __future__ import annotations

import json
import uuid

import pytest
from support import (
    HMAC_SECRET,
    SECRET_ENV,
    UNITARY_SECRET,
    VIDEOID_TOKEN,
    RouterServer,
    dumps,
    indent,
    sign_hmac,
    sign_panjaya,
    sign_unitary,
)

MAX_BODY = 8192
DEDUPE_BRIEF_WINDOW = 1

ORDER_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["order_id", "amount"],
    "properties": {
        "order_id": {"type": "string"},
        "amount": {"type": "number"},
        "customer": {"type": "object", "properties": {"email": {"type": "string"}}},
        "items": {
            "type": "array",
            "items": {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}},
        },
    },
}

HMAC_PROVIDERS = {
    # name: (header, algorithm, encoding, prefix)
    "github": ("X-Hub-Signature-256", "sha256", "hex", "sha256="),
    "shop512": ("X-Shop-Signature", "sha512", "base64", ""),
    "legacy-sha1": ("X-Hub-Signature", "sha1", "hex", "sha1="),
}


def rules_yaml(public_pem: str) -> str:
    hmac_providers = "\n".join(
        f"""  {name}:
    type: hmac
    secret: "${{HMAC_SECRET}}"
    header: {header}
    algorithm: {alg}
    encoding: {enc}
    prefix: "{prefix}"
    schema: schemas/order.json"""
        for name, (header, alg, enc, prefix) in HMAC_PROVIDERS.items()
    )
    return f"""\
version: 1
settings:
  store: var/router.db
  files_root: var/files
  max_body_bytes: {MAX_BODY}
  durability: process
  trusted_proxies: [127.0.0.2/32]   # the test client (127.0.0.1) is NOT a trusted proxy
providers:
  dubbing:
    type: panjaya
    public_key: |
{indent(public_pem, 6)}
    paths: [/callback]
  dubbing-bundled:
    type: panjaya
  moderation:
    type: unitary
    secret: "${{UNITARY_SECRET}}"
  moderation-nosecret:
    type: unitary
  videoid:
    type: namirial-oneshot
    token: "${{VIDEOID_TOKEN}}"
    paths: [/videoid]
  videoid-office:
    type: namirial-oneshot
    token: "${{VIDEOID_TOKEN}}"
    allow_from: [10.0.0.0/8]
  videoid-local:
    type: namirial-oneshot
    allow_from: [127.0.0.0/8, "::1/128"]
{hmac_providers}
  orders:
    type: none
    schema: schemas/order.json
  open:
    type: none
  deduped:
    type: none
    dedupe: {{key: "{{{{ payload.id }}}}", window: 1h}}
  deduped-brief:
    type: none
    dedupe: {{key: "{{{{ payload.id }}}}", window: {DEDUPE_BRIEF_WINDOW}s}}
actions:
  archive:
    type: file
    path: "{{{{ provider }}}}/{{{{ event_id }}}}.jsonl"
  audit:
    type: file
    path: "audit/{{{{ provider }}}}.jsonl"
  raw-copy:
    type: file
    format: raw
    path: "raw/{{{{ provider }}}}.log"
rules:
  - name: dub-failures
    provider: [dubbing, dubbing-bundled]
    when: {{event: {{in: [asset_failed, version_failed, version_generate_failed]}}}}
    actions: [archive, audit]
  - name: dub-generated
    provider: dubbing
    when: {{event: version_generated}}
    actions: [archive]
  - name: high-risk
    provider: [moderation, moderation-nosecret]
    when:
      all:
        - data.is_error: false
        - any:
            - data.result.policy_categories[*].risk_level: HIGH
            - data.result.garm_categories[*].risk_level: HIGH
    actions: [archive]
  - name: moderation-errors
    provider: [moderation, moderation-nosecret]
    when: {{data.is_error: true}}
    actions: [audit]
  - name: videoid-status
    provider: [videoid, videoid-office, videoid-local]
    when:
      request.status: {{in: [VIDEOPENDING, VIDEOREVIEW, ENROLLREADY]}}
    actions: [archive]
  - name: orders-big
    provider: [orders, github, shop512, legacy-sha1]
    when: {{amount: {{gte: 100}}}}
    actions: [archive, audit, raw-copy]
  - name: orders-all
    provider: [orders, github, shop512, legacy-sha1]
    actions: [audit]
  - name: deduped-all
    provider: [deduped, deduped-brief]
    actions: [archive, audit]
  - name: open-flagged
    provider: open
    when: {{flag: true}}
    actions: [archive]
"""


@pytest.fixture(scope="module")
def server(start_router, panjaya_public_pem) -> RouterServer:
    return start_router(
        rules_yaml(panjaya_public_pem),
        env=SECRET_ENV,
        files={"schemas/order.json": json.dumps(ORDER_SCHEMA)},
        name="ingest",
    )


# --------------------------------------------------------------------------- payloads


def uid() -> str:
    return uuid.uuid4().hex[:12]


def panjaya_event(event: str = "version_generated", **extra: object) -> dict:
    version = event.startswith("version")
    return {
        "event": event,
        "asset_id": f"asset-{uid()}",
        "version_id": f"ver-{uid()}" if version else None,
        "version_locale": "es-ES" if version else None,
        **extra,
    }


def unitary_success(categories_key: str = "policy_categories", risk: str = "HIGH") -> dict:
    return {
        "data": {
            "job_id": str(uuid.uuid4()),
            "callback_url": "https://hooks.example.com/hooks/moderation?filename=clip.mp4",
            "is_error": False,
            "result": {
                categories_key: [
                    {"name": "ARMS_AMMO", "description": "Arms & Ammunition", "risk_level": risk},
                    {"name": "DEATH_INJURY_MILITARY", "description": "Death, Injury or Military Conflict",
                     "risk_level": "MEDIUM"},
                ],
                "metadata": {"width": 720, "height": 480, "fps": 30, "duration": 11.6, "seconds_processed": 11},
                "url": "https://cdn.example.com/clip.mp4",
            },
        }
    }


def unitary_error() -> dict:
    return {
        "data": {
            "job_id": str(uuid.uuid4()),
            "callback_url": "https://hooks.example.com/hooks/moderation",
            "is_error": True,
            "result": {"error": "Failed to decode video."},
        }
    }


def namirial_event(status: str = "VIDEOREVIEW") -> dict:
    return {
        "event_type": "REQUEST_UPDATED",
        "sent_at": "20250715083633",
        "request": {
            "status": status,
            "profile": "PFnubeNC",
            "registration_authority": 7,
            "scratchcard": "2678100",
            "pk": int(uuid.uuid4().int % 10_000_000),
        },
        "certificates": [],
    }


def order(amount: float = 150, **extra: object) -> dict:
    return {"order_id": f"o-{uid()}", "amount": amount, **extra}


# --------------------------------------------------------------------------- assertions


def assert_accepted(resp, server: RouterServer, body: bytes, matched: list[str], provider: str) -> dict:
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert set(answer) >= {"event_id", "matched", "deliveries"}, answer
    assert isinstance(answer["event_id"], str) and answer["event_id"]
    assert answer["matched"] == matched
    assert not answer.get("duplicate", False)
    # the answer comes only after the commit: the event and its jobs are already in the store
    assert server.event_body(answer["event_id"]) == body
    assert server.event_provider(answer["event_id"]) == provider
    assert len(server.jobs_for(answer["event_id"])) == answer["deliveries"]
    return answer


def assert_error(resp, status: int) -> dict:
    assert resp.status_code == status, f"{resp.status_code} {resp.text}"
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    answer = resp.json()
    assert isinstance(answer.get("error"), str) and answer["error"], answer
    assert isinstance(answer.get("message"), str) and answer["message"], answer
    return answer


def assert_rejected(resp, server: RouterServer, body: bytes, status: int, events_before: int,
                    jobs_before: int) -> dict:
    answer = assert_error(resp, status)
    assert server.events_with_body(body) == 0
    assert server.event_count() == events_before
    assert server.job_count() == jobs_before
    return answer


def counts(server: RouterServer) -> tuple[int, int]:
    return server.event_count(), server.job_count()


# --------------------------------------------------------------------------- health


def test_healthz(server):
    assert server.get("/healthz").status_code == 200


def test_readyz_when_rules_loaded_and_store_writable(server):
    assert server.get("/readyz").status_code == 200


# --------------------------------------------------------------------------- panjaya (ES256)


@pytest.mark.parametrize("raw", [False, True], ids=["der", "raw-r-s"])
def test_panjaya_signed_event_is_accepted_and_routed(server, panjaya_key, raw):
    body = dumps(panjaya_event("version_failed"))
    resp = server.post("/hooks/dubbing", body,
                       headers={"X-Signature": sign_panjaya(body, panjaya_key, raw=raw),
                                "Content-Type": "application/json"})
    answer = assert_accepted(resp, server, body, ["dub-failures"], "dubbing")
    assert answer["deliveries"] == 2
    assert server.jobs_for(answer["event_id"]) == [("dub-failures", "archive"), ("dub-failures", "audit")]


def test_panjaya_asset_failed_with_null_version_fields(server, panjaya_key):
    body = dumps(panjaya_event("asset_failed"))
    resp = server.post("/hooks/dubbing", body, headers={"X-Signature": sign_panjaya(body, panjaya_key),
                                                        "X-Signature-Algorithm": "ES256"})
    assert_accepted(resp, server, body, ["dub-failures"], "dubbing")


def test_panjaya_signature_checked_over_raw_bytes_not_reserialised_json(server, panjaya_key):
    # odd spacing and key order: any re-serialisation would break the signature
    body = b'{ "version_locale":"fr-FR" ,  "event" : "version_generated",\n"asset_id":"a-' + uid().encode() + \
        b'", "version_id": "v1"}'
    resp = server.post("/hooks/dubbing", body, headers={"X-Signature": sign_panjaya(body, panjaya_key)})
    assert_accepted(resp, server, body, ["dub-generated"], "dubbing")


def test_panjaya_extra_path_routes_to_provider(server, panjaya_key):
    body = dumps(panjaya_event("version_generated"))
    resp = server.post("/callback", body, headers={"X-Signature": sign_panjaya(body, panjaya_key)})
    assert_accepted(resp, server, body, ["dub-generated"], "dubbing")


def test_panjaya_unknown_extra_fields_tolerated(server, panjaya_key):
    body = dumps(panjaya_event("version_generated", project={"id": 7, "labels": ["x"]}, new_field=True))
    resp = server.post("/hooks/dubbing", body, headers={"X-Signature": sign_panjaya(body, panjaya_key)})
    assert_accepted(resp, server, body, ["dub-generated"], "dubbing")


def _tamper(body: bytes) -> bytes:
    return body.replace(b"version_failed", b"version_ready")


@pytest.mark.parametrize(
    "case",
    ["tampered-body", "wrong-key", "missing-header", "empty-header", "not-hex", "truncated", "raw-wrong-length",
     "signature-of-other-body"],
)
def test_panjaya_bad_signature_401_nothing_stored(server, panjaya_key, other_key, case):
    original = dumps(panjaya_event("version_failed"))
    body = original
    good = sign_panjaya(original, panjaya_key)
    headers: dict[str, str] = {"X-Signature": good}
    if case == "tampered-body":
        body = _tamper(original)
    elif case == "wrong-key":
        headers["X-Signature"] = sign_panjaya(original, other_key)
    elif case == "missing-header":
        del headers["X-Signature"]
    elif case == "empty-header":
        headers["X-Signature"] = ""
    elif case == "not-hex":
        headers["X-Signature"] = "zz" * 36
    elif case == "truncated":
        headers["X-Signature"] = good[:-10]
    elif case == "raw-wrong-length":
        headers["X-Signature"] = sign_panjaya(original, panjaya_key, raw=True)[:-2]
    elif case == "signature-of-other-body":
        headers["X-Signature"] = sign_panjaya(dumps(panjaya_event("version_failed")), panjaya_key)
    before = counts(server)
    resp = server.post("/hooks/dubbing", body, headers=headers)
    answer = assert_rejected(resp, server, body, 401, *before)
    if headers.get("X-Signature"):
        assert headers["X-Signature"] not in resp.text  # errors never echo signatures
    assert answer["error"]


@pytest.mark.parametrize("case", ["missing", "garbage", "signed-by-a-key-that-is-not-panjayas"])
def test_panjaya_bundled_key_provider_loads_and_refuses(server, panjaya_key, case):
    """`type: panjaya` with no public_key uses Panjaya's published key; nothing we can sign passes it."""
    body = dumps(panjaya_event("asset_failed"))
    headers = {}
    if case == "garbage":
        headers["X-Signature"] = "deadbeef" * 18
    elif case == "signed-by-a-key-that-is-not-panjayas":
        headers["X-Signature"] = sign_panjaya(body, panjaya_key)
    before = counts(server)
    assert_rejected(server.post("/hooks/dubbing-bundled", body, headers=headers), server, body, 401, *before)


def test_panjaya_schema_violation_after_valid_signature_is_422(server, panjaya_key):
    body = dumps({"event": "not_an_event", "asset_id": "a-1"})
    before = counts(server)
    resp = server.post("/hooks/dubbing", body, headers={"X-Signature": sign_panjaya(body, panjaya_key)})
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert any(d["loc"] == ["body", "event"] for d in detail), detail
    assert counts(server) == before


def test_panjaya_missing_required_field_is_422(server, panjaya_key):
    body = dumps({"event": "version_generated"})  # no asset_id
    resp = server.post("/hooks/dubbing", body, headers={"X-Signature": sign_panjaya(body, panjaya_key)})
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert len(detail) >= 1
    assert all(d["loc"][0] == "body" for d in detail)
    assert any("asset_id" in d["loc"] or "asset_id" in d["msg"] for d in detail), detail


# --------------------------------------------------------------------------- unitary (HMAC-SHA256, base64)


@pytest.mark.parametrize("categories_key", ["policy_categories", "garm_categories"])
def test_unitary_signed_success_both_category_names(server, categories_key):
    body = dumps(unitary_success(categories_key))
    resp = server.post("/hooks/moderation", body, headers={"X-Hub-Signature-256": sign_unitary(body, UNITARY_SECRET)},
                       params={"filename": "clip.mp4"})
    answer = assert_accepted(resp, server, body, ["high-risk"], "moderation")
    assert answer["deliveries"] == 1


def test_unitary_error_payload_routes_to_error_rule(server):
    body = dumps(unitary_error())
    resp = server.post("/hooks/moderation", body, headers={"X-Hub-Signature-256": sign_unitary(body, UNITARY_SECRET)})
    assert_accepted(resp, server, body, ["moderation-errors"], "moderation")


def test_unitary_low_risk_matches_nothing_but_is_stored(server):
    body = dumps(unitary_success("policy_categories", risk="LOW"))
    resp = server.post("/hooks/moderation", body, headers={"X-Hub-Signature-256": sign_unitary(body, UNITARY_SECRET)})
    answer = assert_accepted(resp, server, body, [], "moderation")
    assert answer["deliveries"] == 0
    assert server.jobs_for(answer["event_id"]) == []


def test_unitary_signature_over_raw_bytes_with_whitespace(server):
    pretty = json.dumps(unitary_error(), indent=3).encode() + b"\n"
    resp = server.post("/hooks/moderation", pretty,
                       headers={"X-Hub-Signature-256": sign_unitary(pretty, UNITARY_SECRET)})
    assert_accepted(resp, server, pretty, ["moderation-errors"], "moderation")


def test_unitary_unknown_extra_fields_tolerated(server):
    payload = unitary_success()
    payload["data"]["new_field"] = {"x": 1}
    payload["data"]["result"]["extra"] = [1, 2]
    payload["top_level_extra"] = "yes"
    body = dumps(payload)
    resp = server.post("/hooks/moderation", body, headers={"X-Hub-Signature-256": sign_unitary(body, UNITARY_SECRET)})
    assert_accepted(resp, server, body, ["high-risk"], "moderation")


@pytest.mark.parametrize("case", ["wrong-secret", "missing-header", "tampered", "reserialised", "hex-not-base64"])
def test_unitary_bad_signature_401(server, case):
    pretty = json.dumps(unitary_success(), indent=2).encode()
    body = pretty
    headers = {"X-Hub-Signature-256": sign_unitary(pretty, UNITARY_SECRET)}
    if case == "wrong-secret":
        headers["X-Hub-Signature-256"] = sign_unitary(pretty, "not-the-secret")
    elif case == "missing-header":
        headers = {}
    elif case == "tampered":
        body = pretty.replace(b'"HIGH"', b'"LOW"')
    elif case == "reserialised":  # signed over compact JSON, sent pretty-printed
        headers["X-Hub-Signature-256"] = sign_unitary(dumps(json.loads(pretty)), UNITARY_SECRET)
    elif case == "hex-not-base64":
        headers["X-Hub-Signature-256"] = sign_hmac(pretty, UNITARY_SECRET, "sha256", "hex")
    before = counts(server)
    resp = server.post("/hooks/moderation", body, headers=headers)
    assert_rejected(resp, server, body, 401, *before)
    assert UNITARY_SECRET not in resp.text
    if headers:
        assert headers["X-Hub-Signature-256"] not in resp.text


def test_unitary_without_secret_accepts_unsigned(server):
    body = dumps(unitary_success("garm_categories"))
    resp = server.post("/hooks/moderation-nosecret", body)
    assert_accepted(resp, server, body, ["high-risk"], "moderation-nosecret")


def test_unitary_valid_signature_but_not_json_is_400(server):
    """Authenticity is checked before parsing: a correctly signed non-JSON body is 400, not 401."""
    body = b"this is not json"
    before = counts(server)
    resp = server.post("/hooks/moderation", body, headers={"X-Hub-Signature-256": sign_unitary(body, UNITARY_SECRET)})
    assert_rejected(resp, server, body, 400, *before)


@pytest.mark.parametrize("payload", [{}, {"data": "not-an-object"}], ids=["no-data", "data-not-object"])
def test_unitary_schema_violation_422(server, payload):
    body = dumps(payload)
    before = counts(server)
    resp = server.post("/hooks/moderation", body, headers={"X-Hub-Signature-256": sign_unitary(body, UNITARY_SECRET)})
    assert resp.status_code == 422, resp.text
    for entry in resp.json()["detail"]:
        assert entry["loc"][0] == "body"
    assert counts(server) == before


# --------------------------------------------------------------------------- namirial one-shot (token, allow_from)


def test_namirial_token_in_query(server):
    body = dumps(namirial_event("VIDEOREVIEW"))
    resp = server.post("/hooks/videoid", body, params={"token": VIDEOID_TOKEN})
    assert_accepted(resp, server, body, ["videoid-status"], "videoid")


def test_namirial_token_in_header(server):
    body = dumps(namirial_event("ENROLLREADY"))
    resp = server.post("/hooks/videoid", body, headers={"X-Router-Token": VIDEOID_TOKEN})
    assert_accepted(resp, server, body, ["videoid-status"], "videoid")


def test_namirial_extra_path_with_token(server):
    body = dumps(namirial_event("VIDEOPENDING"))
    resp = server.post("/videoid", body, params={"token": VIDEOID_TOKEN})
    assert_accepted(resp, server, body, ["videoid-status"], "videoid")


def test_namirial_unmatched_status_still_stored(server):
    body = dumps(namirial_event("ISSUED"))
    resp = server.post("/hooks/videoid", body, params={"token": VIDEOID_TOKEN})
    answer = assert_accepted(resp, server, body, [], "videoid")
    assert answer["deliveries"] == 0


def test_namirial_unknown_fields_tolerated(server):
    payload = namirial_event("VIDEOREVIEW")
    payload["previous_status"] = "VIDEOPENDING"
    payload["date"] = "2025-07-15T08:36:33Z"
    payload["request"]["brand_new"] = {"k": "v"}
    body = dumps(payload)
    resp = server.post("/hooks/videoid", body, params={"token": VIDEOID_TOKEN})
    assert_accepted(resp, server, body, ["videoid-status"], "videoid")


@pytest.mark.parametrize(
    "where,token",
    [("query", "wrong-token"), ("header", "wrong-token"), ("none", None), ("query", ""),
     ("query", VIDEOID_TOKEN + "x"), ("query", VIDEOID_TOKEN[:-1])],
    ids=["query-wrong", "header-wrong", "missing", "query-empty", "longer", "prefix"],
)
def test_namirial_wrong_or_missing_token_401(server, where, token):
    body = dumps(namirial_event())
    kw: dict = {}
    if where == "query":
        kw["params"] = {"token": token}
    elif where == "header":
        kw["headers"] = {"X-Router-Token": token}
    before = counts(server)
    resp = server.post("/hooks/videoid", body, **kw)
    assert_rejected(resp, server, body, 401, *before)
    assert VIDEOID_TOKEN not in resp.text


@pytest.mark.parametrize(
    "path,kw",
    [
        ("/hooks/moderation", {"headers": {"X-Hub-Signature-256": "AAAA"}}),
        ("/hooks/moderation", {}),
        ("/hooks/videoid", {}),
        ("/hooks/dubbing", {"headers": {"X-Signature": "00"}}),
    ],
    ids=["unitary-bad-sig", "unitary-no-sig", "namirial-no-token", "panjaya-bad-sig"],
)
def test_authenticity_checked_before_parsing(server, path, kw):
    """A body that is not even JSON still gets 401 when it is not authentic: nothing is parsed first."""
    body = b"\xff not json"
    before = counts(server)
    assert_rejected(server.post(path, body, **kw), server, body, 401, *before)


def test_allow_from_refuses_address_403_before_token(server):
    """Peer 127.0.0.1 is outside 10.0.0.0/8: 403 even with the right token (the allow-list comes first)."""
    body = dumps(namirial_event())
    before = counts(server)
    resp = server.post("/hooks/videoid-office", body, params={"token": VIDEOID_TOKEN})
    assert_rejected(resp, server, body, 403, *before)


def test_allow_from_refusal_wins_over_bad_token(server):
    body = dumps(namirial_event())
    before = counts(server)
    resp = server.post("/hooks/videoid-office", body, params={"token": "wrong"})
    assert_rejected(resp, server, body, 403, *before)


def test_forged_x_forwarded_for_from_untrusted_peer_is_ignored(server):
    """The peer is not in trusted_proxies, so its X-Forwarded-For claims nothing."""
    body = dumps(namirial_event())
    before = counts(server)
    resp = server.post("/hooks/videoid-office", body, params={"token": VIDEOID_TOKEN},
                       headers={"X-Forwarded-For": "10.1.2.3"})
    assert_rejected(resp, server, body, 403, *before)


def test_x_forwarded_for_from_untrusted_peer_cannot_refuse_an_allowed_peer(server):
    body = dumps(namirial_event("VIDEOREVIEW"))
    resp = server.post("/hooks/videoid-local", body, headers={"X-Forwarded-For": "203.0.113.9"})
    assert_accepted(resp, server, body, ["videoid-status"], "videoid-local")


# --------------------------------------------------------------------------- generic hmac


@pytest.mark.parametrize("name", list(HMAC_PROVIDERS))
def test_hmac_provider_valid_signature(server, name):
    header, alg, enc, prefix = HMAC_PROVIDERS[name]
    body = dumps(order(250))
    resp = server.post(f"/hooks/{name}", body, headers={header: sign_hmac(body, HMAC_SECRET, alg, enc, prefix)})
    answer = assert_accepted(resp, server, body, ["orders-big", "orders-all"], name)
    assert answer["deliveries"] == 4
    assert server.jobs_for(answer["event_id"]) == [
        ("orders-all", "audit"), ("orders-big", "archive"), ("orders-big", "audit"), ("orders-big", "raw-copy")]


@pytest.mark.parametrize("name", list(HMAC_PROVIDERS))
@pytest.mark.parametrize("case", ["wrong-secret", "missing", "tampered", "wrong-algorithm", "wrong-encoding"])
def test_hmac_provider_bad_signature_401(server, name, case):
    header, alg, enc, prefix = HMAC_PROVIDERS[name]
    signed = dumps(order(250))
    body = signed
    value = sign_hmac(signed, HMAC_SECRET, alg, enc, prefix)
    if case == "wrong-secret":
        value = sign_hmac(signed, "other-secret", alg, enc, prefix)
    elif case == "tampered":
        body = signed.replace(b"250", b"999")
    elif case == "wrong-algorithm":
        value = sign_hmac(signed, HMAC_SECRET, "md5" if alg != "md5" else "sha256", enc, prefix)
    elif case == "wrong-encoding":
        value = sign_hmac(signed, HMAC_SECRET, alg, "base64" if enc == "hex" else "hex", prefix)
    headers = {} if case == "missing" else {header: value}
    before = counts(server)
    resp = server.post(f"/hooks/{name}", body, headers=headers)
    assert_rejected(resp, server, body, 401, *before)
    assert HMAC_SECRET not in resp.text


def test_hmac_provider_schema_enforced_after_signature(server):
    header, alg, enc, prefix = HMAC_PROVIDERS["github"]
    body = dumps({"order_id": 5})
    before = counts(server)
    resp = server.post("/hooks/github", body, headers={header: sign_hmac(body, HMAC_SECRET, alg, enc, prefix)})
    assert resp.status_code == 422, resp.text
    assert counts(server) == before


# --------------------------------------------------------------------------- none, unmatched, raw storage


def test_unmatched_event_is_stored_and_answered_200(server):
    body = dumps({"flag": False, "n": uid()})
    resp = server.post("/hooks/open", body)
    answer = assert_accepted(resp, server, body, [], "open")
    assert answer["deliveries"] == 0


def test_matched_event_on_none_provider(server):
    body = dumps({"flag": True, "n": uid()})
    answer = assert_accepted(server.post("/hooks/open", body), server, body, ["open-flagged"], "open")
    assert answer["deliveries"] == 1


def test_body_stored_byte_for_byte(server):
    body = '{"n": "' + uid() + '",   "text": "caf\u00e9 \u2603",\t"flag": false}\r\n'
    raw = body.encode("utf-8")
    answer = assert_accepted(server.post("/hooks/open", raw), server, raw, [], "open")
    assert server.event_body(answer["event_id"]) == raw


def test_content_type_is_not_required_to_be_json(server):
    body = dumps({"flag": True, "n": uid()})
    resp = server.post("/hooks/open", body, headers={"Content-Type": "text/plain"})
    assert_accepted(resp, server, body, ["open-flagged"], "open")


def test_event_ids_are_unique(server):
    ids = set()
    for _ in range(5):
        body = dumps({"n": uid()})
        resp = server.post("/hooks/open", body)
        assert resp.status_code == 200
        ids.add(resp.json()["event_id"])
    assert len(ids) == 5


# --------------------------------------------------------------------------- 400: not a UTF-8 JSON object


@pytest.mark.parametrize(
    "body",
    [
        b'{"text": "\xff\xfe not utf-8"}',
        b"\xc3\x28",
        b"not json at all",
        b'{"unterminated": ',
        b"",
        b"[1, 2, 3]",
        b'[{"flag": true}]',
        b'"just a string"',
        b"42",
        b"null",
        b"true",
    ],
    ids=["invalid-utf8-in-string", "invalid-utf8", "not-json", "truncated-json", "empty", "array", "array-of-objects",
         "string", "number", "null", "true"],
)
def test_not_a_utf8_json_object_is_400(server, body):
    before = counts(server)
    resp = server.post("/hooks/open", body, headers={"Content-Type": "application/json"})
    assert_rejected(resp, server, body, 400, *before)


# --------------------------------------------------------------------------- 422: schema


def test_schema_violations_422_exact_detail_shape(server):
    body = dumps({"order_id": "o-1", "amount": "ten", "customer": {"email": 5}, "items": [{"sku": "a"}, {"sku": 7}]})
    before = counts(server)
    resp = server.post("/hooks/orders", body)
    assert resp.status_code == 422, resp.text
    assert resp.headers.get("Content-Type", "").startswith("application/json")
    answer = resp.json()
    assert set(answer) == {"detail"}
    detail = answer["detail"]
    assert isinstance(detail, list)
    for entry in detail:
        assert set(entry) == {"loc", "msg", "type"}, entry
        assert isinstance(entry["loc"], list) and entry["loc"][0] == "body"
        assert isinstance(entry["msg"], str) and entry["msg"]
        assert isinstance(entry["type"], str) and entry["type"]
    locs = sorted(tuple(map(str, d["loc"])) for d in detail)
    assert locs == sorted([("body", "amount"), ("body", "customer", "email"), ("body", "items", "1", "sku")]), detail
    # list indexes are integers, as in the documented FastAPI-style shape
    assert ["body", "items", 1, "sku"] in [d["loc"] for d in detail]
    assert counts(server) == before


def test_schema_missing_required_422(server):
    body = dumps({"amount": 5})
    resp = server.post("/hooks/orders", body)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert len(detail) == 1
    assert detail[0]["loc"][0] == "body"
    assert "order_id" in detail[0]["loc"] or "order_id" in detail[0]["msg"]


def test_schema_valid_with_unknown_fields_accepted(server):
    body = dumps(order(5, unknown={"nested": [1, 2]}, another="x"))
    answer = assert_accepted(server.post("/hooks/orders", body), server, body, ["orders-all"], "orders")
    assert answer["deliveries"] == 1


# --------------------------------------------------------------------------- 413: size first


def _padded(size: int) -> bytes:
    head = b'{"order_id": "o-pad", "amount": 1, "pad": "'
    tail = b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_body_exactly_at_limit_is_accepted(server):
    body = _padded(MAX_BODY)
    assert len(body) == MAX_BODY
    resp = server.post("/hooks/orders", body)
    assert_accepted(resp, server, body, ["orders-all"], "orders")


@pytest.mark.parametrize(
    "path,kw",
    [
        ("/hooks/orders", {}),
        ("/hooks/dubbing", {}),  # unsigned: size is checked before authenticity
        ("/hooks/videoid-office", {"params": {"token": "wrong"}}),  # refused address: size comes first
        ("/hooks/moderation", {"headers": {"X-Hub-Signature-256": "bogus"}}),
    ],
    ids=["schema", "signed-provider", "allow-list", "hmac"],
)
def test_body_over_limit_is_413_first(server, path, kw):
    body = _padded(MAX_BODY + 1)
    before = counts(server)
    resp = server.post(path, body, **kw)
    assert_rejected(resp, server, body, 413, *before)


def test_chunked_body_over_limit_is_413(server):
    """No Content-Length to trust: the limit must hold while reading."""
    body = _padded(MAX_BODY * 2)

    def chunks():
        for i in range(0, len(body), 1024):
            yield body[i:i + 1024]

    before = counts(server)
    resp = server.post("/hooks/orders", chunks())  # requests sends a generator with Transfer-Encoding: chunked
    assert_rejected(resp, server, body, 413, *before)


# --------------------------------------------------------------------------- dedupe


def test_dedupe_duplicate_within_window(server):
    key = f"evt-{uid()}"
    first_body = dumps({"id": key, "n": 1})
    first = assert_accepted(server.post("/hooks/deduped", first_body), server, first_body, ["deduped-all"], "deduped")
    assert first["deliveries"] == 2
    jobs_before = server.job_count()

    again = server.post("/hooks/deduped", first_body)
    assert again.status_code == 200, again.text
    dup = again.json()
    assert dup["duplicate"] is True
    assert dup["event_id"] == first["event_id"]
    assert dup["matched"] == first["matched"]
    assert dup["deliveries"] == 0
    # the key decides, not the bytes: a retry with a changed body is still the same event
    changed = dumps({"id": key, "n": 2})
    dup2 = server.post("/hooks/deduped", changed).json()
    assert dup2["duplicate"] is True and dup2["event_id"] == first["event_id"] and dup2["deliveries"] == 0

    assert server.job_count() == jobs_before
    assert len(server.jobs_for(first["event_id"])) == 2


def test_dedupe_different_key_is_a_new_event(server):
    a = dumps({"id": f"evt-{uid()}"})
    b = dumps({"id": f"evt-{uid()}"})
    ra = assert_accepted(server.post("/hooks/deduped", a), server, a, ["deduped-all"], "deduped")
    rb = assert_accepted(server.post("/hooks/deduped", b), server, b, ["deduped-all"], "deduped")
    assert ra["event_id"] != rb["event_id"]


def test_dedupe_window_expires(server):
    import time

    body = dumps({"id": f"evt-{uid()}"})
    sent = time.monotonic()
    first = assert_accepted(server.post("/hooks/deduped-brief", body), server, body, ["deduped-all"], "deduped-brief")
    again = server.post("/hooks/deduped-brief", body).json()
    if time.monotonic() - sent < DEDUPE_BRIEF_WINDOW:
        assert again.get("duplicate") is True and again["event_id"] == first["event_id"]
    deadline = sent + DEDUPE_BRIEF_WINDOW + 10
    while True:  # poll: once the window has passed, the same key is a new event
        answer = server.post("/hooks/deduped-brief", body).json()
        if not answer.get("duplicate"):
            break
        assert time.monotonic() < deadline, "still a duplicate long after the window"
        time.sleep(0.1)
    assert time.monotonic() - sent >= DEDUPE_BRIEF_WINDOW * 0.9
    assert answer["event_id"] != first["event_id"] and answer["deliveries"] == 2


def test_no_dedupe_without_configuration(server):
    body = dumps({"flag": True, "id": "same"})
    r1 = server.post("/hooks/open", body).json()
    r2 = server.post("/hooks/open", body).json()
    assert r1["event_id"] != r2["event_id"]
    assert not r2.get("duplicate", False)
    assert r2["deliveries"] == 1


# --------------------------------------------------------------------------- 404 / 405


@pytest.mark.parametrize("path", ["/hooks/nope", "/hooks/Dubbing", "/hooks/"])
def test_unknown_provider_404(server, path):
    body = dumps({"x": 1})
    before = counts(server)
    assert_rejected(server.post(path, body), server, body, 404, *before)


def test_unknown_provider_named_in_utf8(server):
    """The path's bytes are read as UTF-8, as Flask reads them, so the 404 names what was sent."""
    answer = assert_error(server.post("/hooks/d%C3%BCbbing", b"{}"), 404)
    assert answer["error"] == "unknown_provider" and "'dübbing'" in answer["message"], answer


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_on_hook_405(server, method):
    assert_error(server.request(method, "/hooks/open"), 405)


def test_wrong_method_on_extra_path_405(server):
    assert_error(server.get("/callback"), 405)


def test_errors_are_json_for_every_status(server, panjaya_key):
    """One of each error status, all JSON with `error` and `message`."""
    cases = [
        (server.post("/hooks/open", _padded(MAX_BODY + 10)), 413),
        (server.post("/hooks/videoid-office", dumps(namirial_event())), 403),
        (server.post("/hooks/dubbing", dumps(panjaya_event())), 401),
        (server.post("/hooks/open", b"nope"), 400),
        (server.post("/hooks/nope", b"{}"), 404),
        (server.get("/hooks/open"), 405),
    ]
    for resp, status in cases:
        assert_error(resp, status)


# --------------------------------------------------------------------------- the store agrees with the answers


def test_jobs_in_store_equal_deliveries_under_concurrency(server, panjaya_key):
    """Ten concurrent events across both workers: every answer's deliveries is what the store holds."""
    from concurrent.futures import ThreadPoolExecutor

    def send(i: int):
        body = dumps(order(100 + i) if i % 2 else order(1))
        return body, server.post("/hooks/orders", body)

    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(send, range(10)))
    for body, resp in results:
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        expected = 4 if json.loads(body)["amount"] >= 100 else 1
        assert answer["deliveries"] == expected
        assert len(server.jobs_for(answer["event_id"])) == expected
        assert server.event_body(answer["event_id"]) == body


def test_secrets_never_in_server_log(server):
    log = server.log_text()
    for value in (UNITARY_SECRET, HMAC_SECRET, VIDEOID_TOKEN):
        assert value not in log


# --------------------------------------------------------------------------- behind a trusted proxy

PROXIED_RULES = """\
version: 1
settings:
  store: var/router.db
  trusted_proxies: [127.0.0.1/32]
providers:
  office:
    type: namirial-oneshot
    allow_from: [10.0.0.0/8]
actions:
  archive: {type: file, path: "office.jsonl"}
rules:
  - name: all
    actions: [archive]
"""


@pytest.fixture(scope="module")
def proxied(start_router) -> RouterServer:
    return start_router(PROXIED_RULES, name="proxied")


@pytest.mark.parametrize(
    "xff,status",
    [
        ("10.1.2.3", 200),
        ("198.51.100.7", 403),
        (None, 403),  # the proxy itself (127.0.0.1) is not in allow_from
        ("198.51.100.7, 10.1.2.3", 200),  # our proxy appended the real client last
        ("10.1.2.3, 198.51.100.7", 403),  # the client forged the first entry; the proxy saw 198.51.100.7
    ],
    ids=["allowed", "refused", "no-header", "chain-allowed", "forged-leftmost"],
)
def test_x_forwarded_for_from_trusted_proxy(proxied, xff, status):
    body = dumps(namirial_event())
    headers = {"X-Forwarded-For": xff} if xff else {}
    before = counts(proxied)
    resp = proxied.post("/hooks/office", body, headers=headers)
    if status == 200:
        assert_accepted(resp, proxied, body, ["all"], "office")
    else:
        assert_rejected(resp, proxied, body, status, *before)
