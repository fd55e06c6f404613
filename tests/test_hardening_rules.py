"""Issue 14, the rules and actions half, against a real `router` under gunicorn: regexes in linear time,
templates bounded, Slack values escaped, dedupe keys that cannot collide, the 422 cut at its cap
before the work, the forwarded Content-Type unchanged, control characters refused in headers, and
file errors that can never succeed dead-lettered at once.

One module server routes by `payload.kind`; every check looks at what happened: the answers, the
jobs and attempts in the store, what the downstream and the Slack stand-in received, the workers.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from support import Downstream, RouterServer, SlackStandIn, WorkersSurvive, attempts_of, wait_settled, wait_until

ITEMS_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {"items": {"type": "array", "items": {"type": "integer"}}},
}


def rules_yaml(ds: Downstream, slack: SlackStandIn) -> str:
    return f"""\
version: 1
settings:
  durability: process
  files_root: files
  retry: {{schedule: [200ms, 200ms, 200ms, 200ms], jitter: 0}}
providers:
  src: {{type: none}}
  strict: {{type: none, schema: items.json}}
  dubbing:
    type: none
    dedupe:
      key: ["{{{{ payload.event }}}}", "{{{{ payload.asset_id }}}}", "{{{{ payload.version_id }}}}"]
      window: 1h
actions:
  archive: {{type: file, path: "regex.jsonl"}}
  by-name: {{type: file, path: "names/{{{{ payload.name }}}}.jsonl"}}
  fwd-raw: {{type: forward, url: "{ds.url}/raw", timeout: 5s}}
  fwd-header:
    type: forward
    url: {ds.url}/header
    timeout: 5s
    headers: {{X-Customer: "{{{{ payload.customer }}}}"}}
  fwd-big: {{type: forward, url: "{ds.url}/big", timeout: 5s, body: "{{{{ payload.s * payload.n }}}}"}}
  fwd-loops:
    type: forward
    url: {ds.url}/loops
    timeout: 5s
    body: "{{% for i in range(payload.n) %}}{{% for j in range(payload.n) %}}{{% endfor %}}{{% endfor %}}"
  notify:
    type: slack
    webhook_url: "{slack.url}{slack.hook('hardening')}"
    text: "<!here> {{{{ payload.text }}}} / {{{{ payload.markup | slack_raw }}}}"
    blocks:
      - type: section
        text: {{type: mrkdwn, text: "*{{{{ payload.text }}}}*"}}
        accessory: {{type: button, text: {{type: plain_text, text: open}}, url: "https://example.test/?q={{{{ payload.q }}}}"}}
rules:
  - name: catastrophic
    provider: src
    when: {{kind: regex, value: {{regex: '^(a+)+$'}}}}
    actions: [archive]
  - name: raw
    provider: src
    when: {{kind: raw}}
    actions: [fwd-raw]
  - name: header
    provider: src
    when: {{kind: header}}
    actions: [fwd-header]
  - name: long-name
    provider: src
    when: {{kind: name}}
    actions: [by-name]
  - name: slack
    provider: src
    when: {{kind: slack}}
    actions: [notify]
  - name: big
    provider: src
    when: {{kind: big}}
    actions: [fwd-big]
  - name: loops
    provider: src
    when: {{kind: loops}}
    actions: [fwd-loops]
