"""The HTTP service: an app factory and its endpoints. Errors become answers here and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from router import __version__, logs, metrics
from router.config.loader import load
from router.config.model import Config
from router.errors import ConfigError, Problem
from router.store import is_postgres
from router.web.endpoint import HookEndpoint
from router.web.inspector import register as register_inspector
from router.web.state import RouterState

DISK_HEADROOM = 1 << 20  # bytes /readyz wants free beyond max_body_bytes
BODY_TIMEOUT = float(os.environ.get("ROUTER_BODY_TIMEOUT", "10"))  # seconds for the whole body to arrive


def _error(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    return response


def _method_not_allowed(allow: str) -> Response:
    response = _error(405, "method_not_allowed", f"use {allow}")
    response.headers["Allow"] = allow
    return response


def _about(state: RouterState) -> dict[str, Any]:
    """Which rules (file and version stamp), store back end and router version this worker serves."""
    return {
        "rules": {"file": str(state.rules_path) if state.rules_path else None, "version": state.config.version_stamp},
        "store": {"backend": _backend(state)},
        "version": __version__,
    }


def _backend(state: RouterState) -> str:
    try:
        return state.store.backend
    except Exception:  # the store cannot be opened now: say what it would be (`checks` says why not)
        return "postgresql" if is_postgres(state.config.settings.store) else "sqlite"


def create_app(config: Config | None = None, rules_path: str | os.PathLike | None = None,
               *, stale_reason: str | None = None) -> Flask:
    """Build the app from a loaded Config, or load one from `rules_path` (default $ROUTER_RULES)."""
    if config is None:
        path = rules_path or os.environ.get("ROUTER_RULES")
        if not path:
            raise ConfigError([Problem("(environment)", 1, 1, "ROUTER_RULES", "set ROUTER_RULES to the rules file")])
        rules_path = Path(path)
        config = load(rules_path)
    logs.setup(config.redactor)
    metrics.init(config.settings.store)
    state = RouterState(config, Path(rules_path) if rules_path else None, stale_reason=stale_reason)
    state.remember_good_rules()
    if stale_reason is None:
        # a restart (or gunicorn's HUP) onto rules without an action: its pending jobs say so now
        try:
            removed = state.store.dead_letter_missing_actions(config.actions)
            if removed:
                logs.warning("dead-lettered jobs of actions no longer in the rules file", jobs=removed)
        except Exception as exc:  # a locked store must not stop the worker booting; delivery catches up
            logs.warning("could not check for jobs of removed actions", error=f"{type(exc).__name__}: {exc}")

    app = Flask("router")
    app.extensions["router"] = state
    endpoint = HookEndpoint(app.wsgi_app, state, BODY_TIMEOUT)
    app.wsgi_app = endpoint  # type: ignore[method-assign]

    register_inspector(app, state)
    inspector = state.config.settings.inspector
    inspector_path = inspector.path if inspector is not None and "inspector" in app.blueprints else None

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        checks: dict[str, Any] = {"rules": "stale: " + state.stale_reason if state.stale_reason else "loaded"}
        try:
            checks["store"] = state.store.readiness(state.config.settings.max_body_bytes + DISK_HEADROOM)
        except Exception as exc:
            checks["store"] = f"unavailable: {type(exc).__name__}"
        if state.deliverer is not None:
            checks["delivery"] = "running" if state.deliverer.healthy() else "stalled"
        if inspector_path is not None:
            checks["inspector"] = f"on at {inspector_path}"
        ok = checks["store"] == "writable" and checks.get("delivery", "running") == "running"
        response = jsonify({"status": "ok" if ok else "unavailable", "checks": checks, **_about(state)})
        response.status_code = 200 if ok else 503
        return response

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        body, content_type = metrics.scrape(state.store, list(state.config.actions))
        return Response(body, status=200, content_type=content_type)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

    @app.route("/", defaults={"path": ""}, methods=methods)
    @app.route("/<path:path>", methods=methods)
    def other_path(path: str) -> Response:
        # POSTs to hook paths never get here: the endpoint in front of Flask answers them
        full = "/" + path.rstrip("/")
        if endpoint.provider_for(full) is not None:
            return _method_not_allowed("POST")
        if full in ("/healthz", "/readyz", "/metrics"):
            return _method_not_allowed("GET")
        return _error(404, "not_found", f"nothing is served at {full[:200]}")

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
