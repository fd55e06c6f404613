"""Injection through templates and file paths: payload values are data, the sandbox holds, files stay in files_root.

One module server with a `none` provider routes by `payload.kind` to forward actions (to a recording
downstream), sandbox-escape templates, and `file` actions whose path comes from the payload. Every
check looks at what actually happened: the requests the downstream received, the jobs and attempts
in the store, and the filesystem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from support import FINAL_STATES, Downstream, Recorded, RouterServer, attempts_of, jobs_of, wait_settled, wait_until

CANARY = "canary-env-value-5b8e1d0c"  # in the server's environment only; a template escape would find it

SANDBOX_ESCAPES = {
    "mro": "{{ ''.__class__.__mro__ }}",
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "subclass-loop": "{% for c in [].__class__.__base__.__subclasses__() %}{{ c.__name__ }} {% endfor %}",
    "cycler-globals-popen": "{{ cycler.__init__.__globals__.os.popen('touch MARKER; env').read() }}",
    "lipsum-globals": "{{ lipsum.__globals__['os'].environ }}",
    "joiner-globals": "{{ joiner.__init__.__globals__ }}",
    "self-context": "{{ self._TemplateReference__context }}",
    "attr-filter": "{{ payload|attr('__class__')|attr('__mro__') }}",
    "format-string": "{{ '{0.__class__.__mro__}'.format('') }}",
    "format-map": "{{ '{x.__class__}'.format_map({'x': payload}) }}",
    "dict-mutation": "{{ payload.update({'kind': 'pwned'}) }}{{ payload.kind }}",
    "pop-mutation": "{% set _ = payload.pop('kind') %}{{ payload }}",
    # a constant range(10**9) is refused when the rules load; this one is known only at render
    "huge-range": "{{ range(10**9 + payload|length) | list | length }}",
    "func-globals": "{{ event_id.startswith.__self__.__class__ }}",
    "environ-via-headers": "{{ headers.__class__.__init__.__globals__ }}",
}

LEAK_MARKS = ("<class", "<built-in", "<function", "<module", "subclasses", CANARY, "uid=", "PATH=")


def rules_yaml(ds: Downstream) -> str:
    sandbox_actions = "\n".join(
        f"  sandbox-{name}:\n    type: forward\n    url: {ds.url}/sandbox/{name}\n    timeout: 5s\n"
        f"    body: {json.dumps(template)}"
        for name, template in SANDBOX_ESCAPES.items()
    )
    return f"""\
version: 1
settings:
  durability: process
  files_root: files
  retry: {{schedule: [200ms], jitter: 0}}
providers:
  src: {{type: none}}
actions:
  fwd-header:
    type: forward
    url: {ds.url}/header
    timeout: 5s
    headers: {{X-Customer: "{{{{ payload.customer }}}}", X-From-Query: "{{{{ query.q }}}}"}}
  fwd-structured:
    type: forward
    url: {ds.url}/structured
    timeout: 5s
    headers: {{X-Note: "{{{{ payload.note }}}}"}}
    body: {{note: "{{{{ payload.note }}}}", nested: ["{{{{ payload.note }}}}"]}}
  fwd-string:
    type: forward
    url: {ds.url}/string
    timeout: 5s
    body: "note={{{{ payload.note }}}}"
  fwd-raw:
    type: forward
    url: {ds.url}/raw
    timeout: 5s
  lines-jsonl: {{type: file, path: "lines/events.jsonl"}}
  lines-raw: {{type: file, format: raw, path: "lines/events.raw"}}
  by-name: {{type: file, path: "{{{{ payload.name }}}}"}}
{sandbox_actions}
rules:
  - name: header
    when: {{kind: header}}
    actions: [fwd-header]
  - name: literal
    when: {{kind: literal}}
    actions: [fwd-structured, fwd-string, fwd-raw, lines-jsonl, by-name]
  - name: raw-lines
    when: {{kind: raw}}
    actions: [lines-raw]
  - name: path
    when: {{kind: path}}
    actions: [by-name]
  - name: sandbox
    when: {{kind: sandbox}}
    actions: [{", ".join(f"sandbox-{n}" for n in SANDBOX_ESCAPES)}]