"""


@pytest.fixture(scope="module")
def slack() -> SlackStandIn:
    with SlackStandIn() as server:
        yield server


@pytest.fixture(scope="module")
def server(start_router, module_downstream: Downstream, slack: SlackStandIn) -> RouterServer:
    return start_router(rules_yaml(module_downstream, slack), files={"items.json": json.dumps(ITEMS_SCHEMA)},
                        name="hardening-rules")


def post(server: RouterServer, payload: dict, *, provider: str = "src", headers: dict | None = None,
         timeout: float = 20) -> requests.Response:
    return requests.post(f"{server.url}/hooks/{provider}", data=json.dumps(payload).encode(),
                         headers={"Content-Type": "application/json", **(headers or {})}, timeout=timeout)


def accepted(server: RouterServer, payload: dict, **kw) -> str:
    r = post(server, payload, **kw)
    assert r.status_code == 200, r.text
    return r.json()["event_id"]


def received_for(ds: Downstream, event_id: str) -> list:
    return [r for r in list(ds.requests) if r.headers.get("x-router-event-id") == event_id]


def dead_at_once(server: RouterServer, event_id: str) -> dict:
    """The event's one job, dead after its first attempt, which is marked not retryable."""
    [job] = wait_settled(server, event_id)
    assert job["state"] == "dead", job
    assert job["attempts"] == 1, (job, attempts_of(server, job["id"]))
    assert attempts_of(server, job["id"])[0]["retryable"] == 0, attempts_of(server, job["id"])
    return job


# --------------------------------------------------------------------------- regexes in linear time


@pytest.mark.parametrize("length", [40, 200_000], ids=["41-bytes", "200k"])
def test_catastrophic_regex_answers_four_concurrent_requests_and_no_worker_dies(server, length):
    """`^(a+)+$` against `aaa...!` backtracks 2^n times in Python's re; RE2 does not backtrack."""
    value = "a" * length + "!"
    with WorkersSurvive(server):
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post(server, {"kind": "regex", "value": value}), range(4)))
    assert [a.status_code for a in answers] == [200] * 4, [a.text[:200] for a in answers]
    assert all(a.json()["matched"] == [] for a in answers)


def test_the_same_regex_still_matches_what_it_should(server):
    r = post(server, {"kind": "regex", "value": "a" * 10_000})
    assert r.status_code == 200 and r.json()["matched"] == ["catastrophic"], r.text


# --------------------------------------------------------------------------- dedupe keys of several values


def test_dedupe_key_parts_cannot_run_into_each_other(server):
    """With `{{event}}:{{asset_id}}:{{version_id}}`, ("a:b", "c") and ("a", "b:c") were one key and the
    second, genuine event was dropped as a duplicate. A list key keeps the parts apart."""
    first = post(server, {"event": "a:b", "asset_id": "c", "version_id": "v1"}, provider="dubbing").json()
    second = post(server, {"event": "a", "asset_id": "b:c", "version_id": "v1"}, provider="dubbing").json()
    assert not first.get("duplicate") and not second.get("duplicate"), (first, second)
    assert first["event_id"] != second["event_id"]
    again = post(server, {"event": "a:b", "asset_id": "c", "version_id": "v1"}, provider="dubbing").json()
    assert again["duplicate"] is True and again["event_id"] == first["event_id"], again
    stored = [server.store().show_event(first["event_id"]), server.store().show_event(second["event_id"])]
    assert [json.loads(e["dedupe_key"]) for e in stored] == [["a:b", "c", "v1"], ["a", "b:c", "v1"]]


# --------------------------------------------------------------------------- the 422 stops at its cap


def test_a_body_with_54000_violations_gets_a_422_of_at_most_100_entries(server):
    body = {"items": ["x" * 10] * 54_000}  # 756 KB, the size of the reported body
    assert len(json.dumps(body)) > 750_000
    r = post(server, body, provider="strict")
    assert r.status_code == 422, r.text[:300]
    detail = r.json()["detail"]
    assert 1 <= len(detail) <= 100
    assert all(d["loc"][:2] == ["body", "items"] and d["type"] == "type" for d in detail), detail[:3]


# --------------------------------------------------------------------------- forwarded bytes


