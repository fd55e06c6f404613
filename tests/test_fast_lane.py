"""The fast lane of `router serve`'s worker (router/web/lane.py) and the even share of connections
among workers (router/web/balance.py).

Against a real `router serve` with 2 workers, over raw sockets: a plain POST is answered in the
worker's event loop, a chunked one by a thread, and both must look alike to the client, on either
store back end (SQLite commits in the loop, PostgreSQL in a thread beside it); several
requests in one write are answered in order; `Connection: close` is honoured; a client gone before
its answer still has its event stored; refusals keep the connection; eight kept-alive connections
are shared out between the two workers. Then the parser's refusals, which send a request the
ordinary way, and the balance table itself, in process.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from support import (
    HMAC_SECRET,
    ServedRouter,
    accepted_by,
    chunk,
    host_port,
    sign_hmac,
    wait_until,
    worker_pids,
)

from router.web.balance import Table
from router.web.lane import Limits, parse

RULES = f"""\
version: 1
providers:
  open: {{type: none}}
  signed:
    type: hmac
    secret: "{HMAC_SECRET}"
    header: X-Hub-Signature-256
    algorithm: sha256
    encoding: hex
    prefix: "sha256="
    schema: object.json
actions:
  archive: {{type: file, path: "lane.jsonl"}}
rules:
  - name: all
    actions: [archive]
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedRouter]:
    """The router on each back end: SQLite commits in the worker's event loop, PostgreSQL in a
    committer thread beside it (lane.py), and a client must not tell the two apart."""
    store = {} if request.param == "sqlite" else {"store": request.getfixturevalue("pg_cluster").database()}
    server = ServedRouter(tmp_path_factory.mktemp("lane"), RULES, workers=2,
                          files={"object.json": '{"type": "object"}'}, **store)
    server.start()
    yield server
    server.stop()


