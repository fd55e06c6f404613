"""The inspector over plain HTTP against a real gunicorn: who gets in, what a form needs, what a
page sends, and that a hostile payload renders as text. Plus its settings in the rules file."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import requests
from support import RouterServer, run_cli

from router.config.loader import loads
from router.errors import ConfigError
from router.passwords import hash_password, parse
from router.web.server import _loopback

PASSWORD = "correct horse battery staple"
HOSTILE = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'

RULES = """\
version: 1
settings:
  inspector:
    password: "${INSPECTOR_PASSWORD}"
providers:
  plain: {type: none}
actions:
  archive: {type: file, path: "{{ provider }}.jsonl"}
rules:
  - name: everything
    actions: [archive]
"""


@pytest.fixture(scope="module")
def server(start_router) -> RouterServer:
    return start_router(RULES, env={"INSPECTOR_PASSWORD": PASSWORD}, name="inspector-sec")


@pytest.fixture(scope="module")
def hostile_event(server: RouterServer) -> str:
    r = server.post("/hooks/plain", {"note": HOSTILE, "kind": "hostile"})
    assert r.status_code == 200, r.text
    return r.json()["event_id"]


def _csrf(server: RouterServer) -> str:
    page = requests.get(server.url + "/ui/try", auth=("admin", PASSWORD), timeout=10)
    assert page.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, "the try page carries a CSRF token"
    return match.group(1)


@pytest.mark.parametrize(("auth", "status"), [
    (None, 401),
    (("admin", "wrong password"), 401),
    (("someone", PASSWORD), 401),
    (("admin", ""), 401),
    (("admin", PASSWORD), 200),
], ids=["no-credentials", "wrong-password", "wrong-user", "empty-password", "right"])
@pytest.mark.parametrize("path", ["/ui/", "/ui/dead", "/ui/try", "/ui/static/inspector.js"])
def test_who_gets_in(server: RouterServer, auth: tuple[str, str] | None, status: int, path: str) -> None:
    r = requests.get(server.url + path, auth=auth, timeout=10)
    assert r.status_code == status
    if status == 401:
        assert r.headers["WWW-Authenticate"].startswith("Basic ")
        assert PASSWORD not in r.text


def test_pages_send_strict_headers(server: RouterServer, hostile_event: str) -> None:
    for path in ("/ui/", f"/ui/events/{hostile_event}", "/ui/dead", "/ui/try", "/ui/static/inspector.css"):
        r = requests.get(server.url + path, auth=("admin", PASSWORD), timeout=10)
        assert r.status_code == 200, path
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_pages_load_nothing_from_elsewhere(server: RouterServer, hostile_event: str) -> None:
    r = requests.get(server.url + f"/ui/events/{hostile_event}", auth=("admin", PASSWORD), timeout=10)
    for url in re.findall(r'(?:src|href)="([^"]+)"', r.text):
        assert url.startswith(("/ui/", "#")), url


@pytest.mark.parametrize(("form", "headers"), [
    ({}, {}),
    ({"csrf": "not-the-token"}, {}),
    ({"csrf": ""}, {}),
    ("right", {"Origin": "http://evil.example"}),
], ids=["no-token", "wrong-token", "empty-token", "cross-origin"])
@pytest.mark.parametrize("path", ["/ui/try", "/ui/dead/replay", "/ui/jobs/1/replay"])
def test_forms_need_the_csrf_token(server: RouterServer, form: dict | str, headers: dict, path: str) -> None:
    data = {"csrf": _csrf(server)} if form == "right" else dict(form)
    data.update({"provider": "plain", "payload": "{}", "asof": "1e12"})
    r = requests.post(server.url + path, data=data, headers=headers, auth=("admin", PASSWORD), timeout=10,
                      allow_redirects=False)
    assert r.status_code == 403


def test_a_form_with_the_token_works(server: RouterServer) -> None:
    r = requests.post(server.url + "/ui/try", auth=("admin", PASSWORD), timeout=10,
                      data={"csrf": _csrf(server), "provider": "plain", "payload": '{"kind": "x"}', "headers": ""})
    assert r.status_code == 200
    assert "Would match" in r.text and "everything" in r.text


def test_a_script_in_a_payload_renders_inert(server: RouterServer, hostile_event: str) -> None:
    auth = ("admin", PASSWORD)
    pages = [
        requests.get(server.url + f"/ui/events/{hostile_event}", auth=auth, timeout=10).text,
        requests.get(server.url + "/ui/", params={"q": "hostile"}, auth=auth, timeout=10).text,
        requests.post(server.url + "/ui/try", auth=auth, timeout=10,
                      data={"csrf": _csrf(server), "provider": "plain", "payload": json.dumps({"note": HOSTILE})}).text,
        requests.get(server.url + "/ui/", params={"q": HOSTILE}, auth=auth, timeout=10).text,
    ]
    for html in pages:
        assert "<script>window" not in html and "<img src=x" not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in pages[0]
    assert re.findall(r"<script[^>]*>", pages[0]) == ['<script src="/ui/static/inspector.js" defer>']


def test_readyz_and_logs_say_it_is_on(server: RouterServer) -> None:
    assert requests.get(server.url + "/readyz", timeout=10).json()["checks"]["inspector"] == "on at /ui"
    assert '"msg": "inspector on"' in server.log_text()
    assert PASSWORD not in server.log_text()


def test_off_by_default(start_router) -> None:
    server = start_router(RULES.replace('  inspector:\n    password: "${INSPECTOR_PASSWORD}"\n', ""), name="no-ui")
    assert requests.get(server.url + "/ui/", auth=("admin", PASSWORD), timeout=10).status_code == 404
    assert "inspector" not in requests.get(server.url + "/readyz", timeout=10).json()["checks"]


def test_a_password_hash_logs_in(start_router) -> None:
    hashed = hash_password("s3cret-from-env")
    rules = RULES.replace('password: "${INSPECTOR_PASSWORD}"', 'password_hash: "${INSPECTOR_HASH}"\n    path: /inspect')
    server = start_router(rules, env={"INSPECTOR_HASH": hashed}, name="ui-hash")
    assert requests.get(server.url + "/inspect/", auth=("admin", "s3cret-from-env"), timeout=10).status_code == 200
    assert requests.get(server.url + "/inspect/", auth=("admin", "wrong"), timeout=10).status_code == 401
    assert requests.get(server.url + "/ui/", auth=("admin", "s3cret-from-env"), timeout=10).status_code == 404


# --------------------------------------------------------------------------- settings


def _problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    try:
        loads(text, "rules.yaml", env=env or {})
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def _with(inspector: str) -> str:
    return RULES.replace('  inspector:\n    password: "${INSPECTOR_PASSWORD}"\n', inspector)


@pytest.mark.parametrize(("inspector", "message"), [
    ("  inspector: {}\n", "give exactly one of 'password' or 'password_hash'"),
    ("  inspector: {password: a, password_hash: b}\n", "give exactly one of"),
    ('  inspector: {password: ""}\n', "password is empty"),
    ("  inspector: {password_hash: md5$abc}\n", "unknown password hash scheme"),
    ("  inspector: {password_hash: scrypt$15$8$1$c2FsdA$eA}\n", "too short"),
    ("  inspector: {password_hash: pbkdf2_sha256$10$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA}\n", "iterations"),
    ("  inspector: {password: x, path: /hooks/ui}\n", "is taken by the service"),
    ("  inspector: {password: x, path: /}\n", "is taken by the service"),
    ("  inspector: {password: x, path: ui}\n", "must be a URL path"),
    ("  inspector: {password: x, username: 'a:b'}\n", "without ':'"),
    ("  inspector: {password: x, pasword: y}\n", "did you mean 'password'"),
    ("  inspector: {password: '${UNSET_VAR}'}\n", "'UNSET_VAR' is not set"),
], ids=lambda v: v if len(v) < 30 else None)
def test_inspector_settings_are_checked(inspector: str, message: str) -> None:
    problems = _problems(_with(inspector))
    assert any(message in p and "settings.inspector" in p for p in problems), problems


def test_inspector_path_must_not_be_a_provider_path() -> None:
    text = _with("  inspector: {password: x}\n").replace("plain: {type: none}", "plain: {type: none, paths: [/ui/cb]}")
    assert any("also provider 'plain'" in p for p in _problems(text))


def test_a_good_hash_loads_and_the_password_is_never_printed() -> None:
    config = loads(_with("  inspector: {password_hash: '${H}'}\n"), "rules.yaml", env={"H": hash_password("pw")})
    assert config.settings.inspector is not None
    assert config.settings.inspector.password_hash is not None
    assert config.settings.inspector.password_hash.verify("pw")
    assert not config.settings.inspector.password_hash.verify("pw ")


def test_validate_warns_that_the_inspector_wants_loopback_or_tls(tmp_path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    env = {"INSPECTOR_PASSWORD": PASSWORD}
    result = run_cli("validate", rules, env=env)
    assert result.code == 0, result
    assert re.search(r"rules\.yaml:\d+:\d+: settings\.inspector: warning: the inspector is on at /ui .*TLS",
                     result.output), result
    assert PASSWORD not in result.output
    assert run_cli("validate", "--strict", rules, env=env).code == 1
    rules.write_text(RULES.replace('password: "${INSPECTOR_PASSWORD}"', 'password: "${INSPECTOR_PASSWORD}"\n'
                                   "    behind_tls: true"), encoding="utf-8")
    quiet = run_cli("validate", "--strict", rules, env=env)
    assert quiet.code == 0 and "inspector" not in quiet.output, quiet


@pytest.mark.parametrize("scheme", ["scrypt", "pbkdf2_sha256"])
def test_the_hash_tool_prints_a_hash_that_verifies(scheme: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "router.passwords", scheme], input="let me in\n",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(scheme + "$") and "let me in" not in line
    assert parse(line).verify("let me in") and not parse(line).verify("let me out")


@pytest.mark.parametrize(("bind", "loopback"), [
    ("127.0.0.1:8080", True), ("localhost:8080", True), ("[::1]:8080", True), ("unix:/run/router.sock", True),
    ("0.0.0.0:8080", False), ("[::]:8080", False), ("10.1.2.3:80", False), ("router.internal:80", False),
])
def test_serve_knows_a_loopback_bind(bind: str, loopback: bool) -> None:
    assert _loopback(bind) is loopback


@pytest.mark.parametrize(("bind", "warned"), [("0.0.0.0:8080", True), ("127.0.0.1:8080", False)])
def test_serve_warns_when_the_inspector_is_on_without_loopback(bind: str, warned: bool, capfd) -> None:
    from router.web.server import _warn_if_inspector_in_the_clear

    config = loads(RULES, "rules.yaml", env={"INSPECTOR_PASSWORD": PASSWORD})
    _warn_if_inspector_in_the_clear(config, bind)
    err = capfd.readouterr().err
    assert ("put TLS in front" in err) is warned
    assert PASSWORD not in err