"""


@pytest.fixture(scope="module")
def server(start_router, module_downstream: Downstream) -> RouterServer:
    return start_router(rules_yaml(module_downstream), env={"ROUTER_CANARY": CANARY}, name="injection")


@pytest.fixture(scope="module")
def files_root(server) -> Path:
    return server.workdir / "files"


@pytest.fixture(scope="module")
def outside(server) -> Path:
    """A folder beside files_root, with a file a planted symlink points at."""
    out = server.workdir / "outside"
    out.mkdir(exist_ok=True)
    (out / "target.jsonl").write_text("original\n")
    return out


def post(server: RouterServer, session: requests.Session, payload: dict, params: dict | None = None) -> str:
    r = session.post(server.url + "/hooks/src", data=json.dumps(payload).encode(),
                     headers={"Content-Type": "application/json"}, params=params, timeout=20)
    assert r.status_code == 200, r.text
    return r.json()["event_id"]


def received_for(ds: Downstream, event_id: str) -> list[Recorded]:
    return [r for r in list(ds.requests) if r.headers.get("x-router-event-id") == event_id]


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under a folder: file contents, or where a symlink points."""
    out: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out


# --------------------------------------------------------------------------- CR/LF into a forwarded header

HEADER_INJECTIONS = {
    "crlf": "acme\r\nX-Injected: yes",
    "lf": "acme\nX-Injected: yes",
    "cr": "acme\rX-Injected: yes",
    "crlf-crlf-body": "acme\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x",
    "nul": "acme\x00X-Injected: yes",
    "trailing-crlf": "acme\r\n",
}


@pytest.mark.parametrize("value", list(HEADER_INJECTIONS.values()), ids=list(HEADER_INJECTIONS))
def test_line_break_in_a_payload_value_cannot_inject_a_forwarded_header(server, session, module_downstream, value):
    event_id = post(server, session, {"kind": "header", "customer": value})
    [job] = wait_settled(server, event_id)
    assert job["state"] == "dead" and job["attempts"] == 1, job
    assert "line break" in job["last_error"] or "NUL" in job["last_error"], job
    assert attempts_of(server, job["id"])[0]["retryable"] == 0
    assert received_for(module_downstream, event_id) == [], "the downstream received the refused delivery"
    assert not any("x-injected" in r.headers for r in module_downstream.requests)
    assert not any(r.path.startswith("/smuggled") for r in module_downstream.requests)


def test_line_break_through_the_query_string_cannot_inject_a_forwarded_header(server, session, module_downstream):
    event_id = post(server, session, {"kind": "header", "customer": "acme"},
                    params={"q": "x\r\nX-Injected: via-query"})
    [job] = wait_settled(server, event_id)
    assert job["state"] == "dead" and job["attempts"] == 1, job
    assert received_for(module_downstream, event_id) == []
    assert not any("x-injected" in r.headers for r in module_downstream.requests)


@pytest.mark.parametrize("value", ["a\x0bX-Injected: yes", "a\x0cX-Injected: yes", "a\x85X-Injected: yes",
                                   "a\x1cX-Injected: yes"], ids=["vt", "ff", "nel", "fs"])
def test_other_control_characters_never_become_a_header(server, session, module_downstream, value):
    """Not line breaks in HTTP/1.1, but line breaks to str.splitlines(): refused, or sent as data."""
    event_id = post(server, session, {"kind": "header", "customer": value})
    [job] = wait_settled(server, event_id)
    got = received_for(module_downstream, event_id)
    if job["state"] == "delivered":
        assert len(got) == 1 and "x-injected" not in got[0].headers, got[0].headers
        sent = got[0].headers["x-customer"]  # the downstream decodes header bytes as latin-1
        assert value in (sent, sent.encode("latin-1").decode("utf-8", "replace")), sent
    else:
        assert job["state"] == "dead" and got == []


