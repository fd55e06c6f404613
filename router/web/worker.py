"""The gunicorn worker `router serve` runs: gthread, with every request read whole before a thread is given to it.

gunicorn's gthread worker hands a connection to one of its threads as soon as the connection is
accepted (or a kept-alive one turns readable), and that thread then blocks reading the request.
A client that sends its headers or body one byte a second, or opens connections and sends
nothing, so holds a thread each: 2 workers x 8 threads were taken by 17 trickling clients, and
every other client waited. Here the worker's own event loop (the poller gunicorn already runs
for kept-alive connections) reads each request, head and body, without blocking, and a thread
gets the connection only once the whole request is in memory. A slow client costs a buffer and a
deadline, not a thread; it gets 408 (or, having sent nothing, a plain close) when its deadline
passes. Bodies larger than BUFFER_LIMIT are handed over once their head is in, and the hook
endpoint's own body deadline bounds the rest.

Plain gunicorn: `gunicorn --worker-class router.web.worker.RouterWorker 'router.wsgi:app'`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import selectors
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

REQUEST_TIMEOUT = float(os.environ.get("ROUTER_BODY_TIMEOUT", "10"))  # seconds for a whole request to arrive
BUFFER_LIMIT = 1024 * 1024 + 64 * 1024  # read at most this much per request before handing it to a thread
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

    def init(self) -> None:
        super().init()
        if self.buffered:
            assert self.parser is not None
            self.parser.unreader.unread(bytes(self.buffered))
            self.buffered = bytearray()


class RouterWorker(ThreadWorker):
    """gthread that reads requests in its event loop and gives threads only whole requests."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading: dict[RouterConn, None] = {}  # connections being read, in deadline order

    def accept(self, listener: socket.socket) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = RouterConn(self.cfg, client_sock, client_addr, listener.getsockname())
        self.enqueue_req(conn)

    def enqueue_req(self, conn: Any) -> None:
        if conn.ready:
            conn.ready = False
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
        for conn in [c for c in self.reading if c.deadline <= now]:
            # a client that sent part of a request is told why; one that sent nothing is just closed
            self._drop(conn, _answer_timeout if conn.buffered else None)

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            # stopping: connections that have sent nothing get nothing; the rest keep their deadline
            for conn in [c for c in self.reading if not c.buffered]:
                self._drop(conn)

    def run(self) -> None:
        super().run()
        for conn in list(self.reading):  # the worker has stopped: nobody will read these now
            self._drop(conn)


def _answer_timeout(conn: RouterConn) -> None:
    head_done = conn.buffered.find(_HEAD_END) >= 0
    code, message = ("body_timeout", "the body did not arrive in time") if head_done else \
        ("request_timeout", "the request did not arrive in time")
    body = json.dumps({"error": code, "message": message}).encode()
    response = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    try:
        conn.sock.send(response)  # non-blocking, best effort: the answer is far smaller than a socket buffer
    except OSError:
        pass
