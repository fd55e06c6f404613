"""The service's answers, called in-process through Flask's test client (`create_app(config)`), for
the many small cases; the end-to-end suites prove the same service under a real gunicorn."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from support import dumps, sign_unitary

from router.config.loader import load
from router.web.app import create_app

SECRET = "in-process-secret-4d7a"

RULES = f"""\
version: 1
settings:
  max_body_bytes: 2048
providers:
  moderation: {{type: unitary, secret: "{SECRET}"}}
  open:
    type: none
    paths: [/callback]
    dedupe: {{key: "{{{{ payload.n }}}}", window: 1h}}
actions:
  archive: {{type: file, path: "{{{{ provider }}}}.jsonl"}}
rules:
  - name: all-open
    provider: open
    actions: [archive]
  - name: flagged
    provider: open
    when: {{flag: true}}
    actions: [archive]
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    folder = tmp_path_factory.mktemp("inprocess")
    rules = folder / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    saved = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    application = create_app(load(rules), rules)
    yield application
    application.extensions["router"].store.close()
    # the app chose a metrics folder for this process: servers started later must choose their own
    if saved is None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def post(client: FlaskClient, path: str, body: bytes, **headers: str):
    return client.post(path, data=body, headers={"Content-Type": "application/json", **headers})


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"]["store"] == "writable"
    assert ready.get_json()["checks"]["rules"] == "loaded"


@pytest.mark.parametrize(("method", "path", "status", "allow"), [
    ("GET", "/hooks/open", 405, "POST"),
    ("GET", "/callback", 405, "POST"),
    ("POST", "/healthz", 405, "GET"),
    ("GET", "/nowhere", 404, None),
    ("POST", "/hooks/nobody", 404, None),
    ("POST", "/hooks/open/extra", 404, None),
])
def test_paths_and_methods_answer_json(client: FlaskClient, method: str, path: str, status: int,
                                       allow: str | None) -> None:
    response = client.open(path, method=method, data=b"{}", headers={"Content-Type": "application/json"})
    assert response.status_code == status
    body = response.get_json()
    assert set(body) == {"error", "message"} and body["error"] and body["message"]
    assert response.headers.get("Allow") == allow


def test_accepted_event_is_stored_with_its_jobs(app: Flask, client: FlaskClient) -> None:
    body = dumps({"n": "accepted-1", "flag": True})
    response = post(client, "/hooks/open", body)
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["matched"] == ["all-open", "flagged"] and answer["deliveries"] == 2
    store = app.extensions["router"].store
    stored = store.event(answer["event_id"])
    assert stored is not None and stored.body == body and stored.provider == "open"
    assert sorted((j.rule, j.action, j.state) for j in store.jobs(event_id=answer["event_id"])) == [
        ("all-open", "archive", "pending"), ("flagged", "archive", "pending")]


def test_extra_path_routes_to_its_provider(client: FlaskClient) -> None:
    response = post(client, "/callback", dumps({"n": "via-callback"}))
    assert response.status_code == 200 and response.get_json()["matched"] == ["all-open"]


def test_duplicate_answers_the_original(client: FlaskClient) -> None:
    first = post(client, "/hooks/open", dumps({"n": "dup-1"})).get_json()
    again = post(client, "/hooks/open", dumps({"n": "dup-1", "other": "fields"})).get_json()
    assert again == {"event_id": first["event_id"], "duplicate": True, "matched": first["matched"], "deliveries": 0}


@pytest.mark.parametrize(("body", "headers", "status", "code"), [
    (b"{not json", {}, 400, "invalid_body"),
    (b"[1, 2]", {}, 400, "invalid_body"),
    (b"\xff\xfe{}", {}, 400, "invalid_body"),
    (b'{"n": "' + b"x" * 3000 + b'"}', {}, 413, "too_large"),
])
def test_bodies_refused_with_json_errors(client: FlaskClient, body: bytes, headers: dict, status: int,
                                         code: str) -> None:
    response = post(client, "/hooks/open", body, **headers)
    assert response.status_code == status
    assert response.get_json()["error"] == code


def test_signature_is_checked_before_anything_else(app: Flask, client: FlaskClient) -> None:
    store = app.extensions["router"].store
    before = store.counts()["events"]
    body = dumps({"data": {"job_id": "j-1", "is_error": False}})
    assert post(client, "/hooks/moderation", body).status_code == 401  # header required when a secret is set
    wrong = post(client, "/hooks/moderation", body, **{"X-Hub-Signature-256": sign_unitary(body, "not-the-secret")})
    assert wrong.status_code == 401 and SECRET not in wrong.get_data(as_text=True)
    assert store.counts()["events"] == before


def test_schema_violation_is_422_with_detail(client: FlaskClient) -> None:
    body = dumps({"data": {"is_error": "not-a-boolean"}})
    response = post(client, "/hooks/moderation", body, **{"X-Hub-Signature-256": sign_unitary(body, SECRET)})
    assert response.status_code == 422
    detail = response.get_json()["detail"]
    assert detail and all(d["loc"][0] == "body" and d["msg"] and d["type"] for d in detail)