@pytest.mark.parametrize("value", ["日本語のお客様", "a\u2028X-Injected: yes", "emoji 🚀"],
                         ids=["cjk", "line-separator", "emoji"])
def test_header_value_outside_latin1_settles_instead_of_retrying_forever(server, session, module_downstream, value):
    """A templated header value outside latin-1 is either sent (encoded) or a permanent failure with a
    reason; either way the job settles after its first attempt. (Before UTF-8 header values, http.client's
    UnicodeEncodeError escaped as an "internal error" and the job was re-queued without end.)"""
    event_id = post(server, session, {"kind": "header", "customer": value})
    [job] = jobs_of(server, event_id)
    wait_until(lambda: attempts_of(server, job["id"]), timeout=20, what="the first delivery attempt")
    [job] = jobs_of(server, event_id)
    assert job["state"] in FINAL_STATES, (job, attempts_of(server, job["id"]))
    assert not any("x-injected" in r.headers for r in module_downstream.requests)


# --------------------------------------------------------------------------- payload values are data, never templates

LITERALS = ["{{ 7*7 }}", "{{7*7}}", "{% for i in range(3) %}x{% endfor %}", "{{ ''.__class__.__mro__ }}",
            "${MEDIA_TOKEN}", "{# comment #}"]


@pytest.mark.parametrize("note", LITERALS)
def test_template_syntax_in_payload_stays_literal_everywhere(server, session, module_downstream, files_root, note):
    name = f"literal/{abs(hash(note))}-{note}.jsonl"
    event_id = post(server, session, {"kind": "literal", "note": note, "name": name})
    jobs = wait_settled(server, event_id)
    assert all(j["state"] == "delivered" for j in jobs), jobs
    got = {r.path: r for r in received_for(module_downstream, event_id)}
    assert set(got) == {"/structured", "/string", "/raw"}, got.keys()
    assert got["/structured"].json() == {"note": note, "nested": [note]}
    assert got["/structured"].headers["x-note"] == note
    assert got["/string"].body == f"note={note}".encode()
    assert json.loads(got["/raw"].body)["note"] == note  # the original bytes, untouched
    lines = [json.loads(line) for line in (files_root / "lines" / "events.jsonl").read_text().splitlines()]
    [mine] = [rec for rec in lines if rec["event_id"] == event_id]
    assert mine["payload"]["note"] == note
    assert (files_root / name).is_file(), "the file named from the payload was not written literally"
    assert "49" not in got["/string"].body.decode() or "49" in note


def test_raw_file_keeps_one_event_per_line(server, session, files_root):
    """The README: `raw` is "the body as received, one per line". A body is valid JSON, so any CR/LF byte in
    it is insignificant whitespace - yet written as received it splits the event over several lines,
    and a client can make one of those lines look like a record of its own (here `{"forged": ...}`).

    README says "the body as received, then a newline", which is what happens; the two documents
    disagree, and line-oriented readers of the archive (the point of one-per-line) are fooled."""
    body = b'{"kind": "raw",\n"a":\n{"forged": "a whole line of its own", "event_id": "evt_fake"}\r\n}'
    r = session.post(server.url + "/hooks/src", data=body, timeout=20)
    assert r.status_code == 200, r.text
    [job] = wait_settled(server, r.json()["event_id"])
    assert job["state"] == "delivered", job
    lines = (files_root / "lines" / "events.raw").read_bytes().splitlines()
    assert not any(line.strip().startswith(b'{"forged"') for line in lines), lines
    assert all(json.loads(line) for line in lines), f"a raw line is not one whole event: {lines}"


# --------------------------------------------------------------------------- the sandbox


