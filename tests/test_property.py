"""Property-based: whatever arrives - body, headers, query string, path, method - the router answers
with a documented status, never a 500 or a traceback, and stores an event exactly when it answers 200.

One gunicorn serves every built-in provider type; hypothesis drives it through one requests.Session.
Bodies are drawn from several shapes (random bytes, random JSON, near-valid payloads of each provider),
and the credential is sometimes right, so the later pipeline steps (parse, schema, route) are reached.
"""

from __future__ import annotations

import http.client
import json
import string

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support import (
    DOCUMENTED_STATUSES,
    HMAC_SECRET,
    SECRET_ENV,
    UNITARY_SECRET,
    VIDEOID_TOKEN,
    RouterServer,
    assert_clean_log,
    events_count,
    host_port,
    indent,
    log_size,
    sign_hmac,
    sign_panjaya,
    sign_unitary,
)

MAX_BODY = 4096

ORDER_SCHEMA = {
    "type": "object",
    "required": ["order_id", "amount"],
    "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
}


def rules_yaml(public_pem: str) -> str:
    return f"""\
version: 1
settings:
  max_body_bytes: {MAX_BODY}
  durability: process
providers:
  dubbing:
    type: panjaya
    public_key: |
{indent(public_pem, 6)}
    paths: [/callback]
  moderation: {{type: unitary, secret: "${{UNITARY_SECRET}}"}}
  videoid: {{type: namirial-oneshot, token: "${{VIDEOID_TOKEN}}", paths: [/videoid]}}
  shop:
    type: hmac
    secret: "${{HMAC_SECRET}}"
    header: X-Shop-Signature
    prefix: "sha256="
    schema: schemas/order.json
  open: {{type: none}}
actions:
  archive: {{type: file, path: "{{{{ provider }}}}/{{{{ received_at[:10] }}}}.jsonl"}}
rules:
  - name: dub
    provider: dubbing
    when: {{event: {{in: [asset_failed, version_failed]}}}}
    actions: [archive]
  - name: high-risk
    provider: moderation
    when:
      data.result.policy_categories[*].risk_level: HIGH
    actions: [archive]
  - name: flagged
    when: {{$query.flag: {{exists: true}}}}
    actions: [archive]
"""


@pytest.fixture(scope="module")
def server(start_router, panjaya_public_pem) -> RouterServer:
    return start_router(rules_yaml(panjaya_public_pem), env=SECRET_ENV,
                        files={"schemas/order.json": json.dumps(ORDER_SCHEMA)}, name="property")


@pytest.fixture(scope="module")
def log_start(server) -> int:
    return log_size(server)


PROPERTY_SETTINGS = settings(max_examples=80, deadline=None, derandomize=False,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --------------------------------------------------------------------------- strategies

text = st.text(max_size=20)  # hypothesis text: any code point but surrogates
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(text, inner, max_size=4), max_leaves=12)

PANJAYA_EVENTS = ["asset_failed", "version_ready", "version_failed", "version_generating", "version_generated",
                  "version_generate_failed"]

panjaya_payloads = st.fixed_dictionaries(
    {"event": st.sampled_from(PANJAYA_EVENTS) | text, "asset_id": text},
    optional={"version_id": json_values, "version_locale": json_values, "extra": json_values})
category = st.fixed_dictionaries({"name": text, "risk_level": st.sampled_from(["HIGH", "LOW", "MEDIUM"]) | text})
unitary_payloads = st.fixed_dictionaries({"data": st.fixed_dictionaries(
    {"job_id": text, "is_error": st.booleans(),
     "result": st.fixed_dictionaries({}, optional={"policy_categories": st.lists(category, max_size=3),
                                                   "garm_categories": st.lists(category, max_size=3),
                                                   "error": text})})})
namirial_payloads = st.fixed_dictionaries({
    "event_type": text,
    "sent_at": st.from_regex(r"\A[0-9]{14}\Z") | text,
    "request": st.fixed_dictionaries({"status": text, "pk": st.integers() | text}),
})
order_payloads = st.fixed_dictionaries({"order_id": text | st.integers(), "amount": st.floats(allow_nan=False,
                                        allow_infinity=False) | text})

SHAPED = {"dubbing": panjaya_payloads, "moderation": unitary_payloads, "videoid": namirial_payloads,
          "shop": order_payloads, "open": st.dictionaries(text, json_values, max_size=5)}


def bodies(provider: str) -> st.SearchStrategy[bytes]:
    shaped = SHAPED[provider]
    other_json = st.one_of(json_values, st.dictionaries(text, json_values, max_size=5))
    return st.one_of(
        shaped.map(lambda v: json.dumps(v).encode()),  # near-valid payloads, so parse/schema/route are reached
        shaped.map(lambda v: json.dumps(v, ensure_ascii=False, indent=1).encode()),
        other_json.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=300),
        st.text(max_size=200).map(lambda t: t.encode("utf-8")),
        st.sampled_from([b"", b"{", b"[]", b"null", b'{"a": NaN}', b'{"a": 1, "a": 1}', b"\xff\xfe{}", b"[" * 5000]),
        st.binary(min_size=MAX_BODY + 1, max_size=MAX_BODY + 200),
    )


# header values the HTTP client can send: visible latin-1, inner spaces only
HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF,
                                              blacklist_characters="\x7f\xa0", blacklist_categories=("Cc",)),
                       min_size=1, max_size=60)
HEADER_VALUES = st.lists(HEADER_VALUE, min_size=1, max_size=3).map(" ".join)
HEADER_NAMES = st.sampled_from([
    "X-Signature", "X-Signature-Algorithm", "X-Hub-Signature-256", "X-Shop-Signature", "X-Router-Token",
    "X-Forwarded-For", "Content-Type", "Authorization", "Cookie", "X-Request-Id", "Accept", "Content-Encoding",
]) | st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=20)
HEADERS = st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=5).filter(
    lambda h: not any(k.lower() in ("content-length", "transfer-encoding", "host", "connection", "expect")
                      for k in h))
