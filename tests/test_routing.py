"""Routing semantics (README "Rules and conditions"): operators, paths, $headers/$query/$provider, all/any/not, fan-out, stop.

The operator table becomes one rules file, one rule per case. The same file is served by a real gunicorn
(one POST gives the matched set) and dry-run by `router test --expect`, so both paths must agree with
the table.
"""

from __future__ import annotations

import json

import pytest
from support import RouterServer, dumps, run_cli

PAYLOAD = {
    "event": "version_generated",
    "asset_id": "A-123",
    "count": 5,
    "ratio": 0.5,
    "flag": False,
    "tags": ["red", "green"],
    "title": "Quarterly report draft",
    "items": [{"kind": "video", "size": 10}, {"kind": "audio", "size": 3}],
    "data": {
        "is_error": False,
        "result": {
            "policy_categories": [
                {"name": "ARMS_AMMO", "risk_level": "HIGH"},
                {"name": "DEATH_INJURY_MILITARY", "risk_level": "MEDIUM"},
            ]
        },
    },
    "nested": {"deep": {"value": "x"}},
}
HEADERS = {"X-Tenant": "acme"}
QUERY = {"filename": "clip.mp4"}

# (rule name, `when` (None: omitted), `provider` (None: omitted), matches PAYLOAD sent to provider `p`)
CASES: list[tuple[str, object, object, bool]] = [
    # equality: a scalar matcher, or eq
    ("eq-scalar-hit", {"event": "version_generated"}, None, True),
    ("eq-scalar-miss", {"event": "asset_failed"}, None, False),
    ("eq-hit", {"event": {"eq": "version_generated"}}, None, True),
    ("eq-miss", {"event": {"eq": "version_ready"}}, None, False),
    ("eq-number-hit", {"count": 5}, None, True),
    ("eq-number-miss", {"count": 6}, None, False),
    ("eq-bool-hit", {"flag": False}, None, True),
    ("eq-bool-miss", {"flag": True}, None, False),
    ("eq-missing", {"nope": {"eq": "x"}}, None, False),
    # ne
    ("ne-hit", {"event": {"ne": "asset_failed"}}, None, True),
    ("ne-miss", {"event": {"ne": "version_generated"}}, None, False),
    ("ne-missing-path-holds", {"nope": {"ne": "x"}}, None, True),
    # in / not_in
    ("in-hit", {"event": {"in": ["asset_failed", "version_generated"]}}, None, True),
    ("in-miss", {"event": {"in": ["asset_failed", "version_failed"]}}, None, False),
    ("in-number-hit", {"count": {"in": [1, 5, 9]}}, None, True),
    ("in-missing", {"nope": {"in": ["x"]}}, None, False),
    ("not-in-hit", {"event": {"not_in": ["asset_failed", "version_failed"]}}, None, True),
    ("not-in-miss", {"event": {"not_in": ["version_generated"]}}, None, False),
    ("not-in-missing-path-holds", {"nope": {"not_in": ["x"]}}, None, True),
    # regex (search, not match)
    ("regex-hit", {"asset_id": {"regex": r"^A-\d+$"}}, None, True),
    ("regex-search-hit", {"title": {"regex": "report"}}, None, True),
    ("regex-anchored-miss", {"title": {"regex": "^report"}}, None, False),
    ("regex-miss", {"asset_id": {"regex": r"^B-\d+$"}}, None, False),
    ("regex-missing", {"nope": {"regex": ".*"}}, None, False),
    # exists
    ("exists-true-hit", {"asset_id": {"exists": True}}, None, True),
    ("exists-true-miss", {"nope": {"exists": True}}, None, False),
    ("exists-false-hit", {"nope": {"exists": False}}, None, True),
    ("exists-false-miss", {"asset_id": {"exists": False}}, None, False),
    ("exists-nested-false", {"nested.deep.missing": {"exists": False}}, None, True),
    ("exists-through-scalar-false", {"asset_id.sub": {"exists": False}}, None, True),
    # comparisons
    ("gt-hit", {"count": {"gt": 4}}, None, True),
    ("gt-miss-equal", {"count": {"gt": 5}}, None, False),
    ("gte-hit-equal", {"count": {"gte": 5}}, None, True),
    ("gte-miss", {"count": {"gte": 6}}, None, False),
    ("lt-hit", {"count": {"lt": 6}}, None, True),
    ("lt-miss-equal", {"count": {"lt": 5}}, None, False),
    ("lte-hit-equal", {"count": {"lte": 5}}, None, True),
    ("lte-miss", {"count": {"lte": 4}}, None, False),
    ("gt-float-hit", {"ratio": {"gt": 0.25}}, None, True),
    ("gt-missing", {"nope": {"gt": 0}}, None, False),
    ("lt-missing", {"nope": {"lt": 0}}, None, False),
    ("gt-string-vs-number-is-false", {"event": {"gt": 3}}, None, False),
    ("range-hit", {"count": {"gt": 1, "lt": 10}}, None, True),
    ("range-miss", {"count": {"gt": 1, "lt": 3}}, None, False),
    # contains: list member or substring
    ("contains-list-hit", {"tags": {"contains": "red"}}, None, True),
    ("contains-list-miss", {"tags": {"contains": "blue"}}, None, False),
    ("contains-list-not-substring-of-member", {"tags": {"contains": "gree"}}, None, False),
    ("contains-substring-hit", {"title": {"contains": "report"}}, None, True),
    ("contains-substring-miss", {"title": {"contains": "annual"}}, None, False),
    ("contains-missing", {"nope": {"contains": "x"}}, None, False),
    # startswith
    ("startswith-hit", {"title": {"startswith": "Quarterly"}}, None, True),
    ("startswith-miss", {"title": {"startswith": "report"}}, None, False),
    ("startswith-missing", {"nope": {"startswith": "x"}}, None, False),
    # [*]: positive operators hold if ANY element does; ne / not_in hold if NO element equals / is in
    ("star-eq-hit", {"items[*].kind": "audio"}, None, True),
    ("star-eq-miss", {"items[*].kind": "image"}, None, False),
    ("star-gt-hit", {"items[*].size": {"gt": 5}}, None, True),
    ("star-gt-miss", {"items[*].size": {"gt": 50}}, None, False),
    ("star-in-hit", {"items[*].kind": {"in": ["image", "audio"]}}, None, True),
    ("star-regex-hit", {"items[*].kind": {"regex": "^aud"}}, None, True),
    ("star-contains-hit", {"items[*].kind": {"contains": "vid"}}, None, True),
    ("star-startswith-hit", {"data.result.policy_categories[*].name": {"startswith": "ARMS"}}, None, True),
    ("star-ne-hit", {"items[*].kind": {"ne": "image"}}, None, True),
    ("star-ne-miss", {"items[*].kind": {"ne": "audio"}}, None, False),
    ("star-not-in-hit", {"items[*].kind": {"not_in": ["image", "text"]}}, None, True),
    ("star-not-in-miss", {"items[*].kind": {"not_in": ["audio", "text"]}}, None, False),
    ("star-exists-hit", {"items[*].size": {"exists": True}}, None, True),
    ("star-missing-field", {"items[*].color": "red"}, None, False),
    ("star-deep-hit", {"data.result.policy_categories[*].risk_level": "HIGH"}, None, True),
    ("star-deep-miss", {"data.result.policy_categories[*].risk_level": "LOW"}, None, False),
    ("star-on-scalar-tags", {"tags[*]": "green"}, None, True),
    # index paths
    ("index-0-hit", {"items[0].kind": "video"}, None, True),
    ("index-1-miss", {"items[1].kind": "video"}, None, False),
    ("index-scalar-list-hit", {"tags[1]": "green"}, None, True),
    ("index-out-of-range-missing", {"items[5].kind": {"exists": False}}, None, True),
    ("index-out-of-range-eq", {"items[5].kind": "video"}, None, False),
    # dotted paths
    ("dotted-hit", {"nested.deep.value": "x"}, None, True),
    ("dotted-bool-hit", {"data.is_error": False}, None, True),
    ("dotted-miss", {"nested.deep.value": "y"}, None, False),
    # several paths in one mapping: all must hold
    ("multi-all-hit", {"event": "version_generated", "count": 5}, None, True),
    ("multi-one-fails", {"event": "version_generated", "count": 6}, None, False),
    # all / any / not
    ("all-hit", {"all": [{"event": "version_generated"}, {"count": {"gt": 1}}]}, None, True),
    ("all-miss", {"all": [{"event": "version_generated"}, {"count": {"gt": 10}}]}, None, False),
    ("any-hit", {"any": [{"event": "asset_failed"}, {"count": 5}]}, None, True),
    ("any-miss", {"any": [{"event": "asset_failed"}, {"count": 6}]}, None, False),
    ("not-hit", {"not": {"event": "asset_failed"}}, None, True),
    ("not-miss", {"not": {"event": "version_generated"}}, None, False),
    ("not-of-missing-path", {"not": {"nope": "x"}}, None, True),
    ("nested-combinators-hit",
     {"any": [{"not": {"event": "version_generated"}},
              {"all": [{"tags": {"contains": "green"}}, {"not": {"count": {"lt": 5}}}]}]}, None, True),
    ("nested-combinators-miss",
     {"all": [{"any": [{"count": 1}, {"count": 2}]}, {"event": "version_generated"}]}, None, False),
    # $headers (case-insensitive), $query, $provider
    ("headers-hit", {"$headers.x-tenant": "acme"}, None, True),
    ("headers-case-insensitive-hit", {"$headers.X-TENANT": "acme"}, None, True),
    ("headers-miss", {"$headers.x-tenant": "globex"}, None, False),
    ("headers-absent", {"$headers.x-not-sent": {"exists": False}}, None, True),
    ("query-hit", {"$query.filename": "clip.mp4"}, None, True),
    ("query-regex-hit", {"$query.filename": {"regex": r"\.mp4$"}}, None, True),
    ("query-miss", {"$query.filename": "other.mov"}, None, False),
    ("query-absent", {"$query.other": {"exists": True}}, None, False),
    ("provider-var-hit", {"$provider": "p"}, None, True),
    ("provider-var-miss", {"$provider": "q"}, None, False),
    ("provider-var-in-hit", {"$provider": {"in": ["q", "p"]}}, None, True),
    # rule-level provider: one name, a list, or omitted; `when` omitted means always
    ("provider-name-hit", None, "p", True),
    ("provider-name-miss", None, "q", False),
    ("provider-list-hit", None, ["q", "p"], True),
    ("provider-list-miss", None, ["q"], False),
    ("always", None, None, True),
    ("provider-and-when-miss", {"event": "asset_failed"}, "p", False),
]
EXPECTED = [name for name, _w, _p, hit in CASES if hit]

