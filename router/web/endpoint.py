"""The hook endpoint, POST /hooks/<provider> and each provider's extra paths, as plain WSGI.

It is the one hot path of the service, so it runs in front of Flask rather than inside it: a
request context, URL map and Response object cost more than the rest of the routing does.
Everything else (health, readiness, metrics, the 404s and 405s) is Flask's. The request is read
exactly as Flask would read it (werkzeug's own input-stream and content-length helpers), and the
answers are the same JSON.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from werkzeug.sansio.utils import get_content_length
from werkzeug.wsgi import get_input_stream

from router import logs, metrics
from router.errors import RequestError, SchemaError, StoreUnavailable
from router.model import IngestResult
from router.pipeline.ingest import Accepted, Handshake, Incoming, accept, client_address
from router.web.state import RouterState

READ_CHUNK = 64 * 1024
OUTCOMES = {400: "invalid", 401: "unauthorized", 403: "forbidden", 408: "body_timeout", 413: "too_large",
            422: "schema_invalid", 501: "invalid"}
REASONS = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}

Answer = tuple[int, dict[str, Any], list[tuple[str, str]]]  # status, JSON body, extra headers
StartResponse = Callable[..., Any]


class BodyTimeout(Exception):
    pass


class BadFraming(Exception):
    pass


_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # one encoder, not one per answer


def json_bytes(value: Any) -> bytes:
    return _compact(value).encode("utf-8")


def respond(start_response: StartResponse, status: int, value: Any, headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    body = json_bytes(value) + b"\n"  # as Flask's jsonify ends its answers: a curl prompt starts on its own line
    start_response(REASONS.get(status, f"{status} Unknown"),
                   [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers])
    return [body]


def error_answer(status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None) -> Answer:
    return status, {"error": code, "message": message}, headers or []


class BodyDeadlines:
    """Holds every body read of this process to its deadline, however the bytes trickle.

    A socket timeout bounds one recv(), not a read: gunicorn's body reader loops over recv()
    until it has the size it was asked for, so a client sending a byte a second never trips a
    10 s timeout. One watchdog thread per process shuts the read side of any socket whose body
    is still being read at its deadline; the blocked recv() then returns at once (end of file)
    and the request is answered 408 on the still-open write side.
    """

    IDLE_WAKE = 1.0  # seconds the watchdog sleeps with nothing to watch (a new read's deadline is later)

    def __init__(self) -> None:
        self._after_fork()
        os.register_at_fork(after_in_child=self._after_fork)  # the watchdog thread does not survive a fork

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a plain lock: this is on every request's path
        self._wake = threading.Event()
        self._reads: dict[int, tuple[float, socket.socket]] = {}  # id -> (deadline, socket)
        self._expired: set[int] = set()
        self._next = 0
        self._wake_at = 0.0  # when the sleeping watchdog wakes next (0: it is awake)
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: float) -> int:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="router-body-deadline", daemon=True)
                self._thread.start()
            self._next += 1
            ident = self._next
            self._reads[ident] = (deadline, sock)
            wake = deadline < self._wake_at  # rare: the watchdog would sleep past it
        if wake:
            self._wake.set()
        return ident

    def release(self, ident: int) -> bool:
        """Stop watching; True when the deadline passed and the socket was shut (the read is over)."""
        with self._lock:
            self._reads.pop(ident, None)
            if ident in self._expired:
                self._expired.discard(ident)
                return True
            return False

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                for ident, (deadline, sock) in list(self._reads.items()):
                    if deadline <= now:
                        del self._reads[ident]
                        self._expired.add(ident)
                        try:
                            sock.shutdown(socket.SHUT_RD)
                        except OSError:
                            pass
                first = min((deadline for deadline, _ in self._reads.values()), default=now + self.IDLE_WAKE)
                self._wake_at = first
            self._wake.wait(max(0.0, first - now))
            self._wake.clear()


_deadlines = BodyDeadlines()


def read_body(environ: dict[str, Any], limit: int, timeout: float) -> bytes | None:
    """The body, or None when it is over the limit (read no further than limit + 1 bytes).

    The whole body must arrive within `timeout` seconds: a client that trickles it, or promises
    more than it sends, gets 408 instead of holding a worker until gunicorn kills it."""
    length = get_content_length(environ.get("CONTENT_LENGTH"), environ.get("HTTP_TRANSFER_ENCODING"))
    if length is not None and length > limit:
        return None
    if length == 0:
        return b""
    stream = get_input_stream(environ)
    sock = environ.get("gunicorn.socket")
    watched = _deadlines.watch(sock, time.monotonic() + timeout) if isinstance(sock, socket.socket) else None
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            try:
                chunk = stream.read(min(READ_CHUNK, limit + 1 - total))
            except (TimeoutError, OSError) as exc:
                raise BodyTimeout() from exc
            except Exception as exc:  # gunicorn's ParseException: broken chunked framing
                if watched is not None and _deadlines.release(watched):
                    raise BodyTimeout() from exc  # the deadline cut a chunk short
                raise BadFraming() from exc
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                return None
    finally:
        if watched is not None and _deadlines.release(watched):
            raise BodyTimeout()
    if length is not None and total < length:
        raise BodyTimeout()  # the client closed before sending what it promised
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def request_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request's headers with lower-cased names, as werkzeug's EnvironHeaders lists them."""
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
    for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
        value = environ.get(key)
        if value:
            headers[name] = value
    return headers