def test_a_non_ascii_content_type_is_forwarded_as_the_bytes_received(server, module_downstream):
    content_type = b"application/json; note=\xff\xfe"
    body = json.dumps({"kind": "raw"}).encode()
    r = requests.post(f"{server.url}/hooks/src", data=body, headers={"Content-Type": content_type}, timeout=20)
    assert r.status_code == 200, r.text
    event_id = r.json()["event_id"]
    [got] = module_downstream.wait_for(1, path="/raw", where=lambda rec: rec.headers.get("x-router-event-id") == event_id)
    # the downstream's HTTP parser reads header bytes as latin-1, so this gives back the bytes on the wire
    assert got.headers["content-type"].encode("latin-1") == content_type
    assert got.body == body


# --------------------------------------------------------------------------- control characters in headers

CONTROL = {"vt": "a\x0bX-Injected: yes", "ff": "a\x0cX-Injected: yes", "unit-sep": "a\x1fb", "del": "a\x7fb",
           "nel": "a\x85b", "esc": "a\x1b[31mb"}


@pytest.mark.parametrize("value", list(CONTROL.values()), ids=list(CONTROL))
def test_a_control_character_in_a_templated_header_is_refused_not_sent(server, module_downstream, value):
    event_id = accepted(server, {"kind": "header", "customer": value})
    job = dead_at_once(server, event_id)
    assert "control character" in job["last_error"] and "X-Customer" in job["last_error"], job
    assert received_for(module_downstream, event_id) == []


def test_a_tab_in_a_templated_header_is_field_content_and_sent(server, module_downstream):
    event_id = accepted(server, {"kind": "header", "customer": "a\tb"})
    [job] = wait_settled(server, event_id)
    assert job["state"] == "delivered", job
    [got] = received_for(module_downstream, event_id)
    assert got.headers["x-customer"] == "a\tb"


# --------------------------------------------------------------------------- permanent is permanent


def test_a_file_name_over_the_file_system_limit_is_a_dead_letter_at_once(server):
    event_id = accepted(server, {"kind": "name", "name": "n" * 300})
    job = dead_at_once(server, event_id)
    assert "too long" in job["last_error"].lower(), job
    assert not (server.workdir / "files" / "names").exists() or not any((server.workdir / "files" / "names").iterdir())


# --------------------------------------------------------------------------- template resources at render


def test_a_template_that_renders_50_mb_fails_permanently_with_its_reason(server, module_downstream):
    event_id = accepted(server, {"kind": "big", "s": "a", "n": 50_000_000})
    job = dead_at_once(server, event_id)
    assert "exceeded its limits" in job["last_error"] and "50,000,000" in job["last_error"], job
    assert received_for(module_downstream, event_id) == []


def test_nested_loops_of_ten_billion_iterations_stop_at_the_step_budget(server, module_downstream):
    event_id = accepted(server, {"kind": "loops", "n": 100_000})
    job = dead_at_once(server, event_id)
    assert "exceeded its limits" in job["last_error"] and "loop iterations" in job["last_error"], job
    assert received_for(module_downstream, event_id) == []


# --------------------------------------------------------------------------- Slack escaping


def test_slack_values_are_escaped_and_the_authors_markup_is_not(server, slack):
    text = "<!channel> <http://evil.test|your invoice> & co"
    event_id = accepted(server, {"kind": "slack", "text": text, "markup": "<@U123>", "q": "a&b"})
    [job] = wait_settled(server, event_id)
    assert job["state"] == "delivered", (job, attempts_of(server, job["id"]))
    [got] = wait_until(lambda: [r for r in slack.requests if r.path.endswith("/hardening")], what="the Slack message")
    message = got.json()
    escaped = "&lt;!channel&gt; &lt;http://evil.test|your invoice&gt; &amp; co"
    assert message["text"] == f"<!here> {escaped} / <@U123>", message["text"]
    section = message["blocks"][0]
    assert section["text"]["text"] == f"*{escaped}*"
    assert section["accessory"]["url"] == "https://example.test/?q=a&b", "a URL field is not Slack text: sent as rendered"
    assert "<!channel>" not in got.body.decode() and "<http://evil" not in got.body.decode()