STOP_RULES = """\
  - name: s-first
    provider: s
    actions: [sink, sink2]
  - name: s-stop-but-no-match
    provider: s
    when: {event: nope}
    stop: true
    actions: [sink]
  - name: s-second
    provider: s
    when: {event: version_generated}
    actions: [notify]
  - name: s-stopper
    provider: s
    when: {count: {gte: 5}}
    stop: true
    actions: [sink]
  - name: s-after-stop
    provider: s
    actions: [sink]
"""


def table_rules(notify_url: str) -> str:
    lines = [
        "version: 1",
        "settings:",
        "  store: var/router.db",
        "  files_root: var/files",
        "providers:",
        "  p: {type: none}",
        "  q: {type: none}",
        "  s: {type: none}",
        "  strict:",
        "    type: none",
        "    schema: strict.json",
        "actions:",
        '  sink: {type: file, path: "{{ rule }}.jsonl"}',
        '  sink2: {type: file, path: "copies/{{ rule }}.jsonl"}',
        "  notify:",
        "    type: slack",
        f"    webhook_url: {json.dumps(notify_url)}",
        '    text: "Asset {{ payload.asset_id }} is {{ payload.event }} ({{ provider }}, {{ rule }})"',
        "rules:",
        STOP_RULES.rstrip("\n"),
    ]
    for name, when, provider, _hit in CASES:
        lines.append(f"  - name: {name}")
        if provider is not None:
            lines.append(f"    provider: {json.dumps(provider)}")
        if when is not None:
            # JSON is YAML flow style, with every string quoted (so `[*]` and `$` need no care)
            lines.append(f"    when: {json.dumps(when)}")
        lines.append("    actions: [sink]")
    return "\n".join(lines) + "\n"


