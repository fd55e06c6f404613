"""The inspector's pages in-process (Flask's test client over `create_app(config)` and a real
SQLite store), for the many small cases: bad filters, a missing event, replay of what is not
dead, the list's refresh fragment, try-a-payload refusals, turning it off, the explanation's
rendering; the browser and plain-HTTP suites prove the same pages under a real gunicorn."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from router.config.inspector import InspectorSettings
from router.config.loader import load, loads
from router.passwords import hash_password, parse
from router.web.app import create_app
from router.web.inspector.auth import Guard
from router.web.inspector.views import _env

PASSWORD = "in-process-inspector-pw"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}

RULES = f"""\
version: 1
settings:
  max_body_bytes: 4096
  inspector: {{password: "{PASSWORD}"}}
providers:
  open: {{type: none}}
actions:
  archive: {{type: file, path: "{{{{ provider }}}}.jsonl"}}
rules:
  - name: flagged
    provider: open
    when: {{flag: true}}
    actions: [archive]
"""


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    application = create_app(load(rules), rules)
    yield application
    application.extensions["router"].store.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _post(client: FlaskClient, payload: dict) -> str:
    r = client.post("/hooks/open", json=payload)
    assert r.status_code == 200, r.data
    return r.get_json()["event_id"]


def _csrf(client: FlaskClient) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/try", headers=AUTH).get_data(as_text=True))
    assert match
    return match.group(1)


@pytest.mark.parametrize(("query", "message"), [
    ("since=yesterday-ish", "since: &#39;yesterday-ish&#39; is not a time"),
    ("until=2026-13-40", "until: &#39;2026-13-40&#39; is not a time"),
    ("state=lost", "state: one of pending, delivered, dead"),
    ("path=items[*].id&value=1", "path: an index is a number in brackets"),
    ("path=.x&value=1", "path: a path starts with a key"),
    ("q=" + "x" * 501, "q: at most 500 characters"),
])
def test_a_bad_filter_is_a_400_that_says_why(client: FlaskClient, query: str, message: str) -> None:
    r = client.get("/ui/?" + query, headers=AUTH)
    assert r.status_code == 400
    assert message in r.get_data(as_text=True)


@pytest.mark.parametrize(("query", "shown"), [
    ("since=2h", True), ("since=2026-01-01", True), ("since=2026-01-01T10:00Z", True), ("since=2100-01-01", False),
    ("until=2100-01-01T00:00:00%2B02:00", True), ("until=2000-01-01", False),
    ("limit=100000", True), ("limit=zero", True), ("cursor=garbage", True),
])
def test_filters_people_write_are_taken(client: FlaskClient, query: str, shown: bool) -> None:
    event_id = _post(client, {"flag": True})
    r = client.get("/ui/?" + query, headers=AUTH)
    assert r.status_code == 200
    assert (event_id in r.get_data(as_text=True)) is shown


def test_the_refresh_fragment_is_rows_only(client: FlaskClient) -> None:
    event_id = _post(client, {"flag": True})
    html = client.get("/ui/?fragment=rows&rule=flagged", headers=AUTH).get_data(as_text=True)
    assert html.lstrip().startswith("<tr>") and "<html" not in html and event_id in html


def test_the_first_page_refreshes_and_later_pages_do_not(client: FlaskClient) -> None:
    for n in range(3):
        _post(client, {"n": n})
    first = client.get("/ui/?limit=2", headers=AUTH).get_data(as_text=True)
    assert "data-refresh=" in first
    next_url = re.search(r'class="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    second = client.get(next_url, headers=AUTH).get_data(as_text=True)
    assert "data-refresh=" not in second and second.count("/ui/events/evt_") == 1


@pytest.mark.parametrize("ident", ["evt_0123456789abcdef0000", "not-an-id", "evt_" + "f" * 200])
def test_a_missing_event_is_a_404_page(client: FlaskClient, ident: str) -> None:
    r = client.get(f"/ui/events/{ident}", headers=AUTH)
    assert r.status_code == 404
    assert "No such event" in r.get_data(as_text=True)


def test_replaying_what_is_not_dead_says_so(client: FlaskClient) -> None:
    event_id = _post(client, {"flag": True})
    r = client.post("/ui/jobs/1/replay", headers=AUTH, data={"csrf": _csrf(client), "event_id": event_id})
    assert r.status_code == 303 and f"/ui/events/{event_id}" in r.headers["Location"]
    page = client.get(r.headers["Location"], headers=AUTH).get_data(as_text=True)
    assert "delivery 1 is not a dead letter (nothing done)" in page


def test_replay_redirects_only_to_an_event_page(client: FlaskClient) -> None:
    r = client.post("/ui/jobs/1/replay", headers=AUTH, data={"csrf": _csrf(client), "event_id": "//evil.example/x"})
    assert r.status_code == 303 and r.headers["Location"].startswith("/ui/dead")


def test_a_bulk_replay_without_its_confirmation_is_refused(client: FlaskClient) -> None:
    r = client.post("/ui/dead/replay", headers=AUTH, data={"csrf": _csrf(client), "action": "archive"})
    assert r.status_code == 400
    assert "start again from the dead letters" in r.get_data(as_text=True)


@pytest.mark.parametrize(("form", "status", "message"), [
    ({"provider": "nobody", "payload": "{}"}, 400, "no provider of that name"),
    ({"provider": "open", "payload": "{}", "headers": "no colon here"}, 400, "headers line 1: write Name: value"),
    ({"provider": "open", "payload": "[1, 2]"}, 400, "JSON object"),
    ({"provider": "open", "payload": "{nope"}, 400, "not valid JSON"),
    ({"provider": "open", "payload": '{"a": "' + "x" * 5000 + '"}'}, 413, "larger than max_body_bytes"),
])
def test_try_says_why_the_service_would_refuse(client: FlaskClient, form: dict, status: int, message: str) -> None:
    r = client.post("/ui/try", headers=AUTH, data={"csrf": _csrf(client), **form})
    assert r.status_code == status
    html = r.get_data(as_text=True)
    assert "would refuse this payload" in html and message in html


def test_try_matches_and_stores_nothing(client: FlaskClient, app: Flask) -> None:
    store = app.extensions["router"].store
    r = client.post("/ui/try", headers=AUTH, data={"csrf": _csrf(client), "provider": "open",
                                                    "payload": '{"flag": true}', "headers": "X-A: 1"})
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and "Would match: <span class=\"rule\">flagged</span>" in html
    assert "archive" in html and "open.jsonl" in html
    assert store.counts()["events"] == 0


def test_a_form_without_a_length_is_refused(client: FlaskClient) -> None:
    r = client.post("/ui/try", headers={**AUTH, "Transfer-Encoding": "chunked"}, data=b"")
    assert r.status_code in (411, 403)


def test_turned_off_by_enabled_false_or_a_reload(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.replace(f'{{password: "{PASSWORD}"}}', f'{{password: "{PASSWORD}", enabled: false}}'))
    off = create_app(load(rules), rules)
    assert off.test_client().get("/ui/", headers=AUTH).status_code == 404
    rules.write_text(RULES)
    on = create_app(load(rules), rules)
    client = on.test_client()
    assert client.get("/ui/", headers=AUTH).status_code == 200
    state = on.extensions["router"]
    state.config = loads(RULES.replace(f'  inspector: {{password: "{PASSWORD}"}}\n', ""), str(rules),
                         base_dir=tmp_path)
    assert client.get("/ui/", headers=AUTH).status_code == 404  # the reload's settings hold at once


def test_a_reload_changes_the_password(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    state = app.extensions["router"]
    state.config = loads(RULES.replace(PASSWORD, "the-new-one"), "rules.yaml", base_dir=tmp_path)
    assert client.get("/ui/", headers=AUTH).status_code == 401
    new = {"Authorization": "Basic " + base64.b64encode(b"admin:the-new-one").decode()}
    assert client.get("/ui/", headers=new).status_code == 200


def test_a_remembered_hash_login_is_only_for_the_same_password() -> None:
    settings = InspectorSettings(password_hash=parse(hash_password("right")))
    guard = Guard()
    assert guard.allows(settings, "admin", "right")
    assert guard.allows(settings, "admin", "right")  # remembered
    assert not guard.allows(settings, "admin", "wrong")
    assert not guard.allows(settings, "root", "right")
    other = InspectorSettings(password_hash=parse(hash_password("other")))
    assert not guard.allows(other, "admin", "right")  # a new hash (a reload) forgets the old proof


EXPLAINED = {
    "valid": True,
    "matched": ["flagged"],
    "rules": [
        {"name": "flagged", "line": 12, "status": "matched", "reason": "every condition holds", "stop": False,
         "ended_evaluation": False, "actions": ["archive"],
         "condition": {"kind": "check", "holds": True, "where": "rules[0].when.flag", "path": "flag",
                       "expected": True, "found": [True], "missing": False, "failed": [], "parts": []}},
        {"name": "<script>alert(1)</script>", "line": 20, "status": "no match",
         "reason": "kind: eq \"<b>x</b>\" failed (the event has \"<img src=x>\")", "stop": False,
         "ended_evaluation": False, "actions": [],
         "condition": {"kind": "all", "holds": False, "where": "rules[1].when", "path": None, "expected": None,
                       "found": None, "missing": False, "failed": [], "parts": [
                           {"kind": "check", "holds": False, "where": "rules[1].when.kind", "path": "kind",
                            "expected": "<b>x</b>", "found": ["<img src=x>"], "missing": False,
                            "failed": ["eq \"<b>x</b>\""], "parts": []},
                           {"kind": "check", "holds": False, "where": "rules[1].when.gone", "path": "gone",
                            "expected": {"exists": True}, "found": [], "missing": True,
                            "failed": ["exists true"], "parts": []}]}},
    ],
}


def test_the_explanation_renders_every_rule_and_escapes_it() -> None:
    html = _env.get_template("_why.html").render(explained=EXPLAINED, why=[{"rule": "flagged"}])
    assert html.count("<tr class=") == 2
    assert 'class="matched"' in html and 'class="no-match"' in html
    assert "the path is missing" in html and "line 20" in html
    assert "<script>" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;img src=x&gt;" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "failed: eq &#34;&lt;b&gt;x&lt;/b&gt;&#34;" in html


def test_an_event_page_explains_with_the_current_rules(client: FlaskClient, app: Flask, tmp_path: Path) -> None:
    event_id = _post(client, {"flag": False})
    html = client.get(f"/ui/events/{event_id}", headers=AUTH).get_data(as_text=True)
    assert '<table class="list explain">' in html and 'class="no-match"' in html
    assert "flag: true failed" in html or "eq true" in html  # the condition that failed, with the value
    assert "at receipt it matched: no rule" in html
    # the provider gone from the rules file (a reload): the stored match is all there is to show
    state = app.extensions["router"]
    state.config = loads(RULES.replace("open: {type: none}", "other: {type: none}").replace("provider: open",
                                                                                               "provider: other"),
                         "rules.yaml", base_dir=tmp_path)
    html = client.get(f"/ui/events/{event_id}", headers=AUTH).get_data(as_text=True)
    assert "explain" not in html and "No rule matched" in html


class _Preset:
    def event_type(self, headers: dict, payload: object) -> str | None:
        return headers.get("x-github-event")


@pytest.mark.parametrize(("type_name", "impl", "headers", "payload", "expected"), [
    ("panjaya", object(), {}, {"event": "version_generated"}, "version_generated"),
    ("namirial-oneshot", object(), {}, {"event_type": "video_id.completed"}, "video_id.completed"),
    ("none", object(), {}, {"event": "x"}, None),
    ("panjaya", object(), {}, {"event": True}, None),
    ("panjaya", object(), {}, ["not", "an", "object"], None),
    ("github", _Preset(), {"x-github-event": "push"}, {}, "push"),
    ("github", _Preset(), {}, {}, None),
])
def test_the_event_type_where_the_provider_type_knows_it(type_name: str, impl: object, headers: dict,
                                                         payload: object, expected: str | None) -> None:
    from types import SimpleNamespace

    from router.web.inspector.views import event_type_of

    spec = SimpleNamespace(type=type_name, impl=impl)
    assert event_type_of(spec, headers, payload) == expected  # type: ignore[arg-type]


def test_a_csrf_token_holds_today_and_tomorrow_then_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    from router.secret import Secret
    from router.web.inspector import auth

    settings = InspectorSettings(password=Secret("pw"))
    day = 20_000
    monkeypatch.setattr(auth, "_today", lambda: day)
    token = auth.csrf_token(settings)
    assert auth.csrf_ok(settings, token)
    monkeypatch.setattr(auth, "_today", lambda: day + 1)
    assert auth.csrf_ok(settings, token) and auth.csrf_token(settings) != token
    monkeypatch.setattr(auth, "_today", lambda: day + 2)
    assert not auth.csrf_ok(settings, token)
    assert not auth.csrf_ok(InspectorSettings(password=Secret("other")), auth.csrf_token(settings))


@pytest.mark.parametrize("query", ["done=You+have+been+hacked&n=1", "done=requeued&job=1%3Cb%3E", "done=bulk"])
def test_a_link_cannot_put_words_on_the_page(client: FlaskClient, query: str) -> None:
    html = client.get("/ui/dead?" + query, headers=AUTH).get_data(as_text=True)
    assert 'class="notice"' not in html and "hacked" not in html


@pytest.mark.parametrize(("origin", "status"), [
    ("http://localhost", 200), ("https://localhost", 200),  # TLS ended at a proxy in front
    ("http://evil.example", 403), ("null", 403), ("http://localhost.evil.example", 403),
])
def test_a_form_from_another_origin_is_refused(client: FlaskClient, origin: str, status: int) -> None:
    r = client.post("/ui/try", headers={**AUTH, "Origin": origin},
                    data={"csrf": _csrf(client), "provider": "open", "payload": "{}"})
    assert r.status_code == status
