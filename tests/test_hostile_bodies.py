"""Hostile request bodies against a real gunicorn: each gets a clear 4xx, nothing is stored, no worker dies.

One server (two sync workers, ROUTER_BODY_TIMEOUT=2) serves the whole module. Bodies that need exact
control of the bytes on the wire (trickled, lying Content-Length, chunked) go over a raw socket.
"""

from __future__ import annotations

import json
import socket

import pytest
from support import (
    LAST_CHUNK,
    RouterServer,
    WorkersSurvive,
    assert_clean_log,
    attempts_of,
    chunk,
    events_count,
    host_port,
    jobs_of,
    log_size,
    post_head,
    raw_request,
    wait_until,
)

MAX_BODY = 512 * 1024  # room for the deep-nesting bodies below, which must reach the parser
BODY_TIMEOUT = 2.0

RULES = f"""\
version: 1
settings:
  max_body_bytes: {MAX_BODY}
  durability: process
providers:
  open: {{type: none}}
actions:
  archive: {{type: file, path: "{{{{ provider }}}}.jsonl"}}
rules:
  - name: all
    actions: [archive]
"""


@pytest.fixture(scope="module")
def server(start_router) -> RouterServer:
    return start_router(RULES, env={"ROUTER_BODY_TIMEOUT": str(BODY_TIMEOUT)}, name="hostile-bodies")


class Guard:
    def __init__(self, server: RouterServer):
        self.server = server
        self.start = log_size(server)

    def log_is_clean(self) -> None:
        """No traceback, no unhandled error and no worker timeout logged since the test began."""
        assert_clean_log(self.server, since=self.start)


@pytest.fixture
def guard(server):
    """Around every test: the same worker PIDs before and after, and /healthz answering.
    Tests end with `guard.log_is_clean()`."""
    with WorkersSurvive(server):
        yield Guard(server)


def stored_with_body(server: RouterServer, body: bytes) -> int:
    return server.events_with_body(body)


def assert_refused(server: RouterServer, response_status: int | None, body_json: dict | None,
                   status: int, code: str, before: int) -> None:
    assert response_status == status, (response_status, body_json)
    assert body_json is not None and body_json.get("error") == code and body_json.get("message"), body_json
    assert events_count(server) == before, "a refused body was stored"


# --------------------------------------------------------------------------- bodies that are not strict JSON objects

DEEP_ARRAY_OPEN = b"[" * 100_000
DEEP_ARRAY_CLOSED = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT_OPEN = b'{"a":' * 50_000
DEEP_OBJECT_CLOSED = b'{"a":' * 50_000 + b"1" + b"}" * 50_000

NOT_STRICT_JSON = {
    # invalid UTF-8
    "stray-continuation-byte": b'{"a": "\x80"}',
    "byte-ff": b'{"a": "\xff"}',
    "overlong-slash": b'{"a": "\xc0\xaf"}',
    "utf8-encoded-surrogate": b'{"a": "\xed\xa0\x80"}',
    "truncated-multibyte": b'{"a": "\xe6\x97"}',
    "latin-1-text": '{"name": "José"}'.encode("latin-1"),
    "utf-16": '{"a": 1}'.encode("utf-16"),
    # nesting far beyond any parser's stack
    "deep-array-unclosed": DEEP_ARRAY_OPEN,
    "deep-array-closed": DEEP_ARRAY_CLOSED,
    "deep-object-unclosed": DEEP_OBJECT_OPEN,
    "deep-object-closed": DEEP_OBJECT_CLOSED,
    # numbers out of range
    "float-1e999": b'{"a": 1e999}',
    "float-minus-1e999": b'{"a": -1e999}',
    "int-10000-digits": b'{"a": ' + b"9" * 10_000 + b"}",
    "NaN": b'{"a": NaN}',
    "Infinity": b'{"a": Infinity}',
    "-Infinity": b'{"a": -Infinity}',
    "nested-NaN": b'{"a": {"b": [1, NaN]}}',
    # duplicate keys, also when spelled differently
    "duplicate-key": b'{"a": 1, "a": 2}',
    "duplicate-key-nested": b'{"o": {"k": 1, "k": 1}}',
    "duplicate-key-escaped": b'{"a": 1, "\\u0061": 2}',
    # not an object at top level
    "array": b'[{"a": 1}]',
    "empty-array": b"[]",
    "number": b"42",
    "string": b'"hello"',
    "null": b"null",
    "true": b"true",
    "empty": b"",
    "whitespace": b" \r\n\t ",
    # not one JSON text
    "two-objects": b'{"a": 1}{"b": 2}',
    "trailing-garbage": b'{"a": 1} x',
    "trailing-nul": b'{"a": 1}\x00',
    "single-quotes": b"{'a': 1}",
    "comment": b'{"a": 1 /* c */}',
    "trailing-comma": b'{"a": 1,}',
}