STRICT_SCHEMA = {"type": "object", "required": ["event", "count"],
                 "properties": {"event": {"type": "string"}, "count": {"type": "integer"}}}


@pytest.fixture(scope="module")
def server(start_router, module_downstream) -> RouterServer:
    return start_router(table_rules(module_downstream.url_for("/slack")),
                        files={"strict.json": json.dumps(STRICT_SCHEMA)}, name="routing")


@pytest.fixture(scope="module")
def matched_over_http(server) -> list[str]:
    resp = server.post("/hooks/p", dumps(PAYLOAD), headers=HEADERS, params=QUERY)
    assert resp.status_code == 200, resp.text
    return resp.json()["matched"]


@pytest.fixture(scope="module")
def payload_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("payloads") / "payload.json"
    p.write_bytes(dumps(PAYLOAD))
    return p


def test_table_has_unique_names():
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name,when,provider,hit", CASES, ids=[c[0] for c in CASES])
def test_condition_over_http(matched_over_http, name, when, provider, hit):
    assert (name in matched_over_http) is hit, f"rule {name!r} when={when!r} provider={provider!r}"


def test_matched_in_file_order_over_http(matched_over_http):
    assert matched_over_http == EXPECTED


def test_router_test_cli_agrees_with_the_table(server, payload_file):
    args = ["test", server.rules_path, "--provider", "p", payload_file,
            "--header", "X-Tenant:acme", "--query", "filename=clip.mp4"]
    for name in EXPECTED:
        args += ["--expect", name]
    result = run_cli(*args)
    assert result.code == 0, result
    assert "Traceback" not in result.output
    for name in ("star-ne-hit", "headers-case-insensitive-hit", "provider-list-hit", "always"):
        assert name in result.stdout