def test_sandbox_escapes_do_not_execute_or_leak(server, session, module_downstream):
    marker = server.workdir / "MARKER"
    event_id = post(server, session, {"kind": "sandbox", "note": "x"})
    jobs = wait_settled(server, event_id, timeout=30)
    assert len(jobs) == len(SANDBOX_ESCAPES)
    received = {r.path.rsplit("/", 1)[-1]: r for r in received_for(module_downstream, event_id)}
    for job in jobs:
        name = job["action"].removeprefix("sandbox-")
        if job["state"] == "dead":
            assert job["attempts"] == 1, job  # a template failure is permanent: no retries
            assert attempts_of(server, job["id"])[0]["retryable"] == 0, job
            assert name not in received
            text = job["last_error"] or ""
        else:
            assert job["state"] == "delivered", job
            text = received[name].body.decode("utf-8", "replace")
        for mark in LEAK_MARKS:
            assert mark not in text, f"{name}: rendered {text[:300]!r}"
    assert not marker.exists(), "a template ran a shell command"
    assert CANARY not in server.log_text()


# --------------------------------------------------------------------------- file paths from the payload


@pytest.fixture(scope="module")
def planted(server, files_root: Path, outside: Path) -> Path:
    """Symlinks (and a FIFO) planted inside files_root by someone who can write there."""
    files_root.mkdir(exist_ok=True)
    (files_root / "sub").mkdir(exist_ok=True)
    links = {
        files_root / "link-dir": outside,                               # a directory symlink, relative target
        files_root / "link-file.jsonl": outside / "target.jsonl",       # a file symlink
        files_root / "sub" / "abs-link": outside.resolve(),             # nested, absolute target
        files_root / "inner-link": files_root / "sub",                  # even a link that stays inside
    }
    for link, target in links.items():
        if not link.is_symlink():
            link.symlink_to(target)
    if not (files_root / "fifo").exists():
        os.mkfifo(files_root / "fifo")
    return files_root


def escape_names(outside: Path) -> dict[str, str]:
    return {
        "dotdot": "../outside/escape.jsonl",
        "dotdot-deep": "a/b/../../../outside/escape.jsonl",
        "dotdot-only": "..",
        "backslash-dotdot": "..\\outside\\escape.jsonl",
        "absolute": str(outside / "escape.jsonl"),
        "absolute-root": "/escape.jsonl",
        "nul": "ok\x00/../../outside/escape.jsonl",
        "symlinked-dir": "link-dir/escape.jsonl",
        "symlinked-file": "link-file.jsonl",
        "nested-absolute-symlink": "sub/abs-link/escape.jsonl",
        "symlink-inside": "inner-link/escape.jsonl",
        "fifo": "fifo",
        "empty": "",
        "dot": ".",
        "trailing-slash-dir": "sub/",
    }


@pytest.mark.parametrize("case", list(escape_names(Path("/x"))))
def test_file_path_cannot_leave_files_root(server, session, planted, outside, case):
    name = escape_names(outside)[case]
    before_outside = snapshot(outside)
    before_root = snapshot(planted)
    event_id = post(server, session, {"kind": "path", "name": name})
    [job] = wait_settled(server, event_id)
    assert job["state"] == "dead", job
    assert job["attempts"] == 1 and attempts_of(server, job["id"])[0]["retryable"] == 0, job
    assert job["last_error"], job
    assert snapshot(outside) == before_outside, "something was written outside files_root"
    assert snapshot(planted) == before_root, "a refused path still wrote inside files_root"
    assert not list(Path("/").glob("escape.jsonl"))


def test_ordinary_names_from_the_payload_are_written_inside(server, session, planted):
    for name in ["plain.jsonl", "deep/er/still.jsonl", "dots...jsonl", "..hidden.jsonl", "ünï cødé/ok.jsonl"]:
        event_id = post(server, session, {"kind": "path", "name": name})
        [job] = wait_settled(server, event_id)
        assert job["state"] == "delivered", (name, job)
        target = planted / name
        assert target.is_file() and not target.is_symlink(), name
        assert target.resolve().is_relative_to(planted.resolve())
