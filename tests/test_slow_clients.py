"""Slow clients must not deny service: `router serve`'s worker reads each request whole in its event
loop, and gives a thread only a whole request (router/web/worker.py).

Against a real `router serve` with its own worker: hundreds of connections that trickle their
headers or bodies, or send nothing, while an ordinary client keeps posting events; then the
framing cases the buffering must get right (Expect: 100-continue, pipelining, chunked bodies).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from support import ServedRouter, host_port, read_response, wait_until

from router.web.worker import BUFFER_LIMIT, HEAD_LIMIT, request_complete

DEADLINE = 3.0  # ROUTER_BODY_TIMEOUT for this server: a whole request must arrive within it

RULES = """\
version: 1
providers:
  open: {type: none}
actions:
  archive: {type: file, path: "open.jsonl"}
rules:
  - name: all
    actions: [archive]
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedRouter]:
    server = ServedRouter(tmp_path_factory.mktemp("slow"), RULES, workers=2,
                          env={"ROUTER_BODY_TIMEOUT": str(DEADLINE)})
    server.start()
    yield server
    server.stop()


def head(length: int | None = 8, *extra: str) -> bytes:
    lines = ["POST /hooks/open HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", *extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Trickler:
    """Many connections, each sent one more byte of its request every `interval` seconds from one thread."""

    def __init__(self, server: ServedRouter, count: int, interval: float = 0.5):
        self.interval = interval
        self.pending: list[tuple[socket.socket, bytes]] = []
        body = b'{"n": 1' + b" " * 30 + b"}"
        for i in range(count):
            sock = socket.create_connection(host_port(server), timeout=30)
            if i % 2:  # the headers trickle
                data = head(len(body)) + body
            else:  # the headers arrive whole, the body trickles
                sock.sendall(head(len(body)))
                data = body
            self.pending.append((sock, data))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sent = 0
        while not self._stop.is_set() and any(sent < len(d) for _, d in self.pending):
            for sock, data in self.pending:
                if sent < len(data):
                    try:
                        sock.sendall(data[sent:sent + 1])
                    except OSError:
                        pass  # the server gave up on this one: that is the point
            sent += 1
            self._stop.wait(self.interval)  # the trickle's pace, not a test wait

    def __enter__(self) -> Trickler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock, _ in self.pending:
            sock.close()


def test_trickling_and_idle_connections_do_not_starve_other_clients(served: ServedRouter) -> None:
    # a server idle for a while, its workers asleep in their poll (as between bursts in service):
    # the burst below must still be accepted at once, however the workers share it out
    time.sleep(1.5)
    idle = [socket.create_connection(host_port(served), timeout=30) for _ in range(500)]
    try:
        with Trickler(served, 200) as trickler:
            # an ordinary client, new connection per event (so each one goes through accept)
            answered = []
            end = time.monotonic() + DEADLINE + 2  # past the slow ones' deadline, so both phases are covered
            while time.monotonic() < end:
                started = time.monotonic()
                r = requests.post(served.url + "/hooks/open", json={"n": len(answered)}, timeout=5,
                                  headers={"Connection": "close"})
                assert r.status_code == 200, (r.status_code, r.text)
                answered.append(time.monotonic() - started)
            assert len(answered) >= 20, f"only {len(answered)} events were answered while the slow clients waited"
            # every slow connection was answered 408 (it sent part of a request) by its deadline
            answers = []
            for sock, _ in trickler.pending:
                sock.settimeout(DEADLINE + 10)
                status, _, body = read_response(sock)
                answers.append((status, b"timeout" in body))
            assert answers == [(408, True)] * len(answers)
        # the idle ones (nothing sent) are closed by the same deadline, without an answer
        for sock in idle:
            sock.settimeout(DEADLINE + 10)
            assert sock.recv(100) == b""
    finally:
        for sock in idle:
            sock.close()
    assert requests.get(served.url + "/healthz", timeout=5).status_code == 200


def test_expect_100_continue_is_answered_before_the_body(served: ServedRouter) -> None:
    body = b'{"n": "expect"}'
    with socket.create_connection(host_port(served), timeout=10) as sock:
        sock.sendall(head(len(body), "Expect: 100-continue"))
        interim = sock.recv(100)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        data = b""
        while b'"deliveries"' not in data:
            piece = sock.recv(65536)
            assert piece, data
            data += piece
        assert b" 200 " in data.split(b"\r\n\r\n", 1)[0] or b"HTTP/1.1 200" in data


def test_pipelined_requests_are_each_answered(served: ServedRouter) -> None:
    one, two = b'{"n": "pipe-1"}', b'{"n": "pipe-2"}'
    with socket.create_connection(host_port(served), timeout=10) as sock:
        sock.sendall(head(len(one)) + one + head(len(two), "Connection: close") + two)
        status, _, _ = read_response(sock)
    # read_response parses the first answer; the store shows both arrived
    assert status == 200
    ids = wait_until(lambda: [e for e in served.event_ids()
                              if (ev := served.store().event(e)) and ev.body in (one, two)], what="both events")
    assert len(ids) == 2


def test_chunked_body_in_pieces_is_taken_and_a_stalled_one_is_408(served: ServedRouter) -> None:
    body = b'{"n": "chunked"}'
    with socket.create_connection(host_port(served), timeout=10) as sock:
        sock.sendall(head(None, "Transfer-Encoding: chunked"))
        for piece in (body[:5], body[5:]):
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        status, _, answer = read_response(sock)
    assert status == 200, answer
    with socket.create_connection(host_port(served), timeout=DEADLINE + 10) as sock:
        sock.sendall(head(None, "Transfer-Encoding: chunked") + b"5\r\n{\"n\":")  # and then nothing
        started = time.monotonic()
        status, _, answer = read_response(sock)
    assert status == 408 and b"body_timeout" in answer
    assert time.monotonic() - started < DEADLINE + 5


@pytest.mark.parametrize(("data", "complete"), [
    (b"POST / HTTP/1.1\r\nHost: x\r\n", False),  # the head is not over
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),  # no body
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc", False),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde", True),
    (b"POST / HTTP/1.1\r\ncontent-length:  5 \r\n\r\nabcde", True),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", True),  # for the parser to refuse
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", False),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", True),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n0\r\n\r\n", False),  # "0\r\n\r\n" as data, not the end
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", True),  # broken framing: the parser's 400
    (b"X" * (HEAD_LIMIT + 1), True),  # a head too long: the parser's 431
    (b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n" + b"x" * BUFFER_LIMIT, True),  # the rest is a thread's
])
def test_request_complete(data: bytes, complete: bool) -> None:
    assert request_complete(data) is complete
