"""The delivery HTTP client (router/actions/client.py), and its failures as `http.send` reports them.

Against real servers on 127.0.0.1 written here over raw sockets, one or more per test, each in its
own threads, so that every byte on the wire is the test's choice: keep-alive reuse and the answers
after which a connection must not be reused, the request exactly as sent, the framings of an answer
(Content-Length, chunked, delimited by the close, interim 1xx answers), and each way a request fails
(reset, refused, timed out, garbage, untrusted TLS certificate, invalid URL or header).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import ipaddress
import os
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import wait_until

from router.actions import client, http
from router.errors import DeliveryError

KEEP = 512  # bytes of an answer kept (http.MAX_ERROR_BODY)
DRAIN = 65536  # the most of an answer's rest read so that its connection can be reused (http.MAX_DRAIN)
TIMEOUT = 2.0  # the action timeout of a request that is answered
SAFETY = 5.0  # no socket operation of a test server waits longer than this; nor does any wait of a test


# --- the servers -----------------------------------------------------------------------------------


@dataclass
class Request:
    """One request as a server read it off the wire."""

    lines: list[bytes]  # the request line, then each header line, without their CRLF
    body: bytes

    def headers(self, name: bytes) -> list[bytes]:
        """The values of every header line called `name` (any case), as sent."""
        found = []
        for line in self.lines[1:]:
            key, _, value = line.partition(b":")
            if key.lower() == name.lower():
                found.append(value.strip())
        return found


class Peer:
    """One connection a RawServer accepted, as its handler sees it."""

    def __init__(self, server: RawServer, sock: socket.socket, index: int):
        self.server = server
        self.sock = sock
        self.index = index  # 0 for the server's first connection, 1 for its second...
        self._buffer = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)

    def read_request(self) -> Request | None:
        """The next request whole (its body by its Content-Length), or None if the client closed first."""
        while b"\r\n\r\n" not in self._buffer:
            if not self._fill():
                return None
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = 0
        for line in lines[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value)
        while len(self._buffer) < length:
            if not self._fill():
                return None
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        request = Request(lines, body)
        self.server.record(request)
        return request

    def send(self, *parts: bytes) -> None:
        """Each part in its own send call."""
        for part in parts:
            self.sock.sendall(part)

    def wait_closed(self) -> None:
        """Return once the client has closed its end, dropping whatever it sends until then."""
        while self._fill():
            self._buffer = b""

    def close(self) -> None:
        self.sock.close()


Handler = Callable[[Peer], None]


class RawServer:
    """A TCP (or TLS) server on 127.0.0.1, port 0: each connection is given to `handler` in a thread
    of its own. Counts the connections it accepted and records the requests its handlers read.

    Leaving the `with` block stops it: the accepting thread is woken by a connection of its own, every
    accepted socket is shut down (which ends a handler's read), and every thread is joined."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None):
        self.handler = handler
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[Request] = []
        self.handshake_failures = 0
        self.failures: list[BaseException] = []  # what a handler raised, other than a socket error
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name=f"accept-{self.port}", daemon=True)

    def url(self, path: str = "/") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def __enter__(self) -> RawServer:
        self._acceptor.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            if self._stopping.is_set():
                sock.close()
                return
            sock.settimeout(SAFETY)
            with self._lock:
                index = self.connections
                self.connections += 1
                self._socks.append(sock)
                thread = threading.Thread(target=self._serve, args=(sock, index), name=f"conn-{self.port}-{index}",
                                          daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, index: int) -> None:
        try:
            if self.tls is not None:
                with self._lock:  # the wrapped socket takes over the descriptor: shut that one down at the end
                    sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                    self._socks.append(sock)
                try:
                    sock.do_handshake()
                except OSError:  # ssl.SSLError included: the client refused the certificate
                    with self._lock:
                        self.handshake_failures += 1
                    return
            self.handler(Peer(self, sock, index))
        except OSError:
            pass  # the client closed or reset the connection: its right
        except BaseException as exc:  # noqa: B036 - reported by __exit__, in the test's thread
            with self._lock:
                self.failures.append(exc)
        finally:
            sock.close()

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=SAFETY).close()  # wakes accept()
        self._acceptor.join(SAFETY)
        self.listener.close()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for sock in socks:
            with contextlib.suppress(OSError):  # one already closed by its handler
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(SAFETY)
        for sock in socks:
            sock.close()
        alive = [t.name for t in [self._acceptor, *threads] if t.is_alive()]
        assert not alive, f"server threads still running: {alive}"
        assert not self.failures, f"a handler failed: {self.failures!r}"