def request(body: bytes, *extra: str, path: str = "/hooks/open") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", *extra,
             f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Reader:
    """Answers read off one kept-alive connection, one at a time, by their Content-Length."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split()[1]), headers, body

    def closed(self) -> bool:
        """The server closed the connection (after what it sent)."""
        return not self.buf and self.sock.recv(1) == b""

    def _more(self) -> None:
        data = self.sock.recv(65536)
        assert data, f"the server closed the connection; had {self.buf!r}"
        self.buf += data


def connect(served: ServedRouter) -> socket.socket:
    return socket.create_connection(host_port(served), timeout=15)


def test_a_plain_and_a_chunked_request_are_answered_alike(served: ServedRouter) -> None:
    body = json.dumps({"case": "alike"}).encode()
    with connect(served) as sock:
        reader = Reader(sock)
        sock.sendall(request(body))  # the fast lane
        plain = reader.answer()
        head = (b"POST /hooks/open HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        sock.sendall(head + chunk(body) + b"0\r\n\r\n")  # a thread, through gunicorn's parser
        chunked = reader.answer()
    for status, headers, answer in (plain, chunked):
        assert status == 200, answer
        assert set(headers) == {"server", "date", "connection", "content-type", "content-length"}
        assert headers["connection"] == "keep-alive"
        assert headers["content-type"] == "application/json"
        assert answer.endswith(b"\n")
        value = json.loads(answer)
        assert set(value) == {"event_id", "matched", "deliveries"} and value["matched"] == ["all"]
        assert served.event_body(value["event_id"]) == body
    assert plain[1]["server"] == chunked[1]["server"]


def test_requests_sent_together_are_answered_in_order(served: ServedRouter) -> None:
    bodies = [json.dumps({"n": n}).encode() for n in range(6)]
    with connect(served) as sock:
        sock.sendall(b"".join(request(b) for b in bodies))
        reader = Reader(sock)
        answers = [reader.answer() for _ in bodies]
    ids = [json.loads(body)["event_id"] for status, _, body in answers if status == 200]
    assert len(ids) == len(bodies)
    assert [served.event_body(i) for i in ids] == bodies


def test_connection_close_is_honoured(served: ServedRouter) -> None:
    with connect(served) as sock:
        sock.sendall(request(b'{"case": "close"}', "Connection: close"))
        reader = Reader(sock)
        status, headers, _ = reader.answer()
        assert status == 200
        assert headers["connection"] == "close"
        assert reader.closed()


def test_a_refusal_keeps_the_connection_for_the_next_request(served: ServedRouter) -> None:
    body = b'{"case": "refused then taken"}'
    with connect(served) as sock:
        reader = Reader(sock)
        sock.sendall(request(body, "X-Hub-Signature-256: sha256=" + "0" * 64, path="/hooks/signed"))
        status, headers, answer = reader.answer()
        assert status == 401 and json.loads(answer)["error"] == "unauthorized"
        assert headers["connection"] == "keep-alive"
        sock.sendall(request(body, "X-Hub-Signature-256: sha256=" + sign_hmac(body, HMAC_SECRET), path="/hooks/signed"))
        status, _, answer = reader.answer()
        assert status == 200, answer
        assert served.event_body(json.loads(answer)["event_id"]) == body


def test_an_event_whose_client_left_before_the_answer_is_still_stored(served: ServedRouter) -> None:
    body = json.dumps({"case": f"gone-{time.time_ns()}"}).encode()
    sock = connect(served)
    sock.sendall(request(body))
    sock.close()  # gone before the commit answers

    def stored() -> bool:
        return served.events_with_body(body) == 1

    wait_until(stored, timeout=15, what="the event of the client that left to be stored")
    with connect(served) as other:  # and the worker still serves
        other.sendall(request(b'{"case": "after"}'))
        assert Reader(other).answer()[0] == 200


def test_eight_kept_alive_connections_are_shared_between_the_two_workers(served: ServedRouter) -> None:
    workers = worker_pids(served)
    seen: set[int | None] = set()

    def both_serving() -> bool:
        # a worker still booting takes no connection, and rightly: wait until each has taken one
        with connect(served) as sock:
            sock.sendall(request(b'{"case": "warm-up"}'))
            Reader(sock).answer()  # kept alive, so the worker still holds it
            seen.add(accepted_by(sock, workers))
        return set(workers) <= seen

    wait_until(both_serving, timeout=30, interval=0.01, what="both workers to take a connection")
    socks = [connect(served) for _ in range(8)]
    try:
        for sock in socks:  # one request on each, kept alive: each stays with the worker that took it
            sock.sendall(request(b'{"case": "share"}'))
            assert Reader(sock).answer()[0] == 200
        owners = [accepted_by(sock, workers) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    counts = sorted(owners.count(pid) for pid in workers)
    assert None not in owners and sum(counts) == 8
    assert counts[0] >= 2, f"one worker took {counts[1]} of 8 connections and the other {counts[0]}"


# --------------------------------------------------------------------------- the parser, in process

CFG = Limits(SimpleNamespace(limit_request_line=8190, limit_request_fields=100, limit_request_field_size=8190))


def test_a_writer_holding_the_store_does_not_stop_the_workers_loop(tmp_path) -> None:
    """SQLite, where the loop commits itself: while another process holds the store's write lock
    for longer than the loop waits for it (lane.LOCK_WAIT), the batch goes to a thread, and the
    loop goes on answering everything else; the event is answered, stored, once the lock is free."""
    from router.store import open_store

    server = ServedRouter(tmp_path, RULES, workers=1, files={"object.json": '{"type": "object"}'})
    server.start()
    holder = open_store(server.store_path, "fsync")  # its own flock, as another process's
    try:
        body = json.dumps({"case": f"held-{time.time_ns()}"}).encode()
        with connect(server) as sock:
            reader = Reader(sock)
            with holder.write_lock:  # type: ignore[attr-defined]
                sock.sendall(request(body))
                for _ in range(3):  # the one worker's loop answers while the commit waits for the lock
                    assert server.get("/healthz", timeout=10).status_code == 200
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(1)  # no answer before the event is committed
                sock.setblocking(True)
            status, _, answer = reader.answer()
        assert status == 200, answer
        assert server.event_body(json.loads(answer)["event_id"]) == body
    finally:
        holder.close()
        server.stop()


def test_a_program_holding_sqlites_lock_gets_events_503_while_the_loop_keeps_serving(tmp_path) -> None:
    """A program that holds SQLite's own lock (not ours): the loop gives the batch to a thread, which
    gives up after the store's busy timeout; the event is answered 503 (Retry-After, nothing
    stored), health checks are answered meanwhile, and events are taken again once the lock goes."""
    import sqlite3

    server = ServedRouter(tmp_path, RULES, workers=1, files={"object.json": '{"type": "object"}'})
    server.start()
    try:
        holder = sqlite3.connect(str(server.store_path), isolation_level=None, timeout=10)
        holder.execute("BEGIN IMMEDIATE")
        try:
            body = json.dumps({"case": f"locked-{time.time_ns()}"}).encode()
            with connect(server) as sock:
                sock.sendall(request(body))
                assert served_health(server)  # while the event waits for the lock
                status, headers, answer = Reader(sock).answer()
            assert status == 503 and headers.get("retry-after"), answer
            assert json.loads(answer)["error"] == "store_unavailable"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert server.events_with_body(body) == 0  # a 503 stored nothing
        wait_until(lambda: lane_answer(server) == 200, timeout=30, what="events to be taken again")
    finally:
        server.stop()


def test_a_worker_that_cannot_open_its_store_answers_503_in_its_loop_and_recovers(tmp_path) -> None:
    """A worker started while its store cannot be opened (here the database's path is a folder):
    the fast lane answers each event 503 rather than the loop failing, health checks are still
    answered, and once the store is back the same worker takes events again."""
    import os
    import signal

    server = ServedRouter(tmp_path, RULES, workers=1, files={"object.json": '{"type": "object"}'})
    server.start()
    db = server.store_path
    aside = db.with_name("aside")
    try:
        assert lane_answer(server) == 200
        (old,) = worker_pids(server)
        aside.mkdir()
        for name in (db.name, db.name + "-wal", db.name + "-shm"):
            if (db.parent / name).exists():
                (db.parent / name).rename(aside / name)
        db.mkdir()  # no database can be opened at this path
        os.kill(old, signal.SIGKILL)  # our own worker, by PID: the master starts another
        wait_until(lambda: bool(set(worker_pids(server)) - {old}) and served_health(server),
                   timeout=40, what="a replacement worker to answer /healthz")
        assert lane_answer(server) == 503
        assert served_health(server)
        db.rmdir()
        for moved in aside.iterdir():
            moved.rename(db.parent / moved.name)
        wait_until(lambda: lane_answer(server) == 200, timeout=30, what="the worker to take events again")
    finally:
        server.stop()


def lane_answer(server: ServedRouter) -> int:
    """The status of one plain event sent over a fresh connection (the fast lane's way)."""
    with connect(server) as sock:
        sock.sendall(request(json.dumps({"case": f"probe-{time.time_ns()}"}).encode()))
        status, _, answer = Reader(sock).answer()
    if status == 503:
        assert json.loads(answer)["error"] == "store_unavailable", answer
    return status


def served_health(server: ServedRouter) -> bool:
    try:
        return server.get("/healthz", timeout=10).status_code == 200
    except OSError:
        return False


def test_a_plain_request_is_parsed_and_what_follows_it_is_left() -> None:
    one = request(b'{"a": 1}', "X-Hub-Signature-256: sha256=ab", path="/hooks/x?token=t%20k")
    parsed = parse(one + b"POST /next", 1024, CFG)
    assert parsed is not None
    req, used = parsed
    assert used == len(one)
    assert (req.path, req.query, req.body, req.close) == ("/hooks/x", "token=t%20k", b'{"a": 1}', False)
    assert req.headers["x-hub-signature-256"] == "sha256=ab"
    assert req.headers["content-length"] == "8"


@pytest.mark.parametrize("raw", [
    request(b"{}", "Transfer-Encoding: chunked"),
    request(b"{}", "Expect: 100-continue"),
    request(b"{}", "X-A: 1", "X-A: 2"),
    request(b"{}", "X_Underscore: 1"),
    request(b"{}", "X-Folded: a", " continued"),
    request(b"{}", "X-Control: a\x01b"),
    request(b"{}", "X-Bare: a\nX-Other: b"),
    request(b"{}", "X-Space : a"),
    request(b"{}", ": no name"),
    request(b"{}", "X-Forwarded-Proto: https"),
    request(b"{}", "Connection: upgrade"),
    request(b"{}", path="/hooks/%6Fpen"),
    request(b"{}").replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    request(b"{}").replace(b"POST", b"PUT", 1),
    request(b"{}").replace(b"Content-Length: 2", b"Content-Length: +2"),
    request(b"x" * 2000),  # over the limit: the ordinary path answers 413
    request(b"{}").replace(b"\r\n\r\n", b"\r\n\r\n", 1)[:-1],  # the body is not all here
    b"POST /hooks/x HTTP/1.1\r\nHost: h\r\n\r\n",  # no Content-Length
], ids=["chunked", "expect", "repeated", "underscore", "folded", "control", "bare-lf", "space-in-name", "no-name",
        "scheme-header", "upgrade", "percent", "http10",
        "put", "signed-length", "too-large", "incomplete", "no-length"])
def test_what_the_lane_does_not_fully_understand_goes_the_ordinary_way(raw: bytes) -> None:
    assert parse(raw, 1024, CFG) is None


# --------------------------------------------------------------------------- the balance table

def test_a_worker_accepts_only_while_it_holds_at_most_one_more_than_every_other() -> None:
    table = Table()
    table.publish(0, 4)
    table.publish(1, 2)
    assert not table.may_accept(0, 4)  # worker 1 holds two fewer: it takes the next one
    assert table.may_accept(1, 2)
    assert table.may_accept(0, 3)  # one more than the other: still accepts (no two hold back at once)
    assert table.may_accept(0, 0)  # a worker holding nothing always accepts
    table.leave(1)  # stopped (or silent too long): no longer counted
    assert table.may_accept(0, 4)
