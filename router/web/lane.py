"""The fast lane of `router serve`'s worker: plain signed events answered in its event loop.

RouterWorker's event loop already reads every request whole before anything else happens to it
(see worker.py). For the requests that make up nearly all of a router's traffic (a POST of a
whole body with a Content-Length to a hook path, in plain HTTP/1.1), handing the connection to a
thread, and there running gunicorn's parser, a WSGI environ and the endpoint, costs several times
the routing itself, and the threads then fight over one GIL. Here the loop does it all instead:

1. `parse` reads the buffered request, strictly. Anything it does not fully understand (another
   method or path, chunked or `Expect`, a duplicate or unusual header, a body larger than the
   limit, HTTP/1.0, a percent-encoded path, the headers gunicorn treats specially) is declined,
   and goes the ordinary way, where gunicorn and the endpoint answer it exactly as before.
2. The endpoint's `admit` authenticates, parses, validates and routes it, in the loop.
3. What one turn of the loop admitted is committed together, in one transaction and one sync.
   With SQLite the loop commits it itself (`store.ingest_now`): a commit there is a local write
   and a sync, and handing it to a thread cost more than it did (the thread's wake-up, then the
   answer's way back, each waiting for a core and the GIL: at concurrency 8 they doubled the
   commit's time and the context switches per request). The loop waits at most LOCK_WAIT for the
   store's write lock; when another writer holds it longer (a bulk replay, a program of the
   operator's), and always with PostgreSQL, whose commit is a round trip to a server that may
   stall, the batch goes to a committer thread (`store.ingest_many`) and the loop goes on
   reading and answering everything else; what queues meanwhile is the next batch.
4. Once the batch is durable, the loop writes each answer, the same bytes the ordinary path
   would send, logs and counts it, and keeps the connection alive as gunicorn would.

Every answer still comes only after the event is committed and synced.
"""

from __future__ import annotations

import queue
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from gunicorn import SERVER

from router import logs, metrics
from router.errors import StoreUnavailable
from router.model import IngestResult
from router.pipeline.ingest import Accepted, Incoming
from router.web.endpoint import REASONS, Answer, HookEndpoint, error_answer, json_bytes, parse_query

LOCK_WAIT = 0.01  # the longest the loop waits for the store's write lock before a thread commits instead
_REQUEST_LINE = re.compile(rb"POST (/[A-Za-z0-9/._~!$&'()*+,;=:@-]*)(?:\?([!-\"$-~]*))? HTTP/1\.1")
_TOKEN = b"!#$%&'*+.^`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-"  # a header name's bytes
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")  # all but tab, and CRLF line ends
# headers whose meaning gunicorn or the endpoint handle beyond a name and a value: declined
_SPECIAL = frozenset({"transfer-encoding", "expect", "upgrade", "http2-settings", "te", "trailer", "forwarded",
                      "x-forwarded-proto", "x-forwarded-protocol", "x-forwarded-ssl", "proxy-connection"})


class Request:
    __slots__ = ("path", "query", "headers", "body", "close", "started")

    def __init__(self, path: str, query: str, headers: dict[str, str], body: bytes, close: bool):
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.close = close
        self.started = time.perf_counter()


class Limits:
    """gunicorn's request limits, read once (its Config looks each one up through __getattr__)."""

    __slots__ = ("line", "fields", "field")

    def __init__(self, cfg: Any):
        self.line = cfg.limit_request_line or 1 << 30
        self.fields = cfg.limit_request_fields
        self.field = cfg.limit_request_field_size or 1 << 30