REASONS = {100: "Continue", 103: "Early Hints", 200: "OK", 201: "Created", 204: "No Content", 500: "Server Error"}


def answer(status: int = 200, body: bytes = b"ok", *headers: str, version: str = "HTTP/1.1") -> bytes:
    """An answer with a Content-Length, and `headers` (each "Name: value")."""
    lines = [f"{version} {status} {REASONS.get(status, 'Whatever')}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def each_request(reply: Callable[[Request], bytes] = lambda request: answer()) -> Handler:
    """A handler that answers every request of its connection with `reply(request)`, and keeps it open."""

    def handle(peer: Peer) -> None:
        while (request := peer.read_request()) is not None:
            peer.send(reply(request))

    return handle


def first_connection(first: Handler, then: Handler | None = None) -> Handler:
    """A handler that runs `first` on the server's first connection and `then` on each later one."""
    later = then or each_request()
    return lambda peer: first(peer) if peer.index == 0 else later(peer)


@pytest.fixture
def serve() -> Iterator[Callable[..., RawServer]]:
    """serve(handler, tls=None) -> a running RawServer, stopped (threads joined) when the test ends."""
    with contextlib.ExitStack() as stack:
        yield lambda handler, tls=None: stack.enter_context(RawServer(handler, tls))


@pytest.fixture(autouse=True)
def no_idle_connections() -> Iterator[None]:
    """The client's pool belongs to the process: close what a test left in it, so no socket outlives it."""
    yield
    pool = client._the_pool()
    with pool.lock:
        idle = [conn for conns in pool.idle.values() for conn in conns]
        pool.idle.clear()
    for conn in idle:
        conn.close()


def post(server: RawServer, path: str = "/", body: bytes = b"{}", headers: dict[str, str | bytes] | None = None,
         timeout: float = TIMEOUT) -> tuple[int, dict[str, str], bytes]:
    return client.request("POST", server.url(path), headers or {}, body, timeout, KEEP, DRAIN)


def send(url: str, headers: dict[str, str] | None = None, timeout: float = TIMEOUT) -> http.Answer:
    """Through http.send, as the forward and slack actions send (no redirects followed)."""
    return http.send("POST", url, headers=headers or {}, data=b"{}", timeout=timeout)


# --- keep-alive --------------------------------------------------------------------------------------


def test_sequential_requests_share_one_kept_alive_connection(serve: Callable[..., RawServer]) -> None:
    server = serve(each_request(lambda request: answer(200, b"got " + request.body)))
    results = [post(server, body=b"event %d" % i) for i in range(20)]
    assert [status for status, _, _ in results] == [200] * 20
    assert [content for _, _, content in results] == [b"got event %d" % i for i in range(20)]
    assert [request.body for request in server.requests] == [b"event %d" % i for i in range(20)]
    assert server.connections == 1


def test_a_kept_alive_connection_the_server_closed_while_idle_is_replaced(serve: Callable[..., RawServer]) -> None:
    closed = threading.Event()

    def answer_once_then_close(peer: Peer) -> None:
        peer.read_request()
        peer.send(answer(200, b"first"))  # HTTP/1.1 with a length: the client may keep the connection
        peer.close()
        closed.set()

    server = serve(first_connection(answer_once_then_close, each_request(lambda request: answer(200, b"second"))))
    assert post(server)[::2] == (200, b"first")
    assert closed.wait(SAFETY)
    assert post(server)[::2] == (200, b"second")
    assert server.connections == 2
    assert len(server.requests) == 2  # the second request arrived once, on the new connection


@pytest.mark.parametrize(
    ("version", "header", "kept"),
    [("HTTP/1.1", "Connection: close", False), ("HTTP/1.0", None, False), ("HTTP/1.0", "Connection: keep-alive", True)],
    ids=["1.1-close", "1.0", "1.0-keep-alive"],
)
def test_the_answer_says_whether_its_connection_is_reused(serve: Callable[..., RawServer], version: str,
                                                          header: str | None, kept: bool) -> None:
    client_closed = threading.Event()

    def handle(peer: Peer) -> None:
        while peer.read_request() is not None:
            peer.send(answer(200, b"ok", *([header] if header else []), version=version))
            if not kept:  # the server leaves the connection open: closing it is the client's part
                peer.wait_closed()
                client_closed.set()
                return

    server = serve(handle)
    assert post(server)[0] == 200
    assert post(server)[0] == 200
    assert server.connections == (1 if kept else 2)
    if not kept:
        assert client_closed.wait(SAFETY)


# --- the request on the wire ---------------------------------------------------------------------------


def test_the_request_bytes(serve: Callable[..., RawServer]) -> None:
    server = serve(each_request())
    body = b'{"caf\xc3\xa9": 1}\r\n\x00\xff trailing  '
    headers: dict[str, str | bytes] = {
        "X-Mixed-Case": "Value  with\ttwo  spaces",
        "Content-Type": b"application/json; charset=latin-1",
        "X-Latin": "caf\xe9",
        "X-Raw-Bytes": b"\xe2\x9c\x93 utf-8",
        "content-length": "999",  # the client's own, the body's length, replaces a caller's
    }
    status, _, _ = post(server, "/hooks/in?a=1&b=two%20words", body, headers)
    assert status == 200
    (request,) = server.requests
    assert request.lines[0] == b"POST /hooks/in?a=1&b=two%20words HTTP/1.1"
    assert request.headers(b"host") == [b"127.0.0.1:%d" % server.port]
    assert request.headers(b"content-length") == [b"%d" % len(body)]
    assert request.headers(b"accept-encoding") == [b"identity"]
    for line in (b"X-Mixed-Case: Value  with\ttwo  spaces", b"Content-Type: application/json; charset=latin-1",
                 b"X-Latin: caf\xe9", b"X-Raw-Bytes: \xe2\x9c\x93 utf-8"):
        assert line in request.lines
    assert request.body == body


def test_a_host_header_given_replaces_the_urls(serve: Callable[..., RawServer]) -> None:
    server = serve(each_request())
    assert post(server, headers={"Host": "hooks.example.test"})[0] == 200
    (request,) = server.requests
    assert request.headers(b"host") == [b"hooks.example.test"]


@pytest.mark.parametrize(
    "headers",
    [{"X-Bad": "a\r\nX-Injected: 1"}, {"X-Bad": b"a\nX-Injected: 1"}, {"X-Bad": "a\rb"}, {"X-Bad\r\nX-Injected": "1"},
     {"X-Bad:": "1"}],
    ids=["crlf-str", "lf-bytes", "cr", "crlf-in-name", "colon-in-name"],
)
def test_a_header_that_would_break_the_request_is_refused(serve: Callable[..., RawServer],
                                                          headers: dict[str, str]) -> None:
    server = serve(each_request())
    with pytest.raises(client.InvalidURL):
        post(server, headers=headers)
    with pytest.raises(DeliveryError) as caught:
        send(server.url(), headers)
    assert caught.value.retryable is False
    assert str(caught.value).startswith("invalid request")
    assert server.connections == 0  # refused before anything was sent


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/x", "file:///etc/passwd", "127.0.0.1:8080/x", "http:///path", "http://", "https://:443/",
     "http://127.0.0.1:99999/", "http://127.0.0.1/a b"],
)
def test_a_url_that_is_not_http_or_https_with_a_host_is_refused(url: str) -> None:
    with pytest.raises(client.InvalidURL):
        client.request("POST", url, {}, b"{}", TIMEOUT, KEEP, DRAIN)
    with pytest.raises(DeliveryError) as caught:
        send(url)
    assert caught.value.retryable is False
    assert str(caught.value).startswith("invalid request")


