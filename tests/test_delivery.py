"""The `forward` action and the delivery promise (README "Actions" and "Delivery"), end to end.

A real gunicorn (two workers, each with its delivery threads) delivers to real HTTP servers on
loopback. Every case has its own action and downstream path, chosen by the event's `case` field,
so the tests of this module share one router without sharing deliveries.
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from support import (
    FAST_RETRY,
    Reply,
    RouterServer,
    ScriptedServer,
    attempts_of,
    jobs_of,
    post_event,
    refused_url,
    wait_one_settled,
    wait_until,
)

SIGN_SECRET = "whsec_" + base64.b64encode(b"forward-signing-key-for-tests-0123").decode()

RETRYABLE = [408, 425, 429, 500, 502, 503, 504]
PERMANENT = [400, 401, 403, 404, 405, 409, 410, 413, 422]

# A body a careless proxy would change: odd whitespace, CRLF, tabs, escaped and literal non-ASCII,
# key order that is not sorted, a trailing newline.
RAW_BODY = (
    '{ "case" :"raw",\r\n\t"zeta": "caf\u00e9 \u2713 \U0001f600",  "alpha":"\\u00e9\\n",\n'
    '   "nested" : {"b":1,   "a":[ 1 , 2.50 , 1e3 ]}  }\n'
).encode("utf-8")
RAW_CONTENT_TYPE = "application/vnd.example+json; charset=utf-8"


@pytest.fixture(scope="module")
def site() -> ScriptedServer:
    with ScriptedServer() as server:
        yield server


@pytest.fixture(scope="module")
def elsewhere() -> ScriptedServer:
    """A second server, on another port: the target of a redirect that must not be followed."""
    with ScriptedServer() as server:
        yield server


def rules(site: ScriptedServer, elsewhere: ScriptedServer) -> str:
    actions: dict[str, dict] = {
        "raw": {"url": site.url + "/raw"},
        "templated": {
            "url": site.url + "/templated",
            "method": "PUT",
            "headers": {
                "X-Asset": "{{ payload.asset_id }}",
                "X-Trace": "trace-{{ event_id }}",
                "Authorization": "Bearer static-token",
            },
            "body": '{"asset": {{ payload.asset_id | tojson }}, "rule": "{{ rule }}", "n": {{ payload.n }}}',
        },
        "structured": {
            "url": site.url + "/structured",
            "body": {"id": "{{ event_id }}", "who": "{{ payload.who }}", "fixed": [1, "two"]},
        },
        "signed": {"url": site.url + "/signed", "sign": {"secret": SIGN_SECRET}},
        "redirect": {"url": site.url + "/redirect"},
        "flaky": {"url": site.url + "/flaky", "sign": {"secret": SIGN_SECRET}},
        "hang": {"url": site.url + "/hang", "timeout": "500ms"},
        "refused": {"url": refused_url("/nobody")},
        "unicode-header": {"url": site.url + "/unicode-header", "headers": {"X-Title": "{{ payload.title }}"}},
    }
    for status in RETRYABLE + PERMANENT:
        actions[f"status-{status}"] = {"url": f"{site.url}/status/{status}"}
    lines = ["version: 1", "settings:", f"  retry: {FAST_RETRY}", "providers:", "  src: {type: none}", "actions:"]
    for name, options in actions.items():
        options = {"type": "forward", "timeout": "3s", **options}
        lines.append(f"  {name}: {json.dumps(options)}")
    lines.append("rules:")
    for name in actions:
        lines.append(f"  - {{name: {name}, provider: src, when: {{case: {json.dumps(name)}}}, actions: [{name}]}}")
    # a second rule on the raw case, to show X-Router-Rule names the rule that fired
    lines.append("  - {name: raw-again, when: {case: raw}, actions: [raw]}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def router(start_router, site: ScriptedServer, elsewhere: ScriptedServer) -> RouterServer:
    site.script("/redirect", then=Reply(302, "moved", headers={"Location": elsewhere.url + "/landing"}))
    site.script("/hang", Reply(200, "late", delay=3.0))
    for status in RETRYABLE:
        site.script(f"/status/{status}", Reply(status, f"status {status}"))
    for status in PERMANENT:
        site.script(f"/status/{status}", then=Reply(status, f"status {status}"))
    return start_router(rules(site, elsewhere), workers=2, name="forward")


def uid() -> str:
    return uuid.uuid4().hex


# --------------------------------------------------------------------------- what arrives


def test_raw_body_and_content_type_arrive_byte_for_byte(router: RouterServer, site: ScriptedServer) -> None:
    response = router.post("/hooks/src", RAW_BODY, headers={"Content-Type": RAW_CONTENT_TYPE})
    assert response.status_code == 200, response.text
    event_id = response.json()["event_id"]
    assert response.json()["deliveries"] == 2

    got = site.wait_for(2, path="/raw", where=lambda r: r.headers.get("x-router-event-id") == event_id)
    for rec in got:
        assert rec.method == "POST"
        assert rec.body == RAW_BODY
        assert rec.headers["content-type"] == RAW_CONTENT_TYPE
        assert rec.headers["x-router-provider"] == "src"
    assert sorted(r.headers["x-router-rule"] for r in got) == ["raw", "raw-again"]
    assert all(j["state"] == "delivered" for j in _settled(router, event_id, 2))


def test_templated_method_headers_and_body(router: RouterServer, site: ScriptedServer) -> None:
    asset = f'asset "quoted" {uid()}'
    event_id = post_event(router, {"case": "templated", "asset_id": asset, "n": 7})

    [rec] = site.wait_for(path="/templated", where=lambda r: r.headers.get("x-router-event-id") == event_id)
    assert rec.method == "PUT"
    assert rec.headers["x-trace"] == f"trace-{event_id}"
    assert rec.headers["authorization"] == "Bearer static-token"
    assert rec.headers["x-asset"] == asset
    assert rec.headers["content-type"].startswith("application/json")
    assert json.loads(rec.body) == {"asset": asset, "rule": "templated", "n": 7}
    assert rec.headers["x-router-rule"] == "templated"
    assert rec.headers["x-router-provider"] == "src"


def test_structured_body_template_renders_to_json(router: RouterServer, site: ScriptedServer) -> None:
    who = f"<b>{uid()}</b> & {{{{ 7*7 }}}}"  # payload values are data, never rendered again
    event_id = post_event(router, {"case": "structured", "who": who})

    [rec] = site.wait_for(path="/structured", where=lambda r: r.headers.get("x-router-event-id") == event_id)
    assert json.loads(rec.body) == {"id": event_id, "who": who, "fixed": [1, "two"]}
    assert rec.headers["content-type"].startswith("application/json")


def test_signed_delivery_verifies_with_standard_webhooks(router: RouterServer, site: ScriptedServer) -> None:
    event_id = post_event(router, {"case": "signed", "marker": uid()})

    [rec] = site.wait_for(path="/signed", where=lambda r: r.headers.get("x-router-event-id") == event_id)
    assert rec.headers["webhook-signature"].startswith("v1,")
    assert event_id in rec.headers["webhook-id"]
    verified = Webhook(SIGN_SECRET).verify(rec.body, rec.headers)
    assert verified["marker"] == json.loads(rec.body)["marker"]

    wrong = "whsec_" + base64.b64encode(b"some-other-key-of-enough-length!").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(wrong).verify(rec.body, rec.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SIGN_SECRET).verify(rec.body + b" ", rec.headers)


# --------------------------------------------------------------------------- outcomes


def test_redirect_is_not_followed_and_is_permanent(router: RouterServer, site: ScriptedServer,
                                                   elsewhere: ScriptedServer) -> None:
    event_id = post_event(router, {"case": "redirect"})

    job = wait_one_settled(router, event_id)
    assert job["state"] == "dead"
    assert job["attempts"] == 1
    assert job["last_status"] == 302
    assert "redirect" in job["last_error"]
    assert len([r for r in site.to("/redirect") if r.headers.get("x-router-event-id") == event_id]) == 1
    assert elsewhere.requests == []


@pytest.mark.parametrize("status", PERMANENT)
def test_permanent_status_is_dead_lettered_after_one_attempt(router: RouterServer, site: ScriptedServer,
                                                              status: int) -> None:
    event_id = post_event(router, {"case": f"status-{status}"})

    job = wait_one_settled(router, event_id)
    assert (job["state"], job["attempts"], job["last_status"]) == ("dead", 1, status)
    assert f"HTTP {status}" in job["last_error"]
    assert "gave up" not in job["last_error"]
    [attempt] = attempts_of(router, job["id"])
    assert (attempt["status"], attempt["retryable"]) == (status, 0)
    mine = [r for r in site.to(f"/status/{status}") if r.headers.get("x-router-event-id") == event_id]
    assert len(mine) == 1


@pytest.mark.parametrize("status", RETRYABLE)
def test_retryable_status_is_retried_then_delivered(router: RouterServer, site: ScriptedServer, status: int) -> None:
    # the server was scripted to answer `status` once, then 200
    event_id = post_event(router, {"case": f"status-{status}"})

    job = wait_one_settled(router, event_id)
    assert (job["state"], job["attempts"], job["last_status"]) == ("delivered", 2, 200)
    first, second = attempts_of(router, job["id"])
    assert (first["status"], first["retryable"]) == (status, 1)
    assert second["status"] == 200


def test_server_error_then_success_records_both_attempts(router: RouterServer, site: ScriptedServer) -> None:
    site.script("/flaky", Reply(500, "boom"))
    event_id = post_event(router, {"case": "flaky"})

    job = wait_one_settled(router, event_id)
    assert (job["state"], job["attempts"]) == ("delivered", 2)
    first, second = attempts_of(router, job["id"])
    assert (first["n"], first["status"]) == (1, 500)
    assert "HTTP 500" in first["error"]
    assert (second["n"], second["status"], second["error"]) == (2, 200, None)
    assert second["at_ts"] - first["at_ts"] >= 0.15  # the retry schedule (200 ms) was honoured

    recs = [r for r in site.to("/flaky") if r.headers.get("x-router-event-id") == event_id]
    assert [r.headers["x-router-attempt"] for r in recs] == ["1", "2"]
    assert recs[0].body == recs[1].body
    # the Standard Webhooks id is stable across retries, so the receiver can deduplicate on it
    assert recs[0].headers["webhook-id"] == recs[1].headers["webhook-id"]
    for rec in recs:
        Webhook(SIGN_SECRET).verify(rec.body, rec.headers)


def test_hanging_downstream_times_out_and_is_retried(router: RouterServer, site: ScriptedServer) -> None:
    event_id = post_event(router, {"case": "hang"})

    job = wait_one_settled(router, event_id)
    assert (job["state"], job["attempts"]) == ("delivered", 2)
    first, second = attempts_of(router, job["id"])
    assert first["status"] is None
    assert "timed out" in first["error"]
    assert first["retryable"] == 1
    assert 400 <= first["latency_ms"] < 2500  # gave up at the 500 ms timeout, not when the server answered (3 s)
    assert second["status"] == 200


def test_connection_refused_is_retried_then_dead_with_every_attempt(router: RouterServer) -> None:
    event_id = post_event(router, {"case": "refused"})

    job = wait_one_settled(router, event_id)
    assert (job["state"], job["attempts"]) == ("dead", 3)  # the first try and the two of the schedule
    assert job["last_error"].startswith("gave up after 3 attempts")
    assert "connection refused" in job["last_error"]
    history = attempts_of(router, job["id"])
    assert [a["n"] for a in history] == [1, 2, 3]
    for a in history:
        assert a["status"] is None
        assert "connection refused" in a["error"]
        assert a["retryable"] == 1
    # the reason never carries the URL (which may hold a credential)
    assert "127.0.0.1" not in job["last_error"]


def test_header_that_cannot_be_sent_settles_instead_of_retrying_forever(router: RouterServer,
                                                                        site: ScriptedServer) -> None:
    # HTTP/1.1 header values are Latin-1 on the wire; a payload value outside it cannot be sent as is.
    # Either the router encodes it (and delivers) or it fails that delivery permanently with a reason;
    # it must not loop on an internal error.
    event_id = post_event(router, {"case": "unicode-header", "title": "done \u2713"})

    try:
        job = wait_one_settled(router, event_id, timeout=5)
    except AssertionError:
        [job] = jobs_of(router, event_id)
        pytest.fail(f"still {job['state']} after 5 s: {job}; attempts: {attempts_of(router, job['id'])}")
    if job["state"] == "dead":
        assert job["attempts"] == 1
        assert "X-Title" in job["last_error"] or "header" in job["last_error"].lower()
    else:
        [rec] = [r for r in site.to("/unicode-header") if r.headers.get("x-router-event-id") == event_id]
        assert rec.headers["x-title"].encode("latin-1").decode("utf-8") == "done \u2713"


def _settled(router: RouterServer, event_id: str, n: int) -> list[dict]:
    def done() -> list[dict] | None:
        jobs = jobs_of(router, event_id)
        return jobs if len(jobs) == n and all(j["state"] in ("delivered", "dead") for j in jobs) else None

    return wait_until(done, what=f"{n} jobs of {event_id} to settle")
