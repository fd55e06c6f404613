"""Real HTTP servers on 127.0.0.1 that stand in for destinations: they record every request and
answer as scripted (Downstream, ScriptedServer, PathServer), as Slack documents (SlackStandIn), or
drop the connection (Resetter)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Recorded:
    method: str
    path: str  # including any query string
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes | str = b"ok"
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/plain"})
    delay: float = 0.0  # seconds before answering, to exercise the router's timeouts


class HttpServer:
    """A real HTTP/1.1 server on 127.0.0.1 that records every request and answers through `respond`.

    Subclasses decide the answer; recording, waiting and lifecycle are shared. A Reply's `delay`
    makes it hang that long before answering (a slow destination, not a test wait).
    """

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = self.headers.get("Content-Length")
                if length is not None:
                    body = self.rfile.read(int(length))
                elif "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    body = self._read_chunked()
                else:
                    body = b""
                rec = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with outer._cond:
                    reply = outer.respond(rec)
                    outer.requests.append(rec)
                    outer._cond.notify_all()
                if reply.delay:
                    time.sleep(reply.delay)  # a simulated slow server, not a test wait
                payload = reply.body.encode("utf-8") if isinstance(reply.body, str) else reply.body
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up waiting (its timeout): that is what a delay is for
                self.close_connection = True

            def _read_chunked(self) -> bytes:
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True)

    def respond(self, rec: Recorded) -> Reply:  # called with the lock held
        return Reply()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + path

    def start(self) -> Any:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def to(self, path: str) -> list[Recorded]:
        with self._cond:
            return [r for r in self.requests if r.path.split("?")[0] == path]

    def wait_for(self, n: int = 1, timeout: float = 15.0, path: str | None = None,
                 where: Callable[[Recorded], bool] | None = None) -> list[Recorded]:
        """Block until at least n matching requests have arrived; return all matching ones."""

        def matching() -> list[Recorded]:
            return [r for r in self.requests
                    if (path is None or r.path.split("?")[0] == path) and (where is None or where(r))]

        end = time.monotonic() + timeout
        with self._cond:
            while len(matching()) < n:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {n} request(s) to {path or 'any path'} within {timeout}s, got "
                                         f"{len(matching())}: {[(r.method, r.path) for r in self.requests]}")
                self._cond.wait(left)
            return list(matching())


class Downstream(HttpServer):
    """Answers as scripted: `script(Reply(...), ...)` queues answers used in order; when the queue is
    empty `default` answers. `wait_for(n)` blocks (with a deadline) until n requests have arrived."""

    def __init__(self, default: Reply | None = None):
        super().__init__()
        self.default = default or Reply()
        self._queue: deque[Reply] = deque()

    def respond(self, rec: Recorded) -> Reply:
        return self._queue.popleft() if self._queue else self.default

    def script(self, *replies: Reply) -> None:
        with self._cond:
            self._queue.extend(replies)

    def clear(self) -> None:
        with self._cond:
            self.requests.clear()
            self._queue.clear()


class ScriptedServer(HttpServer):
    """Answers per path: queued replies first (`script`), then the path's default, then 200 `ok`."""

    def __init__(self) -> None:
        super().__init__()
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._defaults: dict[str, Reply] = {}

    def script(self, path: str, *replies: Reply, then: Reply | None = None) -> None:
        with self._cond:
            self._scripts[path].extend(replies)
            if then is not None:
                self._defaults[path] = then

    def respond(self, rec: Recorded) -> Reply:
        path = rec.path.split("?")[0]
        queued = self._scripts.get(path)
        if queued:
            return queued.popleft()
        return self._defaults.get(path, Reply())


class SlackStandIn(HttpServer):
    """Slack's incoming-webhook contract, as documented, for a few webhooks:

    - a known webhook answers 200 with the body `ok` to a JSON object with `text` or `blocks`;
      a body that is not such an object gets 400 `invalid_payload` (or `no_text`);
    - more than one message per `min_interval` seconds to one webhook gets 429 with `Retry-After: 1`;
    - webhooks for a deleted or archived channel answer 404 `channel_not_found` / 410 `channel_is_archived`;
      a revoked one answers 403 `invalid_token`; an unknown path answers 404 `no_service`.

    `script(path, Reply...)` overrides the next answers of one webhook (e.g. a 429 Slack chose to send).
    """

    GONE = {
        "/services/T000/B000/deleted": Reply(404, "channel_not_found"),
        "/services/T000/B000/archived": Reply(410, "channel_is_archived"),
        "/services/T000/B000/revoked": Reply(403, "invalid_token"),
        "/services/T000/B000/broken": Reply(400, "invalid_payload"),
    }

    def __init__(self, min_interval: float = 0.0) -> None:
        super().__init__()
        self.min_interval = min_interval
        self.hooks: set[str] = set()
        self._last: dict[str, float] = {}
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self.rate_limited: list[Recorded] = []  # 429s the limiter (not a script) sent

    def hook(self, name: str) -> str:
        """Register a working webhook and return its path."""
        path = f"/services/T000/B000/{name}"
        self.hooks.add(path)
        return path

    def script(self, path: str, *replies: Reply) -> None:
        with self._cond:
            self._scripts[path].extend(replies)

    def respond(self, rec: Recorded) -> Reply:
        path = rec.path.split("?")[0]
        if self._scripts.get(path):
            return self._scripts[path].popleft()
        if path in self.GONE:
            return self.GONE[path]
        if path not in self.hooks:
            return Reply(404, "no_service")
        last = self._last.get(path)
        self._last[path] = rec.at
        if last is not None and rec.at - last < self.min_interval:
            self.rate_limited.append(rec)
            return Reply(429, "rate_limited", headers={"Content-Type": "text/plain", "Retry-After": "1"})
        try:
            message = json.loads(rec.body)
        except ValueError:
            return Reply(400, "invalid_payload")
        if not isinstance(message, dict):
            return Reply(400, "invalid_payload")
        if not message.get("text") and not message.get("blocks"):
            return Reply(400, "no_text")
        return Reply(200, "ok")


def refused_url(path: str = "/") -> str:
    """A loopback URL where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}{path}"


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