# --- the framings of an answer ---------------------------------------------------------------------------


def test_a_chunked_answer_is_dechunked_and_its_connection_reused(serve: Callable[..., RawServer]) -> None:
    def chunked(peer: Peer) -> None:
        while peer.read_request() is not None:
            peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"4\r\nWiki\r\n",
                      b"5;name=value\r\npedia\r\n", b"E\r\n in\r\n\r\nchunks.\r\n", b"0\r\nX-Trailer: yes\r\n\r\n")

    server = serve(chunked)
    for _ in range(2):
        status, headers, content = post(server)
        assert (status, content) == (200, b"Wikipedia in\r\n\r\nchunks.")
        assert headers["transfer-encoding"] == "chunked"
    assert server.connections == 1


def test_a_chunked_answer_larger_than_keep_and_drain_closes_its_connection(serve: Callable[..., RawServer]) -> None:
    piece = bytes(i % 251 for i in range(16384))

    def big_chunked(peer: Peer) -> None:
        peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(8):  # 128 KiB, more than KEEP + DRAIN
            peer.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
        peer.send(b"0\r\n\r\n")
        peer.wait_closed()

    server = serve(first_connection(big_chunked))
    status, _, content = post(server)
    assert (status, content) == (200, piece[:KEEP])
    assert post(server)[::2] == (200, b"ok")
    assert server.connections == 2


