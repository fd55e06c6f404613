"""Shared by the hostile-input test modules: raw sockets, worker liveness, log and store checks.

The running router is always the real one (`helpers.RouterServer`, a gunicorn master with its
workers); these helpers only look at it from outside: over TCP, through /proc and in its SQLite file.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from helpers import HttpServer, Reply, RouterServer, query_store, wait_until

# Every status the router documents for POST /hooks/<provider> (README "How an event flows").
DOCUMENTED_STATUSES = frozenset({200, 400, 401, 403, 404, 405, 408, 413, 422, 503})

FINAL_STATES = frozenset({"delivered", "dead"})


# --------------------------------------------------------------------------- polling


# --------------------------------------------------------------------------- processes


def worker_pids(server: RouterServer) -> list[int]:
    """The gunicorn workers: direct children of the master, read from /proc/<pid>/task/<tid>/children."""
    assert server.proc is not None and server.proc.poll() is None, "the gunicorn master is not running"
    master = server.proc.pid
    found: set[int] = set()
    for task in Path(f"/proc/{master}/task").glob("*"):
        try:
            found.update(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return sorted(found)


def healthz(server: RouterServer, timeout: float = 5.0) -> int:
    return requests.get(server.url + "/healthz", timeout=timeout).status_code


class WorkersSurvive:
    """`with WorkersSurvive(server): ...` - the same worker PIDs before and after, and /healthz answers."""

    def __init__(self, server: RouterServer):
        self.server = server
        self.before: list[int] = []

    def __enter__(self) -> WorkersSurvive:
        self.before = wait_until(lambda: worker_pids(self.server), timeout=10, what="gunicorn workers")
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is not None:
            return
        assert healthz(self.server) == 200
        after = worker_pids(self.server)
        assert after == self.before, (
            f"gunicorn workers changed (one died or was killed): before {self.before}, after {after}\n"
            + tail_log(self.server)
        )


# --------------------------------------------------------------------------- logs


_BAD_LOG = re.compile(r"Traceback|\"unexpected error\"|WORKER TIMEOUT|Worker \(pid:\d+\) was sent|"
                      r"Exception in worker process")


def log_problems(server: RouterServer, since: int = 0) -> list[str]:
    """Lines of the server's logs (from byte offset `since`) that show a crash or an unhandled error."""
    text = server.log_text()[since:]
    return [line for line in text.splitlines() if _BAD_LOG.search(line)]


def log_size(server: RouterServer) -> int:
    return len(server.log_text())


def tail_log(server: RouterServer, n: int = 3000) -> str:
    return "--- server log (tail)\n" + server.log_text()[-n:]


def assert_clean_log(server: RouterServer, since: int = 0) -> None:
    problems = log_problems(server, since)
    assert not problems, "the server logged a crash or an unhandled error:\n" + "\n".join(problems[:20]) + \
        "\n" + tail_log(server)


# --------------------------------------------------------------------------- raw HTTP over a socket


@dataclass
class RawResponse:
    status: int | None  # None: the server closed (or reset) without answering
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes = b""
    elapsed: float = 0.0
    error: str = ""

    def json(self) -> Any:
        import json

        return json.loads(self.body)


