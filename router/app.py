"""The HTTP service: an app factory and its endpoints. Errors become answers here and nowhere else."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from router import config as config_mod
from router import logs
from router.config import Config
from router.errors import RequestError, SchemaError, StoreUnavailable
from router.ingest import Incoming, accept
from router.store import Store

READ_CHUNK = 64 * 1024


class RouterState:
    """What the app serves from: the current rules (swapped whole on reload) and this process's store."""

    def __init__(self, config: Config, rules_path: Path | None = None):
        self.config = config
        self.rules_path = rules_path
        self._store: Store | None = None
        self._lock = threading.Lock()
        self.loaded_at = time.time()
        self.deliverer: Any = None  # set when this process also delivers

    def start_delivery(self) -> None:
        """Run delivery workers in this process (each gunicorn worker, or `router worker`)."""
        from router.delivery import Deliverer

        if self.deliverer is not None and self.deliverer.alive() and self._store is not None and self._store.pid == os.getpid():
            return
        self.deliverer = Deliverer(lambda: self.config, self.store).start()

    def stop_delivery(self, grace: float = 10.0) -> None:
        if self.deliverer is not None:
            self.deliverer.stop(grace)

    @property
    def store(self) -> Store:
        store = self._store
        if store is None or store.pid != os.getpid():
            with self._lock:
                if self._store is None or self._store.pid != os.getpid():
                    settings = self.config.settings
                    self._store = Store(settings.store, settings.durability)
                store = self._store
        return store


def _error(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    return response


def create_app(config: Config | None = None, rules_path: str | os.PathLike | None = None) -> Flask:
    """Build the app from a loaded Config, or load one from `rules_path` (default $ROUTER_RULES)."""
    if config is None:
        path = rules_path or os.environ.get("ROUTER_RULES")
        if not path:
            raise config_mod.ConfigError(
                [config_mod.Problem("(environment)", 1, 1, "ROUTER_RULES", "set ROUTER_RULES to the rules file")]
            )
        rules_path = Path(path)
        config = config_mod.load(rules_path)
    logs.setup(config.redactor)
    state = RouterState(config, Path(rules_path) if rules_path else None)

    app = Flask("router")
    app.extensions["router"] = state

    def read_body(limit: int) -> bytes | Response:
        length = request.content_length
        if length is not None and length > limit:
            return _error(413, "too_large", f"body is larger than {limit} bytes")
        stream = request.stream
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = stream.read(min(READ_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                return _error(413, "too_large", f"body is larger than {limit} bytes")
        return b"".join(chunks)

    def receive(provider_name: str) -> Response:
        config = state.config
        spec = config.providers.get(provider_name)
        if spec is None:
            return _error(404, "unknown_provider", f"no provider named '{provider_name}'")
        started = time.perf_counter()
        body = read_body(config.settings.max_body_bytes)
        if isinstance(body, Response):
            _log_refused(provider_name, body.status_code, "too_large", started)
            return body
        incoming = Incoming(
            provider=provider_name,
            body=body,
            headers={k.lower(): v for k, v in request.headers.items()},
            query={k: v for k, v in request.args.items()},
            remote_addr=request.remote_addr,
            content_type=request.headers.get("Content-Type"),
        )
        try:
            accepted = accept(config, spec, incoming)
            result = state.store.ingest(accepted.event)
            if result.deliveries and state.deliverer is not None:
                state.deliverer.kick()
        except SchemaError as exc:
            _log_refused(provider_name, 422, exc.code, started)
            return Response(_json_bytes({"detail": exc.detail}), status=422, mimetype="application/json")
        except RequestError as exc:
            _log_refused(provider_name, exc.status, exc.code, started)
            return _error(exc.status, exc.code, exc.message)
        except StoreUnavailable as exc:
            logs.error("store unavailable", provider=provider_name, status=503, error=str(exc))
            return _error(503, "store_unavailable", "the event could not be stored; retry later")
        outcome = "duplicate" if result.duplicate else "accepted"
        logs.info(
            "event",
            event_id=result.event_id,
            provider=provider_name,
            outcome=outcome,
            status=200,
            matched=result.matched,
            deliveries=result.deliveries,
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        answer: dict[str, Any] = {"event_id": result.event_id}
        if result.duplicate:
            answer["duplicate"] = True
        answer["matched"] = result.matched
        answer["deliveries"] = result.deliveries
        return Response(_json_bytes(answer), status=200, mimetype="application/json")

    @app.route("/hooks/<provider_name>", methods=["POST"])
    def hook(provider_name: str) -> Response:
        return receive(provider_name)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        checks = {"rules": state.config is not None, "store": state.store.writable()}
        ok = all(checks.values())
        response = jsonify({"status": "ok" if ok else "unavailable", "checks": checks})
        response.status_code = 200 if ok else 503
        return response

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    @app.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    def extra_path(path: str) -> Response:
        full = "/" + path.rstrip("/")
        provider_name = state.config.paths.get(full)
        if provider_name is None:
            if request.method != "POST" and (full.startswith("/hooks/") and full.count("/") == 2):
                return _method_not_allowed("POST")
            if full in ("/healthz", "/readyz", "/metrics"):
                return _method_not_allowed("GET")
            return _error(404, "not_found", f"nothing is served at {full}")
        if request.method != "POST":
            response = _error(405, "method_not_allowed", "use POST")
            response.headers["Allow"] = "POST"
            return response
        return receive(provider_name)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        response = _error(exc.code or 500, code, exc.description or exc.name or "error")
        if exc.code == 405:
            response.headers["Allow"] = ", ".join(getattr(exc, "valid_methods", None) or ["POST"])
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        logs.error("unexpected error", error=f"{type(exc).__name__}: {exc}")
        return _error(500, "internal_error", "internal error")

    return app


def _method_not_allowed(allow: str) -> Response:
    response = _error(405, "method_not_allowed", f"use {allow}")
    response.headers["Allow"] = allow
    return response


def _log_refused(provider: str, status: int, outcome: str, started: float) -> None:
    logs.info(
        "event refused",
        provider=provider,
        outcome=outcome,
        status=status,
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
    )


def _json_bytes(value: Any) -> bytes:
    import json

    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