@pytest.mark.parametrize("body", list(NOT_STRICT_JSON.values()), ids=list(NOT_STRICT_JSON))
def test_not_strict_json_object_is_400_and_not_stored(server, session, guard, body):
    before = events_count(server)
    r = session.post(server.url + "/hooks/open", data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert_refused(server, r.status_code, r.json(), 400, "invalid_body", before)
    assert len(r.content) < 2000, "the error answer echoes the body"
    guard.log_is_clean()


def test_large_but_finite_numbers_and_moderate_nesting_are_accepted(server, session, guard):
    """The other side of the line: strictness must not refuse legitimate JSON."""
    body = b'{"big": 1e308, "small": -1e-308, "int": ' + b"9" * 4000 + b', "deep": ' + b"[" * 200 + b"]" * 200 + b"}"
    r = session.post(server.url + "/hooks/open", data=body, timeout=30)
    assert r.status_code == 200, r.text
    assert server.event_body(r.json()["event_id"]) == body
    guard.log_is_clean()


def test_lone_surrogate_escape_is_refused_or_delivered(server, session, guard):
    """`"\\ud800"` is grammatical JSON but no Unicode string (RFC 8259 8.2; I-JSON, RFC 7493 2.1, forbids it).

    The router must either refuse it (400, like invalid UTF-8: the README's strict-JSON rule exists
    because "two parsers could read such a body differently") or take it and deliver it. It must not
    answer 200 and then fail every delivery the same way: the jsonl `file` action re-encodes the
    payload as UTF-8, hits UnicodeEncodeError, and the delivery loop files that as a retryable
    "internal error", so the job is retried on the whole schedule (hours) before it is dead-lettered."""
    body = b'{"note": "\\ud800 alone"}'
    r = session.post(server.url + "/hooks/open", data=body, timeout=30)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        guard.log_is_clean()
        return
    [job] = jobs_of(server, r.json()["event_id"])
    wait_until(lambda: attempts_of(server, job["id"]), timeout=20, what="the first delivery attempt")
    [job] = jobs_of(server, r.json()["event_id"])
    attempts = attempts_of(server, job["id"])
    assert job["state"] in ("delivered", "dead"), (
        f"an accepted event's delivery failed and was queued to fail again the same way: {job}, attempts {attempts}")
    guard.log_is_clean()


# --------------------------------------------------------------------------- size limit, slow and lying bodies


def test_declared_length_over_limit_is_413_before_the_body_arrives(server, guard):
    before = events_count(server)
    head = post_head("/hooks/open", content_length=MAX_BODY * 4)
    r = raw_request(server, head, [b'{"a": "', 0.3, b"x" * 1000])  # a little, slowly; never the rest
    assert_refused(server, r.status, r.json() if r.status else None, 413, "too_large", before)
    guard.log_is_clean()


def test_over_limit_body_trickled_without_length_is_refused(server, guard):
    """Chunked, so no Content-Length to judge by: the router must stop reading at the limit (413),
    or at its body deadline (408) - either way it must not buffer without bound or hang."""
    before = events_count(server)
    parts: list[bytes | float] = []
    for _ in range(MAX_BODY // 65536 + 4):
        parts += [chunk(b" " * 65536), 0.05]
    r = raw_request(server, post_head("/hooks/open", chunked=True), parts, keep_sending=True)
    assert r.status in (408, 413), r
    code = {408: "body_timeout", 413: "too_large"}[r.status]
    assert_refused(server, r.status, r.json(), r.status, code, before)
    guard.log_is_clean()


def test_small_body_trickled_past_the_deadline_is_408(server, guard):
    before = events_count(server)
    body = b'{"slow": true}'
    parts: list[bytes | float] = []
    for i in range(len(body)):
        parts += [body[i:i + 1], 0.25]  # 14 bytes over ~3.5 s, past the 2 s body deadline
    r = raw_request(server, post_head("/hooks/open", content_length=len(body)), parts)
    assert_refused(server, r.status, r.json() if r.status else None, 408, "body_timeout", before)
    assert r.elapsed >= BODY_TIMEOUT * 0.9, "408 before the body deadline could have passed"
    guard.log_is_clean()


def test_content_length_claiming_more_than_sent_then_stalling_is_408(server, guard):
    before = events_count(server)
    r = raw_request(server, post_head("/hooks/open", content_length=1000), [b'{"a": 1}'])
    assert_refused(server, r.status, r.json() if r.status else None, 408, "body_timeout", before)
    assert r.elapsed >= BODY_TIMEOUT * 0.9
    guard.log_is_clean()


def test_content_length_claiming_more_than_sent_then_closing_is_408(server, guard):
    """The client half-closes after sending less than it promised: a short body, not a stall."""
    before = events_count(server)
    with socket.create_connection(host_port(server), timeout=15) as sock:
        sock.sendall(post_head("/hooks/open", content_length=1000) + b'{"a": 1}')
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else None
    body = json.loads(data.partition(b"\r\n\r\n")[2] or b"null") if status else None
    assert_refused(server, status, body, 408, "body_timeout", before)
    guard.log_is_clean()


def test_content_length_claiming_less_than_sent_reads_only_what_it_claims(server, guard):
    """The router must take exactly Content-Length bytes: here a truncated object, so 400."""
    before = events_count(server)
    sent = b'{"a": 1, "b": 2}'
    r = raw_request(server, post_head("/hooks/open", content_length=8), [sent])
    assert_refused(server, r.status, r.json() if r.status else None, 400, "invalid_body", before)
    assert stored_with_body(server, sent) == 0
    guard.log_is_clean()


# --------------------------------------------------------------------------- chunked transfer coding


def test_chunked_valid_body_is_accepted_byte_for_byte(server, guard):
    r = raw_request(server, post_head("/hooks/open", chunked=True),
                    [chunk(b'{"chunked":'), 0.05, chunk(b' "yes"'), chunk(b"}"), LAST_CHUNK])
    assert r.status == 200, r
    assert server.event_body(r.json()["event_id"]) == b'{"chunked": "yes"}'
    guard.log_is_clean()


def test_chunked_over_limit_in_one_go_is_413(server, guard):
    before = events_count(server)
    big = b'{"a": "' + b"x" * (MAX_BODY + 10) + b'"}'
    r = raw_request(server, post_head("/hooks/open", chunked=True), [chunk(big), LAST_CHUNK])
    assert_refused(server, r.status, r.json() if r.status else None, 413, "too_large", before)
    guard.log_is_clean()


def test_chunked_body_that_stalls_is_408(server, guard):
    before = events_count(server)
    r = raw_request(server, post_head("/hooks/open", chunked=True), [chunk(b'{"a": ')])
    assert_refused(server, r.status, r.json() if r.status else None, 408, "body_timeout", before)
    guard.log_is_clean()


MALFORMED_CHUNKED = {
    "size-not-hex": b"zz\r\nabc\r\n" + LAST_CHUNK,
    "data-longer-than-size": b"2\r\n{}xyz\r\n" + LAST_CHUNK,
    "negative-size": b"-5\r\nabc\r\n" + LAST_CHUNK,
}


@pytest.mark.parametrize("wire", list(MALFORMED_CHUNKED.values()), ids=list(MALFORMED_CHUNKED))
def test_malformed_chunked_body_is_a_clear_4xx_not_500(server, guard, wire):
    """A broken chunked framing is the client's fault: 400 (a JSON error body), never 500.

    gunicorn raises its ParseException subclasses (InvalidChunkSize, ChunkMissingTerminator) from
    the body stream; the router's body reader only catches OSError/TimeoutError, so today the
    exception reaches Flask's catch-all and the provider is told it was our fault (500)."""
    before = events_count(server)
    r = raw_request(server, post_head("/hooks/open", chunked=True), [wire])
    assert r.status is not None and 400 <= r.status < 500, r
    assert events_count(server) == before
    guard.log_is_clean()


@pytest.mark.parametrize("head", [
    post_head("/hooks/open", chunked=True, content_length=5),  # CL.TE, the classic smuggling shape
    post_head("/hooks/open", content_length=8, headers={"Content-Length": "9"}),
    post_head("/hooks/open", content_length=-1),
    post_head("/hooks/open", headers={"Content-Length": "8, 8"}),
], ids=["cl-and-te", "two-lengths", "negative-length", "length-list"])
def test_ambiguous_framing_is_refused(server, guard, head):
    before = events_count(server)
    r = raw_request(server, head, [chunk(b'{"a": 1}') + LAST_CHUNK])
    assert r.status is not None and 400 <= r.status < 500, r
    assert events_count(server) == before
    guard.log_is_clean()


def test_oversized_header_is_refused_by_the_server(server, guard):
    before = events_count(server)
    body = b'{"a": 1}'
    r = raw_request(server, post_head("/hooks/open", content_length=len(body), headers={"X-Big": "a" * 20000}),
                    [body])
    assert r.status is not None and 400 <= r.status < 500, r
    assert events_count(server) == before
    guard.log_is_clean()