def _parse_response(data: bytes) -> tuple[int | None, dict[str, str], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None, {}, b""
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        return None, {}, b""
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        body = body[: int(length)]
    return int(m.group(1)), headers, body


def host_port(server: RouterServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def raw_request(server: RouterServer, head: bytes, parts: Iterable[bytes | float] = (), *,
                read_timeout: float = 15.0, source: str | None = None, keep_sending: bool = False) -> RawResponse:
    """Send `head` (request line and headers, ending in a blank line), then each of `parts`: bytes are
    sent, a float pauses that many seconds (a trickle). Reads the answer until the server closes the
    connection or `read_timeout` passes. A send failing because the server already answered and
    closed is expected (it refused early) and is not an error here.

    With `keep_sending`, `parts` may be long: sending stops as soon as an answer arrives."""
    started = time.monotonic()
    sock = socket.create_connection(host_port(server), timeout=read_timeout,
                                     source_address=(source, 0) if source else None)
    received = b""
    error = ""
    try:
        sock.sendall(head)
        for part in parts:
            if keep_sending:
                sock.setblocking(False)
                try:
                    chunk = sock.recv(65536)
                    if chunk:
                        received += chunk
                        break
                except BlockingIOError:
                    pass
                except OSError:
                    break
                finally:
                    sock.setblocking(True)
                    sock.settimeout(read_timeout)
            if isinstance(part, float):
                time.sleep(part)  # a trickling client, not a test wait
                continue
            try:
                sock.sendall(part)
            except OSError:  # the server answered early and closed: stop sending, read the answer
                break
        end = time.monotonic() + read_timeout
        while time.monotonic() < end:
            sock.settimeout(max(0.05, end - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                error = "read timed out"
                break
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
                break
            if not chunk:
                break
            received += chunk
            status, headers, body = _parse_response(received)
            length = headers.get("content-length")
            if status is not None and length is not None and length.isdigit() \
                    and len(body) >= int(length) and "close" not in headers.get("connection", "close"):
                break  # a complete answer on a kept-alive connection
    finally:
        sock.close()
    status, headers, body = _parse_response(received)
    return RawResponse(status, headers, body, received, time.monotonic() - started, error)


def post_head(path: str, headers: dict[str, str] | None = None, *, content_length: int | None = None,
              chunked: bool = False, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


# --------------------------------------------------------------------------- the store, read directly


query = query_store


JOB_COLUMNS = ("id", "rule", "action", "state", "attempts", "last_status", "last_error")
ATTEMPT_COLUMNS = ("n", "status", "error", "retryable")


def jobs_of(server: RouterServer, event_id: str) -> list[dict[str, Any]]:
    rows = query(server.store_path, f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs WHERE event_id = ? ORDER BY id",
                 (event_id,))
    return [dict(zip(JOB_COLUMNS, row)) for row in rows]


def attempts_of(server: RouterServer, job_id: int) -> list[dict[str, Any]]:
    rows = query(server.store_path, f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts WHERE job_id = ? ORDER BY n",
                 (job_id,))
    return [dict(zip(ATTEMPT_COLUMNS, row)) for row in rows]


def wait_settled(server: RouterServer, event_id: str, *, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Wait until every job of the event is delivered or dead; return the jobs."""

    def settled() -> list[dict[str, Any]] | None:
        jobs = jobs_of(server, event_id)
        return jobs if jobs and all(j["state"] in FINAL_STATES for j in jobs) else None

    try:
        return wait_until(settled, timeout=timeout, what=f"the jobs of {event_id} to be delivered or dead")
    except AssertionError as exc:
        jobs = jobs_of(server, event_id)
        attempts = {j["id"]: attempts_of(server, j["id"]) for j in jobs}
        raise AssertionError(f"{exc}\njobs: {jobs}\nattempts: {attempts}") from None


def events_count(server: RouterServer) -> int:
    rows = query(server.store_path, "SELECT count(*) FROM events")
    return rows[0][0] if rows else 0


def jobs_count(server: RouterServer) -> int:
    rows = query(server.store_path, "SELECT count(*) FROM jobs")
    return rows[0][0] if rows else 0


# --------------------------------------------------------------------------- downstreams that misbehave


class PathServer(HttpServer):
    """Answers per path (`replies`; 200 `ok` otherwise) and records every request. A Reply's
    `delay` makes it hang that long before answering."""

    def __init__(self, replies: dict[str, Any] | None = None):
        super().__init__()
        self.replies: dict[str, Any] = dict(replies or {})

    def respond(self, rec: Any) -> Any:
        return self.replies.get(rec.path.split("?")[0], Reply())

    def to(self, path: str, event_id: str | None = None) -> list[Any]:
        return [r for r in super().to(path) if event_id is None or r.headers.get("x-router-event-id") == event_id]


class Resetter:
    """A TCP listener on 127.0.0.1 that takes each connection, reads what arrives, then drops it
    without a word: `rst` aborts it (SO_LINGER 0, the peer sees ECONNRESET), otherwise a plain close."""

    def __init__(self, rst: bool):
        import struct
        import threading

        self.rst = rst
        self.accepted = 0
        self._linger = struct.pack("ii", 1, 0)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resetter", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            try:
                conn.settimeout(2)
                conn.recv(65536)
                if self.rst:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, self._linger)
            except OSError:
                pass
            finally:
                conn.close()

    def __enter__(self) -> Resetter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def store_open_by(pid: int, store: Path) -> bool:
    """True when the process has the SQLite file open (a worker that finished booting and delivers)."""
    target = str(Path(store).resolve())
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) == target:
                return True
        except OSError:
            continue
    return False