@pytest.mark.parametrize(("length", "kept"), [(200_000, False), (2000, True), (KEEP + DRAIN, True)])
def test_an_answer_is_drained_only_when_its_rest_is_small(serve: Callable[..., RawServer], length: int,
                                                          kept: bool) -> None:
    body = bytes(i % 251 for i in range(length))
    server = serve(first_connection(each_request(lambda request: answer(200, body))))
    status, headers, content = post(server)
    assert (status, headers["content-length"], content) == (200, str(length), body[:KEEP])
    assert post(server)[::2] == (200, body[:KEEP] if kept else b"ok")
    assert server.connections == (1 if kept else 2)


def test_an_answer_delimited_by_the_close_is_read_and_its_connection_not_reused(
        serve: Callable[..., RawServer]) -> None:
    def without_length(peer: Peer) -> None:
        peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"no length, ", b"ends with the close")
        peer.close()

    server = serve(first_connection(without_length))
    assert post(server)[::2] == (200, b"no length, ends with the close")
    assert post(server)[::2] == (200, b"ok")
    assert server.connections == 2


@pytest.mark.parametrize(
    "interims",
    [[b"HTTP/1.1 100 Continue\r\n\r\n"],
     [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"]],
    ids=["100", "100-103"],
)
def test_interim_answers_are_skipped_for_the_final_one(serve: Callable[..., RawServer],
                                                       interims: list[bytes]) -> None:
    def interim_first(peer: Peer) -> None:
        while peer.read_request() is not None:
            peer.send(*interims, answer(200, b"done", "X-Final: yes"))

    server = serve(interim_first)
    for _ in range(2):
        status, headers, content = post(server)
        assert (status, content, headers.get("x-final")) == (200, b"done", "yes")
        assert "link" not in headers  # the headers are the final answer's
    assert server.connections == 1


# --- failures ----------------------------------------------------------------------------------------------


def assert_says_nothing_of_the_destination(message: str, server: RawServer) -> None:
    for secret in ("127.0.0.1", str(server.port), "http", "/hooks"):
        assert secret not in message


def test_a_server_that_closes_without_answering_is_a_connection_reset(serve: Callable[..., RawServer]) -> None:
    def read_and_close(peer: Peer) -> None:
        peer.read_request()
        peer.close()

    server = serve(read_and_close)
    with pytest.raises(client.TransportError) as caught:
        post(server, "/hooks/secret-token")
    assert str(caught.value) == "connection reset"
    assert len(server.requests) == 1  # not sent again on a new connection: this one was fresh

    with pytest.raises(DeliveryError) as failed:
        send(server.url("/hooks/secret-token"))
    assert failed.value.retryable is True
    assert str(failed.value) == "connection reset"
    assert_says_nothing_of_the_destination(str(failed.value), server)


def test_a_server_that_never_answers_times_out(serve: Callable[..., RawServer]) -> None:
    def never_answer(peer: Peer) -> None:
        peer.read_request()
        peer.wait_closed()

    server = serve(never_answer)
    started = time.monotonic()
    with pytest.raises(client.TransportError) as caught:
        post(server, timeout=0.4)
    elapsed = time.monotonic() - started
    assert str(caught.value) == "timed out waiting for the response"
    assert 0.3 <= elapsed < SAFETY

    started = time.monotonic()
    with pytest.raises(DeliveryError) as failed:
        send(server.url("/hooks/secret-token"), timeout=0.3)
    assert time.monotonic() - started < SAFETY
    assert (str(failed.value), failed.value.retryable) == ("timed out waiting for the response", True)
    assert_says_nothing_of_the_destination(str(failed.value), server)


def test_a_closed_port_is_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(client.TransportError) as caught:
        client.request("POST", f"http://127.0.0.1:{port}/", {}, b"{}", TIMEOUT, KEEP, DRAIN)
    assert str(caught.value) == "connection refused"
    with pytest.raises(DeliveryError) as failed:
        send(f"http://127.0.0.1:{port}/hooks/secret-token")
    assert (str(failed.value), failed.value.retryable) == ("connection refused", True)


@pytest.mark.parametrize(
    "garbage",
    [b"hello\r\n\r\n", b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 2OO OK\r\n\r\n", b"HTTP/2 200\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"],
    ids=["hello", "ssh", "letters-in-status", "http2", "header-without-colon"],
)
def test_garbage_instead_of_an_answer_is_a_broken_connection(serve: Callable[..., RawServer],
                                                             garbage: bytes) -> None:
    def say_garbage(peer: Peer) -> None:
        peer.read_request()
        peer.send(garbage)
        peer.wait_closed()

    server = serve(say_garbage)
    with pytest.raises(client.TransportError) as caught:
        post(server)
    assert str(caught.value) == "connection broken"


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server TLS context whose certificate (for 127.0.0.1 and localhost) is signed by its own key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder: Path = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


def test_an_untrusted_certificate_is_a_tls_error(serve: Callable[..., RawServer],
                                                  self_signed: ssl.SSLContext) -> None:
    server = serve(each_request(), self_signed)
    started = time.monotonic()
    with pytest.raises(client.TransportError) as caught:
        post(server)
    assert str(caught.value) == "TLS error"
    assert time.monotonic() - started < SAFETY
    with pytest.raises(DeliveryError) as failed:
        send(server.url("/hooks/secret-token"))
    assert (str(failed.value), failed.value.retryable) == ("TLS error", True)
    wait_until(lambda: server.handshake_failures == 2, timeout=SAFETY, what="both handshakes to end on the server")
    assert server.requests == []


# --- kept-alive connections that must not be reused, or must be ------------------------------------------


def test_keep_alive_survives_descriptor_numbers_above_1024(serve: Callable[..., RawServer]) -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("needs a limit of at least 1200 open files")
    server = serve(each_request())
    gc.collect()  # no lower descriptor freed later by the collector: the client's socket is above 1024
    fillers: list[int] = []
    try:
        while not fillers or fillers[-1] < 1100:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        assert post(server)[0] == 200
        assert post(server)[0] == 200
    finally:
        for fd in fillers:
            os.close(fd)
    assert server.connections == 1


@pytest.mark.parametrize(
    "first",
    [b"HTTP/1.1 204 No Content\r\n\r\n{}",  # a body on a 204, which cannot have one
     answer(200, b"ok") + answer(500, b"stale")],  # more than its Content-Length: here a whole second answer
    ids=["body-on-204", "beyond-content-length"],
)
def test_bytes_beyond_an_answer_are_not_taken_for_the_next_answer(serve: Callable[..., RawServer],
                                                                  first: bytes) -> None:
    def overrun(peer: Peer) -> None:
        peer.read_request()
        peer.send(first if peer.index == 0 else answer(201, b"second"))  # in one send: read whole, in one recv
        while peer.read_request() is not None:
            peer.send(answer(201, b"second"))

    server = serve(overrun)
    assert post(server)[0] in (200, 204)
    assert post(server)[::2] == (201, b"second")  # on a new connection: the stale bytes went with the old one
    assert server.connections == 2