QUERY = st.lists(st.tuples(st.sampled_from(["token", "flag", "filename"]) | text, text), max_size=4)
RAW_QUERY = st.text(alphabet="%&=+;?/#abcXYZ019", max_size=30)

AUTH_MODES = st.sampled_from(["valid", "valid", "valid", "absent", "garbage", "tampered"])


def credentials(provider: str, body: bytes, mode: str, panjaya_key) -> tuple[dict[str, str], dict[str, str]]:
    """(headers, query) for a provider's credential in the given mode."""
    if mode == "absent" or provider == "open":
        return {}, {}
    signed = body if mode == "valid" else body + b" "  # tampered: a valid signature over other bytes
    if provider == "dubbing":
        sig = sign_panjaya(signed, panjaya_key) if mode != "garbage" else "00" * 70
        return {"X-Signature": sig}, {}
    if provider == "moderation":
        return {"X-Hub-Signature-256": sign_unitary(signed, UNITARY_SECRET) if mode != "garbage" else "x"}, {}
    if provider == "shop":
        return {"X-Shop-Signature": sign_hmac(signed, HMAC_SECRET, prefix="sha256=") if mode != "garbage"
                else "sha256=00"}, {}
    if provider == "videoid":
        token = VIDEOID_TOKEN if mode == "valid" else VIDEOID_TOKEN[:-1]
        return ({"X-Router-Token": token}, {}) if len(body) % 2 else ({}, {"token": token})
    raise AssertionError(provider)


def check_answer(server: RouterServer, response: requests.Response, before: int) -> None:
    event(f"status {response.status_code}")  # see --hypothesis-show-statistics
    assert response.status_code in DOCUMENTED_STATUSES, (response.status_code, response.text[:500])
    after = events_count(server)
    if response.status_code == 200:
        answer = response.json()
        assert server.event_body(answer["event_id"]) is not None, answer
        assert after == before + 1, (before, after, answer)
    else:
        assert after == before, f"answered {response.status_code} but the store grew: {response.text[:300]}"
        if response.status_code == 422:
            assert isinstance(response.json()["detail"], list)
        else:
            body = response.json()
            assert body["error"] and body["message"], body


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("provider", ["dubbing", "moderation", "videoid", "shop", "open"])
@PROPERTY_SETTINGS
@given(data=st.data(), mode=AUTH_MODES, headers=HEADERS, query=QUERY, raw_query=RAW_QUERY, extra_path=st.booleans())
def test_any_request_gets_a_documented_status_and_only_200_stores(server, session, panjaya_key, log_start, provider,
                                                                   data, mode, headers, query, raw_query, extra_path):
    body = data.draw(bodies(provider), label="body")
    auth_headers, auth_query = credentials(provider, body, mode, panjaya_key)
    path = {"dubbing": "/callback", "videoid": "/videoid"}.get(provider) if extra_path else None
    url = server.url + (path or f"/hooks/{provider}")
    if raw_query:
        url += "?" + raw_query
    params = list(query) + list(auth_query.items())
    before = events_count(server)
    response = session.post(url, data=body, headers={**headers, **auth_headers}, params=params, timeout=30)
    check_answer(server, response, before)
    assert_clean_log(server, since=log_start)


HTTP_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "PROPFIND", "FOO"]
PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%"


@PROPERTY_SETTINGS
@given(method=st.sampled_from(HTTP_METHODS),
       prefix=st.sampled_from(["/hooks/", "/hooks/open/", "/", "/callback", "/videoid", "/healthz", "/hooks/%2e%2e/",
                               "//hooks/", "/hooks/open%00", "/metrics/"]),
       rest=st.text(alphabet=PATH_CHARS, max_size=30),
       body=st.binary(max_size=64))
def test_any_path_and_method_gets_a_documented_status(server, log_start, method, prefix, rest, body):
    """Paths and methods sent byte for byte (http.client does not normalise them)."""
    before = events_count(server)
    host, port = host_port(server)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, prefix + rest, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        status, payload = response.status, response.read()
    finally:
        conn.close()
    event(f"status {status}")
    assert status in DOCUMENTED_STATUSES, (method, prefix + rest, status, payload[:300])
    grew = events_count(server) - before
    assert grew in (0, 1)
    if grew:
        assert status == 200 and method == "POST", (method, prefix + rest, status, payload[:300])
    if status != 200 and method != "HEAD":
        assert json.loads(payload)["error"], payload[:300]
    assert_clean_log(server, since=log_start)


def test_no_request_left_a_traceback(server, log_start):
    """Last in the module: the whole run left nothing alarming in the server's log."""
    assert_clean_log(server, since=log_start)


@pytest.mark.parametrize("path", ["/hooks/open/", "/hooks/open//", "/hooks/no-such-provider/"])
def test_post_with_a_trailing_slash_is_never_told_to_use_post(server, session, path):
    """A POST answered `405 {"message": "use POST"}` with `Allow: POST` contradicts itself (RFC 9110
    15.5.6: 405 means the method used is not supported). Extra `paths:` already tolerate a trailing
    slash (POST /videoid/ is routed to its provider), so /hooks/<provider>/ should be routed the same
    way, and an unknown provider is 404 either way."""
    r = session.post(server.url + path, data=b'{"a": 1}', timeout=20)
    assert r.status_code in DOCUMENTED_STATUSES
    assert not (r.status_code == 405 and "POST" in r.headers.get("Allow", "")), (r.status_code, r.text)
    if "no-such-provider" in path:
        assert r.status_code == 404, r.text
