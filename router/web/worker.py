"""The gunicorn classes `router serve` runs; plain gunicorn can be given them too:

    gunicorn 'router.wsgi:app' --worker-class router.web.worker.RouterWorker --threads 8 \
        --logger-class router.web.worker.JsonLogger

RouterWorker: gthread, with every request read whole before a thread is given to it. gunicorn's
gthread worker hands a connection to one of its threads as soon as the connection is accepted (or
a kept-alive one turns readable), and that thread then blocks reading the request. A client that
sends its headers or body one byte a second, or opens connections and sends nothing, so holds a
thread each: 2 workers x 8 threads were taken by 17 trickling clients, and every other client
waited. Here the worker's own event loop (the poller gunicorn already runs for kept-alive
connections) reads each request, head and body, without blocking, and a thread gets the
connection only once the whole request is in memory. A slow client costs a buffer and a deadline,
not a thread; it gets 408 (or, having sent nothing, a plain close) when its deadline passes.
Bodies larger than BUFFER_LIMIT are handed over once their head is in, and the hook endpoint's
own body deadline bounds the rest.

RouterWorker and SyncRouterWorker (gunicorn's sync worker) answer the requests gunicorn itself
refuses (a bad request line, a bad or repeated Content-Length, a bad header name, a 414) with the
router's JSON error body instead of gunicorn's HTML page.

JsonLogger sends gunicorn's own lines (its error log and, when enabled, its access log) through
the router's JSON logger and its redactor, so every line the service prints is one JSON object
and a secret in a request line gunicorn quotes (`?token=...`) is never shown.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import re
import selectors
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.glogging import Logger
from gunicorn.http import errors as http_errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker
from gunicorn.workers.sync import SyncWorker

from router import logs
from router.web.endpoint import json_bytes
from router.web.lane import FastLane

REQUEST_TIMEOUT = float(os.environ.get("ROUTER_BODY_TIMEOUT", "10"))  # seconds for a whole request to arrive
BUFFER_LIMIT = 1024 * 1024 + 64 * 1024  # read at most this much per request before handing it to a thread
RECHECK = 0.005  # seconds: how often a worker held back by the balance table looks at it again
HEAD_LIMIT = 64 * 1024  # a head this long without its blank line goes to gunicorn's parser, which refuses it

_HEAD_END = b"\r\n\r\n"
_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_EXPECT_CONTINUE = re.compile(rb"^expect[ \t]*:[ \t]*100-continue[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_CHUNKED = re.compile(rb"^transfer-encoding[ \t]*:.*chunked", re.IGNORECASE | re.MULTILINE)


def request_complete(buf: bytes | bytearray) -> bool:
    """Whether `buf` holds a whole HTTP/1.x request (or enough that gunicorn's parser can decide).

    Anything malformed counts as complete: gunicorn's parser then answers it as it always does."""
    end = buf.find(_HEAD_END)
    if end < 0:
        return len(buf) > HEAD_LIMIT
    head = bytes(buf[:end + 2])
    start = end + 4
    if _CHUNKED.search(head):
        return _chunked_complete(buf, start)
    lengths = _LENGTH.findall(head)
    if not lengths:
        return True  # no body
    if len(set(lengths)) != 1:
        return True  # conflicting lengths: the parser refuses them
    return len(buf) - start >= int(lengths[0]) or len(buf) >= BUFFER_LIMIT


def _wants_continue(buf: bytes | bytearray) -> bool:
    end = buf.find(_HEAD_END)
    return end >= 0 and _EXPECT_CONTINUE.search(bytes(buf[:end + 2])) is not None


def _chunked_complete(buf: bytes | bytearray, pos: int) -> bool:
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return len(buf) >= BUFFER_LIMIT
        size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return True  # broken framing: the parser answers 400
        if size == 0:
            # the last chunk, then trailers (usually none) up to an empty line
            return buf.find(b"\r\n\r\n", line_end) >= 0 or buf.endswith(b"0\r\n\r\n")
        pos = line_end + 2 + size + 2
        if pos > len(buf):
            return len(buf) >= BUFFER_LIMIT


class RouterConn(TConn):
    """A connection that carries the bytes read for it before a thread took it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffered = bytearray()
        self.deadline = 0.0
        self.ready = False  # a whole request is buffered: the next enqueue gives it a thread
        self.continued = False  # we answered its `Expect: 100-continue`
        self.idle = False  # kept alive by the fast lane, waiting for its next request

    def init(self) -> None:
        super().init()
        if self.buffered:
            assert self.parser is not None
            self.parser.unreader.unread(bytes(self.buffered))
            self.buffered = bytearray()


_LEVELS = {"critical": "error", "error": "error", "warning": "warning", "info": "info", "debug": "debug"}
_NUMERIC = {50: "error", 40: "error", 30: "warning", 20: "info", 10: "debug"}


class JsonLogger(Logger):
    """gunicorn's logger, writing the router's JSON lines (redacted): its error log to stderr, where
    the router's own lines go, and its access log (when `--access-logfile` is given, whatever its
    value) to stdout. gunicorn's `--error-logfile`, `--access-logformat` and syslog options do not
    apply: redirect the process's output instead (systemd's journal does)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        _capture_uncaught()
        _capture_logging()

    def setup(self, cfg: Any) -> None:
        self.cfg = cfg
        self._access_log_enabled = self._compute_access_log_enabled()
        self.loglevel = self.LOG_LEVELS.get(cfg.loglevel.lower(), 20)
        if cfg.loglevel.lower() == "debug":
            logs.setup(level="debug")

    def _line(self, level: str, msg: Any, args: tuple, extra: dict[str, Any] | None = None) -> None:
        text = str(msg)
        if args:
            try:
                text = text % args
            except (TypeError, ValueError):
                text = " ".join([text, *map(str, args)])
        logs.log(level, _no_query(text), source="gunicorn", **(extra or {}))

    def critical(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._line("error", msg, args)

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._line("error", msg, args)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._line("warning", msg, args)

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._line("info", msg, args)

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._line("debug", msg, args)

    def exception(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._line("error", msg, args, {"traceback": _no_query(traceback.format_exc())})

    def log(self, lvl: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
        level = _LEVELS.get(lvl.lower(), "info") if isinstance(lvl, str) else _NUMERIC.get(int(lvl), "info")
        self._line(level, msg, args)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        # the path without its query string: a `token` may ride there
        logs.access("request", source="gunicorn.access", method=environ.get("REQUEST_METHOD"),
                  path=environ.get("PATH_INFO"), status=int(status) if str(status).isdigit() else status,
                  bytes=getattr(resp, "sent", None), client=environ.get("REMOTE_ADDR"),
                  latency_ms=round(request_time.total_seconds() * 1000, 2))

    def reopen_files(self) -> None:
        pass  # nothing of ours to reopen: lines go to stderr

    def close_on_exec(self) -> None:
        pass


_QUERY = re.compile(r"(/[^\s?'\"/]*)\?[^\s'\"]+")  # a path's query string (no '/' in the segment: linear time)


def _no_query(text: str) -> str:
    """gunicorn quotes request lines; their query strings may carry a token the redactor does not know."""
    return _QUERY.sub(r"\1?<query>", text)


def _capture_uncaught() -> None:
    """An exception no one caught is one JSON line too, not a bare traceback on stderr."""

    def thread_hook(args: Any) -> None:
        if args.exc_type is SystemExit:
            return
        text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        logs.error("uncaught exception in a thread", thread=getattr(args.thread, "name", None),
                   traceback=_no_query(text))

    def process_hook(exc_type: Any, exc: Any, tb: Any) -> None:
        logs.error("uncaught exception", traceback=_no_query("".join(traceback.format_exception(exc_type, exc, tb))))

    threading.excepthook = thread_hook
    sys.excepthook = process_hook


class _ToJson(logging.Handler):
    """What libraries log through `logging` (urllib3's pool warnings, Python's warnings), as JSON lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = _NUMERIC.get(record.levelno - record.levelno % 10, "info")
            extra = {"traceback": _no_query(self.formatException(record.exc_info))} if record.exc_info else {}
            logs.log(level, _no_query(record.getMessage()), source=record.name, **extra)
        except Exception:  # logging must never fail the caller
            pass

    def formatException(self, exc_info: Any) -> str:  # noqa: N802 - logging's name
        return "".join(traceback.format_exception(*exc_info))


def _capture_logging() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _ToJson) for h in root.handlers):
        root.addHandler(_ToJson())
        if root.level == logging.NOTSET or root.level > logging.WARNING:
            root.setLevel(logging.WARNING)
    logging.captureWarnings(True)


# --------------------------------------------------------------------------- JSON answers for gunicorn's refusals


def _error_class(name: str) -> type | None:
    return getattr(http_errors, name, None)  # some exist only in newer gunicorn releases


# gunicorn's exception -> (status, error code, message); the message never quotes the request
_REFUSALS: list[tuple[str, int, str, str]] = [
    ("InvalidResponseHeader", 500, "internal_error", "internal error"),  # the application's fault, not the client's
    ("InvalidResponseHeaderName", 500, "internal_error", "internal error"),
    ("InvalidRequestLine", 400, "invalid_request_line", "the request line is not valid HTTP/1.1"),
    ("InvalidRequestMethod", 400, "invalid_method", "the request method is not valid"),
    ("InvalidHTTPVersion", 400, "invalid_http_version", "the HTTP version is not supported"),
    ("InvalidHeaderName", 400, "invalid_header_name", "a header name is not valid"),
    ("ObsoleteFolding", 400, "invalid_header", "obsolete line folding in a header"),
    ("InvalidHeader", 400, "invalid_header", "a header is not valid or is repeated"),
    ("LimitRequestLine", 414, "uri_too_long", "the request line is too long"),
    ("LimitRequestHeaders", 431, "headers_too_large", "too many headers, or a header too large"),
    ("UnsupportedTransferCoding", 501, "unsupported_transfer_encoding", "only Transfer-Encoding: chunked is accepted"),
    ("ExpectationFailed", 417, "expectation_failed", "the Expect header cannot be met"),
    ("InvalidChunkSize", 400, "invalid_body", "the body's chunked framing is broken"),
    ("ChunkMissingTerminator", 400, "invalid_body", "the body's chunked framing is broken"),
    ("InvalidChunkExtension", 400, "invalid_body", "the body's chunked framing is broken"),
    ("ForbiddenProxyRequest", 403, "forbidden", "request forbidden"),
    ("InvalidProxyLine", 400, "bad_request", "the PROXY protocol line is not valid"),
    ("InvalidSchemeHeaders", 400, "bad_request", "contradictory scheme headers"),
    ("InvalidH2CPreface", 400, "bad_request", "not an HTTP/2 connection preface"),
    ("ConfigurationProblem", 500, "internal_error", "internal error"),
]
_TABLE = [(cls, status, code, message) for name, status, code, message in _REFUSALS
          if (cls := _error_class(name)) is not None]


def refusal_for(exc: BaseException) -> tuple[int, str, str]:
    """(status, error code, message) for an exception gunicorn raised while reading a request."""
    for cls, status, code, message in _TABLE:
        if isinstance(exc, cls):
            if cls.__name__ == "InvalidHeader":
                name = str(getattr(exc, "hdr", "") or "")
                if re.fullmatch(r"[A-Za-z0-9-]{1,40}", name):
                    message = f"header {name.title()} is not valid or is repeated"
            return status, code, message
    if isinstance(exc, http_errors.ParseException):
        return 400, "bad_request", "the request is not valid HTTP/1.1"
    try:
        from ssl import SSLError
    except ImportError:  # pragma: no cover - Python without ssl
        SSLError = ()  # type: ignore[assignment,misc]  # noqa: N806
    if isinstance(exc, SSLError):
        return 403, "forbidden", "TLS handshake failed"
    return 500, "internal_error", "internal error"


def _detail(exc: BaseException) -> str:
    """What gunicorn said, for the log: a header's name only when it is a plain token (a line
    without a colon is quoted whole by gunicorn, and may be `Authorization Bearer ...`), and no
    query string."""
    hdr = getattr(exc, "hdr", None)
    if isinstance(hdr, str):
        shown = hdr if re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}", hdr) else f"<{len(hdr)} characters, not shown>"
        return f"{type(exc).__name__}: {shown}"
    return _no_query(str(exc))[:200]


def json_error(status: int, code: str, message: str) -> bytes:
    body = json_bytes({"error": code, "message": message}) + b"\n"
    reason = {400: "Bad Request", 403: "Forbidden", 414: "URI Too Long", 417: "Expectation Failed",
              431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented"}
    head = (f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class JsonErrors:
    """gunicorn's `handle_error`, answering in the router's JSON and logging one line that says why."""

    log: Any
    cfg: Any

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        started = datetime.now()
        addr = addr or ("", -1)  # a unix socket has no address
        status, code, message = refusal_for(exc)
        if status == 500:
            self.log.exception("error handling request")
        else:
            logs.info("request refused", source="gunicorn", status=status, check="http", error=code,
                      reason=message, detail=_detail(exc), exception=type(exc).__name__,
                      client=addr[0] if isinstance(addr, tuple) else str(addr))
        if req is None:
            req = getattr(exc, "req", None)  # the request line was read: it goes into the access log
        if req is not None and getattr(self.log, "access_log_enabled", False):
            try:
                environ = default_environ(req, client, self.cfg)
                environ["REMOTE_ADDR"] = addr[0]
                environ["REMOTE_PORT"] = str(addr[1])
                environ.setdefault("PATH_INFO", getattr(req, "path", None))
                resp = Response(req, client, self.cfg)
                resp.status = f"{status} {code}"
                resp.response_length = 0
                self.log.access(resp, req, environ, datetime.now() - started)
            except Exception:  # a half-parsed request may lack what the access line needs
                pass
        try:
            util.write_nonblock(client, json_error(status, code, message))
        except Exception:
            self.log.debug("failed to send the error answer")


class RouterWorker(JsonErrors, ThreadWorker):
    """gthread that reads requests in its event loop and gives threads only whole requests, and
    answers what gunicorn refuses in JSON (what `router serve` runs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading: dict[RouterConn, None] = {}  # connections being read (or kept alive by the fast lane)
        self.lane: FastLane | None = None
        self._beat = 0.0
        self._balanced_at = (-1, 0.0, True)  # (connections held, when, answer) of the last look at the table
        self._next_sweep = 0.0

    def accept(self, listener: socket.socket) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        table = getattr(self, "balance", None)
        if table is not None:
            table.publish(self.balance_slot, self.nr_conns)  # at once: the others decide on it
        conn = RouterConn(self.cfg, client_sock, client_addr, listener.getsockname())
        self.enqueue_req(conn)

    def enqueue_req(self, conn: Any) -> None:
        if conn.ready:
            conn.ready = False
            if self.lane is not None and self.lane.take(conn):
                return  # answered in this loop (see lane.py)
            conn.data_ready = True  # gthread must not wait for data again: it is all here
            super().enqueue_req(conn)
            return
        if conn.parser is not None:  # a kept-alive connection: what the last read took ahead is ours
            conn.buffered += conn.parser.unreader.take_buffered()
        conn.deadline = time.monotonic() + REQUEST_TIMEOUT
        if request_complete(conn.buffered):
            conn.ready = True
            self.enqueue_req(conn)
            return
        conn.sock.setblocking(False)
        self.reading[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: RouterConn, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._drop(conn)
            return
        if conn.idle:  # a kept-alive connection's next request begins: it has its own deadline
            conn.idle = False
            conn.deadline = time.monotonic() + REQUEST_TIMEOUT
        conn.buffered += data
        if request_complete(conn.buffered):
            self._stop_reading(conn)
            conn.ready = True
            self.enqueue_req(conn)
        elif not conn.continued and _wants_continue(conn.buffered):
            # the client waits for this before it sends the body (gunicorn sends its own 100
            # again later; a client reads any number of 1xx answers before the final one)
            conn.continued = True
            try:
                sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                pass

    def _stop_reading(self, conn: RouterConn) -> None:
        self.reading.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass

    def _drop(self, conn: RouterConn, answer: Callable[[RouterConn], None] | None = None) -> None:
        self._stop_reading(conn)
        if answer is not None:
            answer(conn)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 0.05  # deadlines are seconds long: a sweep each turn of the loop is waste
        for conn in [c for c in self.reading if c.deadline <= now]:
            # a client that sent part of a request is told why; one that sent nothing is just closed
            self._drop(conn, _answer_timeout if conn.buffered else None)

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and not self._may_accept():
            enabled = False  # another worker holds fewer connections: it takes the next one (balance.py)
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            # stopping: connections that have sent nothing get nothing; the rest keep their deadline
            for conn in [c for c in self.reading if not c.buffered]:
                self._drop(conn)

    def _may_accept(self) -> bool:
        """The balance table's answer, asked again when this worker's count changed or RECHECK passed."""
        table = getattr(self, "balance", None)
        if table is None:
            return True
        now = time.monotonic()
        held, when, answer = self._balanced_at
        if held != self.nr_conns or now - when > RECHECK:
            answer = table.may_accept(self.balance_slot, self.nr_conns)
            self._balanced_at = (self.nr_conns, now, answer)
        return answer

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        table = getattr(self, "balance", None)
        if table is not None:
            if self.alive:
                table.publish(self.balance_slot, self.nr_conns)
                room = self.nr_conns < self.worker_connections
                self.set_accept_enabled(room)  # asks the table (balance.py)
                if room and not self._accepting:
                    # held back for another worker: look again soon, not after gunicorn's 1 s poll,
                    # so connections never wait in the backlog on a stale count
                    timeout = min(timeout, RECHECK)
            else:
                table.leave(self.balance_slot)  # stopping: the others must not wait for this one
        super().wait_for_and_dispatch_events(timeout)
        if self.lane is not None:
            self.lane.flush()  # what this round of the loop admitted goes to the store together

    def next_request(self, conn: RouterConn) -> None:
        """After the fast lane answered: read the next request, or keep the connection alive.

        A kept-alive connection waits for its next request among those being read (one poller
        registration, not gthread's keep-alive list and then the reading list), for gunicorn's
        keep-alive timeout; its first byte starts the request's own deadline."""
        if conn.buffered:  # the client sent its next request already
            self.enqueue_req(conn)
            return
        conn.sock.setblocking(False)
        linger = self.cfg.keepalive if self.alive else min(self.cfg.keepalive, STOP_KEEPALIVE_LINGER)
        conn.deadline = time.monotonic() + linger
        conn.idle = True
        self.reading[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def notify(self) -> None:
        # gunicorn's heartbeat is a syscall on a temporary file each turn of the loop; the master
        # only looks for one every `timeout / 2` seconds, so a few a second are plenty
        now = time.monotonic()
        if now - self._beat >= 0.2:
            self._beat = now
            super().notify()

    def close_conn(self, conn: RouterConn, graceful: bool = False) -> None:
        """Close a connection the fast lane answered, without blocking the loop: send FIN, take what
        the client already sent (so the kernel has no reason to answer it with a reset), close."""
        self.nr_conns -= 1
        if graceful:
            try:
                conn.sock.shutdown(socket.SHUT_WR)
                conn.sock.setblocking(False)
                for _ in range(16):
                    if not conn.sock.recv(65536):
                        break
            except OSError:
                pass
        util.close(conn.sock)

    def run(self) -> None:
        self.lane = FastLane.for_worker(self)
        # what the app loaded (rules, schemas, templates, libraries) lives as long as the worker:
        # out of the collector's reach, a full collection no longer walks it (14 ms, a tail of p99)
        gc.collect()
        gc.freeze()
        try:
            super().run()
        finally:
            if self.lane is not None:
                self.lane.stop()
        for conn in list(self.reading):  # the worker has stopped: nobody will read these now
            self._drop(conn)


def _answer_timeout(conn: RouterConn) -> None:
    head_done = conn.buffered.find(_HEAD_END) >= 0
    code, message = ("body_timeout", "the body did not arrive in time") if head_done else \
        ("request_timeout", "the request did not arrive in time")
    client = conn.client[0] if isinstance(conn.client, tuple) else str(conn.client)
    logs.info("request refused", source="router.worker", status=408, check="request_deadline", error=code,
              reason=message, deadline_s=REQUEST_TIMEOUT, client=client)
    body = json.dumps({"error": code, "message": message}).encode()
    response = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    try:
        conn.sock.send(response)  # non-blocking, best effort: the answer is far smaller than a socket buffer
    except OSError:
        pass


class SyncRouterWorker(JsonErrors, SyncWorker):
    """gunicorn's sync worker, answering its refusals in JSON. (Not named `...SyncWorker`: given
    `--threads` above 1, gunicorn swaps any worker class so named for its own gthread.)"""


__all__ = ["JsonLogger", "SyncRouterWorker", "RouterWorker", "json_error", "refusal_for"]