def test_router_test_cli_header_name_case_insensitive(server, payload_file):
    args = ["test", server.rules_path, "--provider", "p", payload_file,
            "--header", "x-TENANT:acme", "--query", "filename=clip.mp4"]
    for name in EXPECTED:
        args += ["--expect", name]
    result = run_cli(*args)
    assert result.code == 0, result


def test_router_test_cli_expect_missing_a_matched_rule_exits_1(server, payload_file):
    args = ["test", server.rules_path, "--provider", "p", payload_file,
            "--header", "X-Tenant:acme", "--query", "filename=clip.mp4"]
    for name in EXPECTED:
        if name != "always":
            args += ["--expect", name]
    result = run_cli(*args)
    assert result.code == 1, result
    assert "always" in result.output
    assert "Traceback" not in result.output


def test_router_test_cli_expect_unmatched_rule_exits_1(server, payload_file):
    args = ["test", server.rules_path, "--provider", "p", payload_file,
            "--header", "X-Tenant:acme", "--query", "filename=clip.mp4"]
    for name in EXPECTED + ["eq-miss"]:
        args += ["--expect", name]
    result = run_cli(*args)
    assert result.code == 1, result
    assert "eq-miss" in result.output


def test_router_test_cli_without_headers_and_query(server, payload_file):
    """Without --header/--query the $headers/$query rules fall back to their missing-path meaning."""
    expected = [n for n in EXPECTED if not n.startswith(("headers-hit", "headers-case", "query-hit", "query-regex"))]
    args = ["test", server.rules_path, "--provider", "p", payload_file]
    for name in expected:
        args += ["--expect", name]
    result = run_cli(*args)
    assert result.code == 0, result


# --------------------------------------------------------------------------- fan-out and stop


def test_fan_out_and_stop_over_http(server):
    resp = server.post("/hooks/s", dumps(PAYLOAD))
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    # every matching rule fires in file order; s-stopper ends evaluation (a non-matching stop rule does not)
    assert answer["matched"] == ["s-first", "s-second", "s-stopper"]
    # s-first fans out to two actions
    assert answer["deliveries"] == 4
    assert server.jobs_for(answer["event_id"]) == sorted(
        [("s-first", "sink"), ("s-first", "sink2"), ("s-second", "notify"), ("s-stopper", "sink")])


