"""What gunicorn runs for the router: a logger class and worker classes.

`router serve` sets both; with plain gunicorn give them on the command line:

    gunicorn 'router.wsgi:app' --worker-class router.web.worker.RouterWorker \
        --logger-class router.web.worker.JsonLogger --threads 8

- `JsonLogger` sends gunicorn's own lines (its error log and, when enabled, its access log)
  through the router's JSON logger and its redactor, so every line the service prints is one
  JSON object and a secret in a request line gunicorn quotes (`?token=...`) is never shown.
- `RouterWorker` (gthread) and `RouterSyncWorker` (sync) answer the requests gunicorn itself
  refuses (a bad request line, a bad or repeated Content-Length, a bad header name, a 414) with
  the router's JSON error body instead of gunicorn's HTML page.
"""

from __future__ import annotations

import re
import sys
import threading
import traceback
from datetime import datetime
from typing import Any

from gunicorn import util
from gunicorn.glogging import Logger
from gunicorn.http import errors as http_errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

from router import logs
from router.web.endpoint import json_bytes

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
                      reason=message, detail=_no_query(str(exc))[:200], exception=type(exc).__name__,
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
    """gunicorn's gthread worker, answering its refusals in JSON (what `router serve` runs)."""


class RouterSyncWorker(JsonErrors, SyncWorker):
    """gunicorn's sync worker, answering its refusals in JSON."""


__all__ = ["JsonLogger", "RouterSyncWorker", "RouterWorker", "json_error", "refusal_for"]