def query_args(environ: dict[str, Any]) -> dict[str, str]:
    """The query string's parameters, the first of each name (Flask's `request.args.to_dict()`)."""
    return parse_query(environ.get("QUERY_STRING", ""))


def parse_query(text: str) -> dict[str, str]:
    """A query string's parameters (as the WSGI server passes it, latin-1), the first of each name."""
    if not text:
        return {}
    raw = text.encode("latin-1").decode("utf-8", "replace")
    args: dict[str, str] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True, errors="replace"):
        args.setdefault(key, value)
    return args


class HookEndpoint:
    """WSGI middleware: answers POSTs to hook paths itself and passes everything else to `app`."""

    def __init__(self, app: Callable[..., Iterable[bytes]], state: RouterState, body_timeout: float):
        self.app = app
        self.state = state
        self.body_timeout = body_timeout

    def provider_for(self, path: str) -> str | None:
        full = path.rstrip("/") or "/"
        name = self.state.config.paths.get(full)
        if name is not None:
            return name
        if full.startswith("/hooks/"):
            name = full[7:]
            if name and "/" not in name:
                return name
        return None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        # PATH_INFO is the path's bytes as latin-1 (PEP 3333); werkzeug reads them as UTF-8, and so do we
        path = environ.get("PATH_INFO", "").encode("latin-1", "replace").decode("utf-8", "replace")
        provider = self.provider_for(path)
        if provider is None:
            return self.app(environ, start_response)
        try:
            status, value, headers = self.receive(environ, provider)
        except Exception as exc:  # what Flask's error handler would do for any other endpoint
            logs.error("unexpected error", error=f"{type(exc).__name__}: {exc}")
            status, value, headers = error_answer(500, "internal_error", "internal error")
        return respond(start_response, status, value, headers)

    def refused(self, client: dict[str, str], provider: str, status: int, code: str, message: str, started: float,
                headers: list[tuple[str, str]] | None = None, *, check: str, **facts: Any) -> Answer:
        """Answer a refusal, and log why: which check, what it saw (a header's name, a schema path,
        never a value) and from which client."""
        outcome = OUTCOMES.get(status, code)
        metrics.event(provider, outcome)
        logs.info("event refused", provider=provider, outcome=outcome, status=status, check=check, reason=message,
                  **facts, **client, latency_ms=round((time.perf_counter() - started) * 1000, 2))
        return error_answer(status, code, message, headers)

    def client_of(self, peer: str | None, headers: dict[str, str]) -> dict[str, str]:
        """The client's address as the allow-list sees it, and the peer's when that differs (a proxy)."""
        peer = peer or ""
        trusted = self.state.config.settings.trusted_proxies
        client = client_address(peer, headers, trusted) if trusted else None
        if client is None or str(client) == peer:
            return {"client": peer}
        return {"client": str(client), "peer": peer}

    def receive(self, environ: dict[str, Any], provider_name: str) -> Answer:
        """Read the body as the WSGI server hands it over, then admit, store and answer the event."""
        spec = self.state.config.providers.get(provider_name)
        if spec is None:
            return self.unknown(provider_name)
        started = time.perf_counter()
        limit = self.state.config.settings.max_body_bytes
        close = [("Connection", "close")]  # when the rest of the body was not (or cannot be) read
        coding = environ.get("HTTP_TRANSFER_ENCODING")
        if coding is not None and coding.strip(" \t").lower() != "chunked":
            # gunicorn de-chunks but decodes nothing else: `gzip, chunked` would reach the signature
            # check and the store still compressed, as if it were the body
            return self.refused(self._client(environ), provider_name, 501, "unsupported_transfer_encoding",
                                "only Transfer-Encoding: chunked is accepted", started, close, check="framing")
        try:
            body = read_body(environ, limit, self.body_timeout)
        except BodyTimeout:
            return self.refused(self._client(environ), provider_name, 408, "body_timeout",
                                "the body did not arrive in time", started, close, check="body_deadline",
                                deadline_s=self.body_timeout)
        except BadFraming:
            return self.refused(self._client(environ), provider_name, 400, "invalid_body",
                                "the body's chunked framing is broken", started, close, check="framing")
        if body is None:
            return self.refused(self._client(environ), provider_name, 413, "too_large",
                                f"body is larger than {limit} bytes", started, close, check="size")
        incoming = Incoming(
            provider=provider_name,
            body=body,
            headers=request_headers(environ),
            query=query_args(environ),
            remote_addr=environ.get("REMOTE_ADDR"),
            content_type=environ.get("CONTENT_TYPE"),
            query_string=environ.get("QUERY_STRING", ""),
        )
        admitted = self.admit(incoming, started)
        if not isinstance(admitted, Accepted):
            return admitted
        try:
            result: IngestResult | Exception = self.state.store.ingest(admitted.event)
        except StoreUnavailable as exc:
            result = exc
        return self.stored(admitted, result, started)

    def _client(self, environ: dict[str, Any]) -> dict[str, str]:
        return self.client_of(environ.get("REMOTE_ADDR"), request_headers(environ))

    def unknown(self, provider_name: str) -> Answer:
        metrics.event("(unknown)", "unknown_provider")
        return error_answer(404, "unknown_provider", f"no provider named '{provider_name}'")

    def admit(self, incoming: Incoming, started: float) -> Accepted | Answer:
        """Authenticate, parse, validate and route a whole request: the event ready to commit, or
        the answer that refuses it (or answers a handshake). Takes no lock and touches no store,
        so the event loop of `router serve`'s worker calls it for many requests in turn."""
        provider_name = incoming.provider
        config = self.state.config
        spec = config.providers.get(provider_name)
        if spec is None:
            return self.unknown(provider_name)
        try:
            return accept(config, spec, incoming)
        except Handshake as hs:  # authentic, and answered without being stored (Slack's URL verification)
            metrics.event(provider_name, "handshake")
            logs.info("handshake answered", provider=provider_name, outcome="handshake", status=200)
            return 200, hs.answer, []
        except SchemaError as exc:
            metrics.event(provider_name, "schema_invalid")
            # where and which rule (`required`, `type`, ...), not the message: that quotes the payload's values
            where = [f"{'.'.join(str(p) for p in d.get('loc', [])[1:]) or '(root)'}: {d.get('type')}"
                     for d in exc.detail[:5]]
            logs.info("event refused", provider=provider_name, outcome="schema_invalid", status=422, check="schema",
                      violations=len(exc.detail), paths=where,
                      **self.client_of(incoming.remote_addr, incoming.headers),
                      latency_ms=round((time.perf_counter() - started) * 1000, 2))
            return 422, {"detail": exc.detail}, []
        except RequestError as exc:
            return self.refused(self.client_of(incoming.remote_addr, incoming.headers), provider_name, exc.status,
                                exc.code, exc.message, started, None, check=exc.check, **exc.facts)

    def stored(self, admitted: Accepted, result: IngestResult | Exception, started: float) -> Answer:
        """The answer for an admitted event once the store has committed it (or failed to)."""
        provider_name = admitted.event.provider
        if not isinstance(result, IngestResult):
            metrics.event(provider_name, "store_unavailable")
            logs.error("store unavailable", provider=provider_name, status=503, error=str(result))
            return error_answer(503, "store_unavailable", "the event could not be stored; retry later",
                                [("Retry-After", "5")])
        state = self.state
        if result.deliveries and state.deliverer is not None:
            state.deliverer.kick()
        latency = time.perf_counter() - started
        outcome = "duplicate" if result.duplicate else "accepted"
        metrics.event(provider_name, outcome, latency, None if result.duplicate else result.matched)
        logs.info("event", event_id=result.event_id, provider=provider_name, outcome=outcome, status=200,
                  matched=result.matched, deliveries=result.deliveries, latency_ms=round(latency * 1000, 2))
        answer: dict[str, Any] = {"event_id": result.event_id}
        if result.duplicate:
            answer["duplicate"] = True
        answer["matched"] = result.matched
        answer["deliveries"] = result.deliveries
        return 200, answer, []
