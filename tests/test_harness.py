"""The test harness itself: the recording downstream, and one end-to-end delivery through it.

Delivery semantics have their own tests; this module only proves the pieces they build on work.
"""

from __future__ import annotations

import pytest
import requests
from support import Downstream, Reply


def test_downstream_records_and_answers_as_scripted(downstream: Downstream):
    downstream.script(Reply(503, b"busy"), Reply(429, b"slow down", {"Retry-After": "1"}))
    first = requests.post(downstream.url_for("/a?x=1"), data=b"\x00raw\xff", headers={"X-Test": "yes"}, timeout=5)
    second = requests.put(downstream.url_for("/b"), json={"k": "v"}, timeout=5)
    third = requests.post(downstream.url_for("/c"), data=b"", timeout=5)
    assert (first.status_code, first.content) == (503, b"busy")
    assert (second.status_code, second.headers["Retry-After"]) == (429, "1")
    assert (third.status_code, third.text) == (200, "ok")  # the default once the script is used up

    got = downstream.wait_for(3)
    assert [(r.method, r.path) for r in got] == [("POST", "/a?x=1"), ("PUT", "/b"), ("POST", "/c")]
    assert got[0].body == b"\x00raw\xff"
    assert got[0].headers["x-test"] == "yes"
    assert got[1].json() == {"k": "v"}
    assert downstream.wait_for(1, path="/b")[0].method == "PUT"


def test_downstream_reads_chunked_bodies(downstream: Downstream):
    requests.post(downstream.url, data=iter([b"ab", b"cd"]), timeout=5)
    assert downstream.wait_for(1)[0].body == b"abcd"


def test_downstream_wait_for_times_out(downstream: Downstream):
    with pytest.raises(AssertionError, match="expected 1 request"):
        downstream.wait_for(1, timeout=0.2)


def test_forward_delivery_reaches_a_real_downstream(start_router, downstream: Downstream):
    server = start_router(f"""\
version: 1
settings:
  store: var/router.db
  retry: {{schedule: [1s], jitter: 0}}
providers:
  p: {{type: none}}
actions:
  fwd: {{type: forward, url: "{downstream.url_for('/events')}", timeout: 5s}}
rules:
  - name: all
    actions: [fwd]
""", name="harness")
    body = b'{"hello":  "world"}'
    resp = server.post("/hooks/p", body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert resp.status_code == 200, resp.text
    event_id = resp.json()["event_id"]

    [delivered] = downstream.wait_for(1, timeout=20, path="/events")
    assert delivered.method == "POST"
    assert delivered.body == body  # the original bytes, unchanged
    assert delivered.headers["content-type"] == "application/json; charset=utf-8"
    assert delivered.headers["x-router-event-id"] == event_id
    assert delivered.headers["x-router-provider"] == "p"
    assert delivered.headers["x-router-rule"] == "all"
