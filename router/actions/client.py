"""A small HTTP/1.1 client for delivery: pooled kept-alive connections, bounded reads, and
errors that say what failed without the URL.

Delivery throughput of `forward` and `slack` was bound by urllib3's own CPU: about 320 µs a
request on this project's 2-core benchmark machine, against 110 µs for http.client and 15 µs for
the socket calls themselves. What delivery needs is narrow (send one request with a body, read
the status, the headers and at most a few hundred bytes of the answer, keep the connection for
the next one), and this does that, with the standard library's ssl for HTTPS (certificates and
host names verified). Redirects are urllib3's business still (http.py), since following them
safely has rules of its own.
"""

from __future__ import annotations

import functools
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

MAX_IDLE = 32  # kept-alive connections per destination (scheme, host, port)
MAX_HEADERS = 100
MAX_LINE = 65536
CONNECT_CAP = 10.0  # seconds: a connect waits at most this, whatever the action's timeout


class TransportError(Exception):
    """The request failed on the way (retryable); the message names how, never the URL."""


class InvalidURL(Exception):
    pass


class _Timeout(Exception):
    pass


@functools.lru_cache(maxsize=512)
def target(url: str) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, request target, Host header) of an http or https URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidURL("the URL is not valid") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidURL(f"scheme '{scheme[:10]}' is not http or https")
    host = parts.hostname
    if not host:
        raise InvalidURL("the URL has no host")
    default = 443 if scheme == "https" else 80
    port = port or default
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidURL("the URL's host name is not valid") from None
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in path for c in "\r\n \t"):
        raise InvalidURL("the URL's path holds whitespace")
    return scheme, host, port, path, host_header


class _Conn:
    """A connection and what was read from it beyond what has been parsed (our own buffer, so that
    bytes a server sent beyond its answer are seen, and a read costs one recv)."""

    __slots__ = ("sock", "buf", "armed")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.armed = -1.0  # the socket timeout last set (setting it is a system call)

    def arm(self, deadline: _Deadline) -> None:
        left = deadline.end - time.monotonic()
        if left <= 0:
            raise _Timeout()
        if self.armed < 0 or self.armed > left * 1.25:  # a wait never outlasts the deadline by much
            self.sock.settimeout(left)
            self.armed = left

    def fill(self, deadline: _Deadline) -> bool:
        """Read what the socket has (waiting at most until the deadline); False at its end."""
        self.arm(deadline)
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _Pool:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self.tls: ssl.SSLContext | None = None

    def take(self, key: tuple[str, str, int]) -> _Conn | None:
        while True:
            with self.lock:
                conns = self.idle.get(key)
                conn = conns.pop() if conns else None
            if conn is None:
                return None
            if _dropped(conn):
                conn.close()
                continue
            return conn

    def give(self, key: tuple[str, str, int], conn: _Conn) -> None:
        with self.lock:
            conns = self.idle.setdefault(key, [])
            if len(conns) < MAX_IDLE:
                conns.append(conn)
                return
        conn.close()

    def context(self) -> ssl.SSLContext:
        if self.tls is None:
            self.tls = ssl.create_default_context()
        return self.tls


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _the_pool() -> _Pool:
    global _pool
    pool = _pool
    if pool is None or pool.pid != os.getpid():  # a forked child must not share its parent's sockets
        with _pool_lock:
            if _pool is None or _pool.pid != os.getpid():
                _pool = _Pool()
            pool = _pool
    return pool


