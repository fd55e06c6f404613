"""The HTTP service: an app factory and its endpoints. Errors become answers here and nowhere else."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from router import logs, metrics
from router.config.loader import load, loads
from router.config.model import Config
from router.errors import ConfigError, Problem
from router.store import Store, open_store
from router.web.endpoint import HookEndpoint

DISK_HEADROOM = 1 << 20  # bytes /readyz wants free beyond max_body_bytes
BODY_TIMEOUT = float(os.environ.get("ROUTER_BODY_TIMEOUT", "10"))  # seconds for the whole body to arrive
WATCH_INTERVAL = 2.0  # seconds between looks at the rules file


class RouterState:
    """What the app serves from: the current rules (swapped whole on reload), this process's store,
    and, where this process delivers too, its delivery workers."""

    def __init__(self, config: Config, rules_path: Path | None = None, *, stale_reason: str | None = None):
        self.config = config
        self.rules_path = Path(rules_path).resolve() if rules_path else None
        self.stale_reason = stale_reason  # set when serving the last good rules because the file is invalid
        self._store: Store | None = None
        self._store_pid = 0
        self._lock = threading.Lock()
        self.deliverer: Any = None
        self._watcher: threading.Thread | None = None
        self._watched = self._file_stamp()

    @property
    def store(self) -> Store:
        """This process's store (a forked worker opens its own: connections do not survive a fork)."""
        store = self._store
        if store is None or self._store_pid != os.getpid():
            with self._lock:
                if self._store is None or self._store_pid != os.getpid():
                    settings = self.config.settings
                    self._store = open_store(settings.store, settings.durability)
                    self._store_pid = os.getpid()
                store = self._store
        return store

    # ------------------------------------------------------------------ delivery

    def start_delivery(self) -> None:
        """Run delivery workers in this process (each gunicorn worker, or `router worker`)."""
        from router.delivery import Deliverer

        if self.deliverer is not None and self.deliverer.alive() and self._store is not None \
                and self._store_pid == os.getpid():
            return
        self.deliverer = Deliverer(lambda: self.config, lambda: self.store).start()

    def stop_delivery(self, grace: float = 10.0) -> None:
        if self.deliverer is not None and self._store is not None and self._store_pid == os.getpid():
            self.deliverer.stop(grace)

    # ------------------------------------------------------------------ reload

    def reload(self) -> bool:
        """Load the rules file again; keep the current rules when it is invalid."""
        if self.rules_path is None:
            return False
        self._watched = self._file_stamp()
        try:
            new = load(self.rules_path)
        except ConfigError as exc:
            logs.error("rules reload failed; the old rules keep serving", rules=str(self.rules_path),
                       problems=[str(p) for p in exc.problems])
            metrics.reload(False)
            return False
        if str(new.settings.store) != str(self.config.settings.store):
            logs.warning("the store setting changed; it takes effect at the next restart",
                         store=str(self.config.settings.store))
            new.settings.store = self.config.settings.store
        self.config = new
        self.stale_reason = None
        logs.use_redactor(new.redactor)
        self.remember_good_rules()
        removed = self.store.dead_letter_missing_actions(new.actions)
        logs.info("rules reloaded", rules=str(self.rules_path), summary=new.summary(), dead_lettered=removed)
        metrics.reload(True)
        return True

    def remember_good_rules(self) -> None:
        if self.rules_path is not None and self.config.source_text and self.stale_reason is None:
            try:
                self.store.save_rules_snapshot(str(self.rules_path), self.config.source_text)
            except Exception as exc:  # a read-only store still serves
                logs.warning("could not keep a copy of the rules in the store", error=str(exc))

    def _file_stamp(self) -> tuple | None:
        if self.rules_path is None:
            return None
        try:
            st = os.stat(self.rules_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def watch(self) -> None:
        """Reload when the rules file changes (every process on its own; validated first)."""
        if self.rules_path is None or (self._watcher is not None and self._watcher.is_alive()):
            return

        def loop() -> None:
            while True:
                time.sleep(WATCH_INTERVAL)
                stamp = self._file_stamp()
                if stamp is not None and stamp != self._watched:
                    self.reload()

        self._watcher = threading.Thread(target=loop, name="router-watch", daemon=True)
        self._watcher.start()


def recover(rules_path: Path, problems: list[Problem]) -> Config | None:
    """The last rules that loaded from this file, read back from the store, or None.

    Used when a worker starts (after a reload) and finds the file invalid: it keeps serving the
    old rules instead of failing to boot and taking the service down.
    """
    rules_path = rules_path.resolve()
    store_path = rules_path.parent / "var" / "router.db"
    try:
        raw = yaml.safe_load(rules_path.read_text("utf-8"))
        configured = raw.get("settings", {}).get("store") if isinstance(raw, dict) else None
        if isinstance(configured, str) and "$" not in configured:
            p = Path(configured).expanduser()
            store_path = p if p.is_absolute() else rules_path.parent / p
    except Exception:
        pass
    if not store_path.exists():
        return None
    try:
        text = open_store(store_path).rules_snapshot(str(rules_path))
        if text is None:
            return None
        return loads(text, str(rules_path), base_dir=rules_path.parent)
    except Exception:
        return None


def _error(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    return response


def _method_not_allowed(allow: str) -> Response:
    response = _error(405, "method_not_allowed", f"use {allow}")
    response.headers["Allow"] = allow
    return response


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
        ok = checks["store"] == "writable" and checks.get("delivery", "running") == "running"
        response = jsonify({"status": "ok" if ok else "unavailable", "checks": checks})
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
