"""`router test --explain` (issue 15): every rule matched or not, the condition that failed with the value
the event had there (or that the path is missing), where a `stop: true` rule ended evaluation, and each
action rendered as it would be sent; a stored event by id. Through the real `router` command, plus an
in-process table that the explanation agrees with the service's own matching.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import RouterServer, run_cli

RULES = """\
version: 1
providers:
  moderation: {type: unitary}
  other: {type: none}
actions:
  page: {type: slack, webhook_url: "http://127.0.0.1:9/slack", text: "job {{ payload.data.job_id }} is HIGH"}
  service:
    type: forward
    url: "http://127.0.0.1:9/service"
    body: {job: "{{ payload.data.job_id }}", categories: "{{ payload.data.result.policy_categories | length }}"}
  archive: {type: file, path: "{{ provider }}.jsonl"}
rules:
  - name: failed-jobs
    provider: moderation
    when: {data.is_error: true}
    actions: [archive]
  - name: high-risk
    provider: moderation
    when:
      data.result.policy_categories[*].risk_level: HIGH
      data.result.policy_categories[*].name: {in: [violence, drugs]}
    actions: [page, service]
    stop: true
  - name: never-reached
    provider: moderation
    actions: [archive]
  - name: other-only
    provider: other
    actions: [archive]
  - name: has-url
    provider: moderation
    when: {data.callback_url: {exists: true}}
    actions: [archive]
"""

HIGH = {"data": {"job_id": "job-7", "is_error": False,
                 "result": {"policy_categories": [{"name": "violence", "risk_level": "HIGH"},
                                                  {"name": "nudity", "risk_level": "LOW"}]}}}
LOW = {"data": {"job_id": "job-8", "is_error": False,
                "result": {"policy_categories": [{"name": "violence", "risk_level": "LOW"}]}}}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {"rules": tmp_path / "rules.yaml", "high": tmp_path / "high.json", "low": tmp_path / "low.json"}
    out["rules"].write_text(RULES)
    out["high"].write_text(json.dumps(HIGH))
    out["low"].write_text(json.dumps(LOW))
    return out


def explain_json(*args: str | Path, **kw) -> dict:
    result = run_cli("test", *args, "--explain", "--json", **kw)
    assert result.code == 0, result
    return json.loads(result.stdout)


def test_a_rule_that_did_not_match_names_the_failing_condition_and_the_value_it_saw(files) -> None:
    result = run_cli("test", files["rules"], files["low"], "--provider", "moderation", "--explain")
    assert result.code == 0, result
    out = result.stdout
    assert "[no   ] failed-jobs" in out
    assert "data.is_error: eq true failed (the event has false)" in out
    assert "[no   ] high-risk" in out
    assert 'FAIL data.result.policy_categories[*].risk_level: "HIGH" -- event has "LOW"' in out
    assert "ok   data.result.policy_categories[*].name" in out  # the part that held is shown too
    assert "[no   ] has-url" in out and "data.callback_url: exists true failed (the path is missing)" in out
    assert "[skip ] other-only" in out and "for provider other, not moderation" in out
    assert "[MATCH] never-reached" in out  # no stop this time: evaluation goes on


def test_where_a_stop_rule_ended_evaluation(files) -> None:
    ex = explain_json(files["rules"], files["high"], "--provider", "moderation")
    by_name = {r["name"]: r for r in ex["rules"]}
    assert ex["matched"] == ["high-risk"] and ex["stopped_by"] == "high-risk"
    assert by_name["high-risk"]["ended_evaluation"] is True
    assert by_name["never-reached"]["status"] == "not evaluated"
    assert by_name["has-url"]["status"] == "not evaluated"
    assert "high-risk matched with stop: true" in by_name["never-reached"]["reason"]
    assert by_name["other-only"]["status"] == "other provider"
    failed = by_name["failed-jobs"]["condition"]
    assert failed["path"] == "data.is_error" and failed["found"] == [False] and failed["failed"] == ["eq true"]
    # every rule is listed, in file order, with the line it starts on
    assert [r["name"] for r in ex["rules"]] == ["failed-jobs", "high-risk", "never-reached", "other-only", "has-url"]
    assert by_name["failed-jobs"]["line"] == RULES.splitlines().index("  - name: failed-jobs") + 1


def test_actions_are_rendered_as_sent_and_bodies_pretty_printed(files) -> None:
    result = run_cli("test", files["rules"], files["high"], "--provider", "moderation", "--explain")
    assert result.code == 0, result
    out = result.stdout
    assert "- rule high-risk -> action service (forward)" in out
    assert '      "job": "job-7",' in out  # the JSON body on lines of its own, not one escaped string
    assert '"text": "job job-7 is HIGH"' in out
    assert "stop: true -- evaluation ends here" in out
    ex = explain_json(files["rules"], files["high"], "--provider", "moderation")
    [service] = [a for a in ex["actions"] if a["action"] == "service"]
    assert json.loads(service["rendered"]["body"]) == {"job": "job-7", "categories": "2"}
    [page] = [a for a in ex["actions"] if a["action"] == "page"]
    assert page["rendered"]["webhook_url"] == "<secret>"


def test_the_event_may_come_on_stdin_with_headers_and_query(files) -> None:
    rules = files["rules"].parent / "by-header.yaml"
    rules.write_text("""\