def _dropped(conn: _Conn) -> bool:
    """A kept-alive connection the server closed, or wrote to unasked, while it sat idle: bytes in
    the socket (or an end of file), or bytes read beyond the last answer."""
    if conn.buf:
        return True
    try:
        poller = select.poll()  # not select(): it refuses descriptors from 1024 up
        poller.register(conn.sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _connect(scheme: str, host: str, port: int, timeout: float) -> _Conn:
    try:
        sock = socket.create_connection((host, port), timeout=min(timeout, CONNECT_CAP))
    except socket.gaierror:
        raise TransportError("host name did not resolve") from None
    except TimeoutError:
        raise TransportError("connection timed out") from None
    except ConnectionRefusedError:
        raise TransportError("connection refused") from None
    except OSError:
        raise TransportError("connection failed") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if scheme == "https":
        try:
            sock = _the_pool().context().wrap_socket(sock, server_hostname=host)
        except TimeoutError:
            sock.close()
            raise TransportError("connection timed out") from None
        except (ssl.SSLError, ssl.CertificateError):
            sock.close()
            raise TransportError("TLS error") from None
        except OSError:
            sock.close()
            raise TransportError("connection reset") from None
    return _Conn(sock)


def _head(method: str, path: str, host_header: str, headers: Mapping[str, str | bytes], length: int) -> bytes:
    names = {k.lower() for k in headers}
    lines = [f"{method} {path} HTTP/1.1".encode("ascii")]
    if "host" not in names:
        lines.append(b"Host: " + host_header.encode("ascii"))
    if "accept-encoding" not in names:
        lines.append(b"Accept-Encoding: identity")
    for name, value in headers.items():
        raw = value if isinstance(value, bytes) else value.encode("latin-1")  # as http.client encodes them
        key = name.encode("ascii")
        if b"\r" in raw or b"\n" in raw or b"\r" in key or b"\n" in key or b":" in key or not key:
            raise InvalidURL(f"header {name[:40]!r} is not valid")
        if name.lower() != "content-length":
            lines.append(key + b": " + raw)
    lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Deadline:
    __slots__ = ("end",)

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds


def request(method: str, url: str, headers: Mapping[str, str | bytes], body: bytes, timeout: float,
            keep: int, drain: int) -> tuple[int, dict[str, str], bytes]:
    """Send one request; (status, headers with lower-cased names, at most `keep` bytes of the body).

    An answer whose rest is at most `drain` bytes is read to its end and its connection kept for
    the next request; a larger one (or one without a length) closes its connection instead."""
    scheme, host, port, path, host_header = target(url)
    data = _head(method, path, host_header, headers, len(body)) + body
    key = (scheme, host, port)
    pool = _the_pool()
    deadline = _Deadline(timeout)
    for reused_attempt in (True, False):
        conn = pool.take(key) if reused_attempt else None
        reused = conn is not None
        if conn is None:
            conn = _connect(scheme, host, port, timeout)
        try:
            conn.armed = -1.0  # this request's own timeout, whatever the last one left set
            conn.arm(deadline)
            conn.sock.sendall(data)
            status, answer, content, keep_alive = _read_answer(conn, method, deadline, keep, drain)
        except (_Timeout, TimeoutError):
            conn.close()
            raise TransportError("timed out waiting for the response") from None
        except _Stale:
            conn.close()
            if reused:  # the server closed a kept-alive connection as we sent: once more, on a new one
                continue
            raise TransportError("connection reset") from None
        except (ssl.SSLError, ssl.CertificateError):
            conn.close()
            raise TransportError("TLS error") from None
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            conn.close()
            if reused:
                continue
            raise TransportError("connection reset") from None
        except (OSError, _Garbled):
            conn.close()
            raise TransportError("connection broken") from None
        if keep_alive:
            pool.give(key, conn)
        else:
            conn.close()
        return status, answer, content
    raise TransportError("connection reset")  # pragma: no cover - the loop returns or raises


class _Stale(Exception):
    """The connection ended before any byte of an answer."""


class _Garbled(Exception):
    """The answer is not HTTP/1.x."""


def _line(conn: _Conn, deadline: _Deadline) -> bytes:
    """The next line, with its end (b"" at the end of the connection, or what is left of it)."""
    while True:
        end = conn.buf.find(b"\n")
        if end >= 0:
            line = bytes(conn.buf[:end + 1])
            del conn.buf[:end + 1]
            return line
        if len(conn.buf) > MAX_LINE:
            raise _Garbled()
        if not conn.fill(deadline):
            line = bytes(conn.buf)
            conn.buf.clear()
            return line


def _read_answer(conn: _Conn, method: str, deadline: _Deadline, keep: int,
                 drain: int) -> tuple[int, dict[str, str], bytes, bool]:
    first = True
    while True:
        line = _line(conn, deadline)
        if not line:
            if first:
                raise _Stale()
            raise _Garbled()
        first = False
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
            raise _Garbled()
        version, status = parts[0], int(parts[1])
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            raw = _line(conn, deadline)
            if raw in (b"\r\n", b"\n"):
                break
            if not raw:
                raise _Garbled()
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                raise _Garbled()
            headers[name.strip().lower()] = value.strip()
        else:
            raise _Garbled()
        if 100 <= status < 200 and status != 101:
            continue  # an interim answer (100 Continue): the final one follows
        break
    connection = headers.get("connection", "").lower()
    keep_alive = ("close" not in connection) if version == b"HTTP/1.1" else ("keep-alive" in connection)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return status, headers, b"", keep_alive
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            content, whole = _chunked(conn, deadline, keep, drain)
            return status, headers, content, keep_alive and whole
        length_text = headers.get("content-length")
        if length_text is None or not length_text.isdigit():
            content = _read(conn, deadline, keep)
            return status, headers, content, False  # delimited by the close
        length = int(length_text)
        content = _read(conn, deadline, min(length, keep))
        rest = length - len(content)
        if len(content) < min(length, keep) or rest > drain:
            return status, headers, content, False
        if rest:
            got = len(_read(conn, deadline, rest))
            if got < rest:
                return status, headers, content, False
        return status, headers, content, keep_alive
    except (OSError, _Timeout, _Garbled):  # the status came: it counts; the connection does not
        return status, headers, b"", False


def _read(conn: _Conn, deadline: _Deadline, n: int) -> bytes:
    """Up to n bytes (fewer only at the end of the connection)."""
    while len(conn.buf) < n:
        if not conn.fill(deadline):
            break
    data = bytes(conn.buf[:n])
    del conn.buf[:n]
    return data


def _chunked(conn: _Conn, deadline: _Deadline, keep: int, drain: int) -> tuple[bytes, bool]:
    """The first `keep` bytes of a chunked body, and whether the body was read to its end."""
    kept: list[bytes] = []
    have = 0
    total = 0
    while True:
        size_line = _line(conn, deadline).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise _Garbled() from None
        if size == 0:
            while _line(conn, deadline) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(kept)[:keep], True
        total += size
        if total > keep + drain:
            return b"".join(kept)[:keep], False
        data = _read(conn, deadline, size)
        if len(data) < size:
            return b"".join(kept)[:keep], False
        if have < keep:
            kept.append(data)
            have += len(data)
        _line(conn, deadline)  # the CRLF after the chunk


__all__ = ["InvalidURL", "TransportError", "request", "target"]