def test_stop_rule_not_matching_does_not_stop(server):
    resp = server.post("/hooks/s", dumps({"event": "version_generated", "count": 1}))
    assert resp.status_code == 200, resp.text
    matched = resp.json()["matched"]
    assert matched[:2] == ["s-first", "s-second"]
    assert "s-stopper" not in matched
    assert "s-after-stop" in matched  # evaluation went on past both stop rules


def test_fan_out_and_stop_via_cli(server, payload_file):
    base = ["test", server.rules_path, "--provider", "s", payload_file]
    ok = run_cli(*base, "--expect", "s-first", "--expect", "s-second", "--expect", "s-stopper")
    assert ok.code == 0, ok
    # the dry run shows each rendered action
    assert "Asset A-123 is version_generated (s, s-second)" in ok.stdout, ok
    too_many = run_cli(*base, "--expect", "s-first", "--expect", "s-second", "--expect", "s-stopper",
                       "--expect", "s-after-stop")
    assert too_many.code == 1, too_many


def test_provider_list_matches_each_listed_provider(server):
    resp = server.post("/hooks/q", dumps(PAYLOAD), headers=HEADERS, params=QUERY)
    assert resp.status_code == 200
    matched = resp.json()["matched"]
    assert "provider-list-hit" in matched  # provider: [q, p]
    assert "provider-list-miss" in matched  # provider: [q]
    assert "provider-name-miss" in matched  # provider: q
    assert "provider-name-hit" not in matched  # provider: p
    assert "provider-var-miss" in matched and "provider-var-hit" not in matched
    assert not any(m.startswith("s-") for m in matched)


# --------------------------------------------------------------------------- router test: payload validity, dry run


def test_router_test_invalid_payload_exits_1(server, write):
    bad = write("bad.json", json.dumps({"event": "x", "count": "five"}))
    result = run_cli("test", server.rules_path, "--provider", "strict", bad)
    assert result.code == 1, result
    assert "Traceback" not in result.output
    assert "count" in result.output


def test_router_test_valid_payload_against_schema_exits_0(write):
    schema = write("strict.json", json.dumps(STRICT_SCHEMA))
    rules = write("rules.yaml", f"""\
version: 1
providers:
  strict: {{type: none, schema: {schema.name}}}
actions:
  sink: {{type: file, path: "x.jsonl"}}
rules:
  - name: counted
    when: {{count: {{gte: 5}}}}
    actions: [sink]
  - name: never
    when: {{event: nope}}
    actions: [sink]
""")
    good = write("good.json", json.dumps({"event": "x", "count": 5}))
    result = run_cli("test", rules, "--provider", "strict", good, "--expect", "counted")
    assert result.code == 0, result
    assert "counted" in result.stdout
    bad = write("bad.json", json.dumps({"event": "x"}))
    result = run_cli("test", rules, "--provider", "strict", bad, "--expect", "counted")
    assert result.code == 1, result


@pytest.mark.parametrize("content", ["not json", "[1, 2]", ""], ids=["not-json", "array", "empty"])
def test_router_test_payload_not_a_json_object_exits_1(server, write, content):
    f = write("payload.json", content)
    result = run_cli("test", server.rules_path, "--provider", "p", f)
    assert result.code == 1, result
    assert "Traceback" not in result.output


def test_router_test_unknown_provider_fails_cleanly(server, payload_file):
    result = run_cli("test", server.rules_path, "--provider", "nope", payload_file)
    assert result.code in (1, 2), result
    assert "nope" in result.output
    assert "Traceback" not in result.output


def test_router_test_sends_nothing(downstream, write, payload_file):
    rules = write("rules.yaml", f"""\
version: 1
providers:
  p: {{type: none}}
actions:
  fwd: {{type: forward, url: "{downstream.url_for('/fwd')}"}}
  chat:
    type: slack
    webhook_url: "{downstream.url_for('/slack')}"
    text: "hello {{{{ payload.asset_id }}}}"
rules:
  - name: everything
    actions: [fwd, chat]
""")
    result = run_cli("test", rules, "--provider", "p", payload_file, "--expect", "everything")
    assert result.code == 0, result
    assert "hello A-123" in result.stdout
    assert downstream.requests == []