def parse(buf: bytes | bytearray, max_body: int, limits: Limits) -> tuple[Request, int] | None:
    """The request at the start of `buf` and the bytes it took, or None to decline it."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buf[:head_end])
    if _CONTROL.search(head) is not None:
        return None  # a control character, or a CR or LF that does not end a line
    lines = head.split(b"\r\n")
    line = lines[0]
    if len(line) > limits.line or len(lines) - 1 > limits.fields:
        return None
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        return None
    field_limit = limits.field
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        name_bytes, sep, value = raw.partition(b":")
        # no name, a name that is not a token (an underscore, a space: obsolete folding), too long
        if not sep or not name_bytes or name_bytes.translate(None, _TOKEN) or len(raw) > field_limit:
            return None
        name = name_bytes.decode("ascii").lower()
        if name in headers or name in _SPECIAL:
            return None
        headers[name] = value.strip(b" \t").decode("latin-1")
    length_text = headers.get("content-length")
    if length_text is None or not length_text.isdigit() or not length_text.isascii() or len(length_text) > 12:
        return None
    length = int(length_text)
    if length > max_body:
        return None  # the ordinary path answers 413 (and reads no further)
    start = head_end + 4
    if len(buf) - start < length:
        return None
    connection = headers.get("connection")
    close = False
    if connection is not None:
        token = connection.lower()
        if token not in ("keep-alive", "close"):
            return None
        close = token == "close"
    body = bytes(buf[start:start + length])
    query = m.group(2).decode("ascii") if m.group(2) is not None else ""
    return Request(m.group(1).decode("ascii"), query, headers, body, close), start + length


class _Date:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.text = b""

    def __call__(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.text = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(second)).encode("ascii")
        return self.text


def response_bytes(answer: Answer, close: bool, date: bytes) -> tuple[bytes, bool]:
    """The answer as the ordinary path sends it (gunicorn's head, then the endpoint's), and whether
    the connection closes after it."""
    status, value, extra = answer
    body = json_bytes(value) + b"\n"
    close = close or any(k.lower() == "connection" and v.lower() == "close" for k, v in extra)
    head = [b"HTTP/1.1 %s\r\nServer: %s\r\nDate: %s\r\nConnection: %s\r\n" % (
        REASONS.get(status, f"{status} Unknown").encode(), SERVER.encode(), date,
        b"close" if close else b"keep-alive")]
    head.append(b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body))
    head.extend(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")) for k, v in extra
                if k.lower() != "connection")
    return b"".join(head) + b"\r\n" + body, close


class _Pending:
    __slots__ = ("conn", "request", "admitted")

    def __init__(self, conn: Any, request: Request, admitted: Accepted):
        self.conn = conn
        self.request = request
        self.admitted = admitted


class FastLane:
    """Answers plain hook requests in the worker's event loop (see the module's text)."""

    def __init__(self, worker: Any, endpoint: HookEndpoint):
        self.worker = worker
        self.endpoint = endpoint
        self.limits = Limits(worker.cfg)
        self.keepalive = worker.cfg.keepalive
        self.date = _Date()
        self.queued: list[_Pending] = []
        self.committing = False  # a batch is with the committer thread
        self._batches: queue.SimpleQueue[list[_Pending] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None  # started for a store that must not commit in the loop
        self.access = bool(getattr(worker.log, "access_log_enabled", False))

    @classmethod
    def for_worker(cls, worker: Any) -> FastLane | None:
        """The lane, where this worker's app is the router's and nothing in gunicorn's settings
        (TLS, the PROXY protocol, a SCRIPT_NAME, request hooks) changes how a request is read."""
        endpoint = getattr(getattr(worker, "wsgi", None), "wsgi_app", None)
        if not isinstance(endpoint, HookEndpoint):
            return None
        cfg = worker.cfg
        proxy = getattr(cfg, "proxy_protocol", False)
        if cfg.is_ssl or proxy not in (False, None, "off", "none") or (cfg.env or {}).get("SCRIPT_NAME") \
                or getattr(cfg, "script_name", None):
            return None
        from router.web.worker import JsonLogger  # the access line is written the way JsonLogger writes it
        if getattr(worker.log, "access_log_enabled", False) and not isinstance(worker.log, JsonLogger):
            return None
        return cls(worker, endpoint)

    # ------------------------------------------------------------------ in the event loop

    def take(self, conn: Any) -> bool:
        """Answer the whole request buffered on `conn` here, or decline it (False)."""
        state = self.endpoint.state
        parsed = parse(conn.buffered, state.config.settings.max_body_bytes, self.limits)
        if parsed is None:
            return False
        request, used = parsed
        provider = self.endpoint.provider_for(request.path)
        if provider is None:
            return False  # Flask's 404 or 405
        if not isinstance(conn.client, tuple):
            return False
        del conn.buffered[:used]
        incoming = Incoming(provider=provider, body=request.body, headers=request.headers,
                            query=parse_query(request.query), remote_addr=conn.client[0],
                            content_type=request.headers.get("content-type"), query_string=request.query)
        try:
            admitted = self.endpoint.admit(incoming, request.started)
        except Exception as exc:  # what the endpoint answers for any other bug of ours
            logs.error("unexpected error", error=f"{type(exc).__name__}: {exc}")
            admitted = error_answer(500, "internal_error", "internal error")
        if isinstance(admitted, Accepted):
            self.queued.append(_Pending(conn, request, admitted))
        else:
            self._answer(conn, request, admitted)
        return True

    def flush(self) -> None:
        """Commit what queued: here, where the store allows it, or by the committer thread, unless
        that is still busy with the last batch."""
        while self.queued and not self.committing:  # answering may admit a request a client pipelined
            batch, self.queued = self.queued, []
            try:
                results = self.endpoint.state.store.ingest_now([item.admitted.event for item in batch], LOCK_WAIT)
            except Exception as exc:  # the store could not even be opened: each is told to retry
                results = _unavailable(exc, len(batch))
            if results is not None:
                self._answer_batch(batch, results)
                continue
            self.committing = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._commit_loop, name="router-commit", daemon=True)
                self._thread.start()
            self._batches.put(batch)

    def _committed(self, batch: list[_Pending], results: list[IngestResult | Exception]) -> None:
        """The committer thread's batch is durable (in the loop again)."""
        self.committing = False
        self._answer_batch(batch, results)
        self.flush()

    def _answer_batch(self, batch: list[_Pending], results: list[IngestResult | Exception]) -> None:
        answers: list[Answer] = []
        with metrics.batched():  # counted before anyone is answered
            for item, result in zip(batch, results):
                try:
                    answers.append(self.endpoint.stored(item.admitted, result, item.request.started))
                except Exception as exc:
                    logs.error("unexpected error", error=f"{type(exc).__name__}: {exc}")
                    answers.append(error_answer(500, "internal_error", "internal error"))
        for item, answer in zip(batch, answers):
            self._answer(item.conn, item.request, answer)

    def _answer(self, conn: Any, request: Request, answer: Answer) -> None:
        worker = self.worker
        worker.nr += 1
        if worker.nr >= worker.max_requests and worker.alive:
            worker.log.info("Autorestarting worker after current request.")
            worker.alive = False
        close = (request.close or not worker.alive or not self.keepalive
                 or len(worker.keepalived_conns) >= worker.max_keepalived)
        data, close = response_bytes(answer, close, self.date())
        if self.access:
            logs.access("request", source="gunicorn.access", method="POST", path=request.path, status=answer[0],
                        bytes=len(data), client=conn.client[0],
                        latency_ms=round((time.perf_counter() - request.started) * 1000, 2))
        self._send(conn, data, lambda: self._after(conn, close))

    def _send(self, conn: Any, data: bytes, then: Callable[[], None]) -> None:
        try:
            conn.sock.setblocking(False)
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.worker.close_conn(conn)
            return
        if sent == len(data):
            then()
            return
        rest = memoryview(data)[sent:]  # a client not reading its answers: wait until it does

        def writable(sock: socket.socket) -> None:
            nonlocal rest
            try:
                n = sock.send(rest)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.worker.poller.unregister(sock)
                self.worker.close_conn(conn)
                return
            rest = rest[n:]
            if not rest:
                self.worker.poller.unregister(sock)
                then()

        self.worker.poller.register(conn.sock, selectors.EVENT_WRITE, writable)

    def _after(self, conn: Any, close: bool) -> None:
        if close:
            self.worker.close_conn(conn, graceful=True)
        else:
            self.worker.next_request(conn)

    # ------------------------------------------------------------------ the committer thread

    def _commit_loop(self) -> None:
        while True:
            batch = self._batches.get()
            if batch is None:
                return
            try:
                results = self.endpoint.state.store.ingest_many([item.admitted.event for item in batch])
            except Exception as exc:
                results = _unavailable(exc, len(batch))
            self.worker.method_queue.defer(self._committed, batch, results)

    def stop(self) -> None:
        if self._thread is not None:
            self._batches.put(None)


def _unavailable(exc: Exception, n: int) -> list[IngestResult | Exception]:
    return [StoreUnavailable(f"the store could not commit: {type(exc).__name__}: {exc}")] * n


__all__ = ["FastLane", "parse", "response_bytes"]