version: 1
providers:
  p: {type: none}
actions:
  a: {type: file, path: "x.jsonl"}
rules:
  - name: by-header
    when: {$headers.x-kind: alpha, $query.source: beta}
    actions: [a]
""")
    ex = explain_json(rules, "--provider", "p", "--header", "X-Kind: alpha", "--query", "source=beta",
                      input=json.dumps({"any": 1}))
    assert ex["matched"] == ["by-header"]
    wrong = explain_json(rules, "--provider", "p", "--header", "X-Kind: gamma", "--query", "source=beta",
                         input="{}")
    [check] = [c for c in wrong["rules"][0]["condition"]["parts"] if not c["holds"]]
    assert check["path"] == "$headers.x-kind" and check["found"] == ["gamma"]


def test_an_invalid_payload_is_explained_as_the_service_would_refuse_it(files) -> None:
    result = run_cli("test", files["rules"], "--provider", "moderation", "--explain", input='{"data": {}}')
    assert result.code == 1, result
    assert "HTTP 422" in result.stderr and "body.data.job_id: field required" in result.stderr


def test_a_stored_event_by_id(start_router) -> None:
    server: RouterServer = start_router(RULES.replace("moderation: {type: unitary}", "moderation: {type: none}"),
                                        name="explain-stored")
    response = server.post("/hooks/moderation", HIGH)
    assert response.status_code == 200, response.text
    event_id = response.json()["event_id"]
    ex = explain_json(server.rules_path, "--event", event_id)
    assert ex["event_id"] == event_id and ex["provider"] == "moderation"
    assert ex["matched"] == response.json()["matched"] == ["high-risk"]
    missing = run_cli("test", server.rules_path, "--event", "evt_nosuch")
    assert missing.code == 1 and "no event evt_nosuch" in missing.stderr, missing


# --------------------------------------------------------------------------- agreement with the service


PAYLOADS = [
    HIGH, LOW, {"data": {"job_id": "j", "is_error": True, "result": {"error": "boom"}}},
    {"data": {"job_id": "j", "is_error": False, "callback_url": "x",
              "result": {"policy_categories": [{"name": "drugs", "risk_level": "LOW"},
                                               {"name": "nudity", "risk_level": "HIGH"}]}}},
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_the_trace_agrees_with_the_services_matching(payload) -> None:
    """The explanation's verdict for every evaluated rule is the fast path's: no second opinion."""
    from router.config.loader import loads
    from router.pipeline.conditions import EventView
    from router.pipeline.explain import explain

    config = loads(RULES.replace("moderation: {type: unitary}", "moderation: {type: none}"))
    ex = explain(config, "moderation", json.dumps(payload).encode())
    view = EventView(payload, {}, {}, "moderation")
    assert ex.matched == [r.name for r in config.router.match(view)]
    for rule, trace in zip(config.rules, ex.rules):
        if trace.status in ("matched", "no match"):
            assert trace.matched == rule.condition(view), rule.name
            if trace.condition is not None:
                assert trace.condition.holds == rule.condition(view), rule.name


def test_a_value_from_the_environment_is_not_shown(tmp_path: Path) -> None:
    rules = tmp_path / "env.yaml"
    rules.write_text("""\
version: 1
providers:
  p: {type: none}
actions:
  a: {type: file, path: "x.jsonl"}
rules:
  - name: by-token
    when: {$query.key: "${EXPECTED_KEY}", kind: {eq: "${EXPECTED_KIND}"}}
    actions: [a]
""")
    env = {"EXPECTED_KEY": "env-only-value-5f1c", "EXPECTED_KIND": "env-only-kind-77aa"}
    for extra in ((), ("--json",)):
        result = run_cli("test", rules, "--provider", "p", "--query", "key=guess", "--explain", *extra,
                         input='{"kind": "guess"}', env=env)
        assert result.code == 0, result
        assert "env-only" not in result.output, result
        assert "${EXPECTED_KEY}" in result.output and "${EXPECTED_KIND}" in result.output, result
