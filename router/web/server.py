"""`router serve`: gunicorn in this process, with defaults fit for production.

The rules file is validated in the master before every reload (SIGHUP): an invalid file is
reported with validate's messages and the old workers keep serving the old rules.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from router import logs, metrics
from router.config.loader import load
from router.config.model import Config
from router.errors import ConfigError
from router.web.balance import Table, assign_slot


def default_workers() -> int:
    """One per core: a worker answers hook requests in its event loop, so more only contend."""
    return max(2, min(8, os.cpu_count() or 1))


class DeliveryProcess:
    """`router worker` beside the gunicorn workers, started, watched and stopped by the master.

    Delivery in its own process keeps it off the request threads' CPU and GIL: a worker serving
    hooks only ingests. The master starts it again when it dies (at most once a second), passes a
    HUP on (it reloads the rules itself) and, on a stop, sends TERM and waits for it to hand back
    what it claimed but did not start."""

    RESPAWN_EVERY = 1.0

    def __init__(self, rules: str):
        self.rules = rules
        self.proc: subprocess.Popen | None = None
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "router", "worker", self.rules])
        _yield_to_requests(self.proc.pid)
        logs.info("delivery process started", pid=self.proc.pid)

    def check(self) -> None:
        if self.proc is None or self.proc.poll() is None:
            return
        if time.monotonic() - self._started < self.RESPAWN_EVERY:
            return
        logs.warning("delivery process exited; starting another", pid=self.proc.pid, status=self.proc.returncode)
        self.start()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _yield_to_requests(pid: int) -> None:
    """Delivery is throughput work; answering providers is latency work. Linux's SCHED_BATCH keeps
    the delivery process from preempting a worker when it wakes, and a niceness of 2 gives it a
    little less of a contended core, so the workers' tail latency does not pay for its batches
    (measured at concurrency 8: p99 13-14 ms instead of 16-21, and delivery still kept up at 4,800
    events/s). Best effort: elsewhere it is left as it is."""
    try:
        os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, pid, 2)
    except (AttributeError, OSError):
        pass


class _Arbiter(Arbiter):
    delivery: DeliveryProcess | None = None
    balance: Table | None = None

    def start(self) -> None:
        self.balance = Table()  # before the first fork: every worker shares it (balance.py)
        super().start()
        if self.delivery is not None:
            self.delivery.start()

    def manage_workers(self) -> None:
        super().manage_workers()
        if self.delivery is not None:
            self.delivery.check()

    def stop(self, graceful: bool = True) -> None:
        super().stop(graceful)
        if self.delivery is not None:
            self.delivery.stop(self.cfg.graceful_timeout if graceful else 5.0)

    def handle_hup(self) -> None:
        rules = os.environ.get("ROUTER_RULES", "")
        try:
            load(rules)
        except ConfigError as exc:
            logs.error("rules reload refused; the old rules keep serving", rules=rules,
                       problems=[str(p) for p in exc.problems])
            metrics.reload(False)
            return
        logs.info("rules reloaded; restarting workers", rules=rules)
        metrics.reload(True)
        super().handle_hup()
        if self.delivery is not None:
            self.delivery.signal(signal.SIGHUP)


class RouterApplication(BaseApplication):
    def __init__(self, options: dict[str, Any]):
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from router.web.wsgi import app

        return app

    delivery: DeliveryProcess | None = None

    def run(self) -> None:
        try:
            arbiter = _Arbiter(self)
            arbiter.delivery = self.delivery
            arbiter.run()
        except RuntimeError as exc:
            logs.error("gunicorn could not start", error=str(exc))
            sys.exit(1)


MAX_SOCKET_PATH = 100  # a Unix socket path must fit in sun_path (108 bytes on Linux)


def control_socket(store: str | os.PathLike, bind: str) -> str | None:
    """Where this instance's gunicorn control socket goes: beside its SQLite store, named after
    the address it binds, so two instances on one host never share gunicorn's default
    (~/.gunicorn/gunicorn.ctl) and overwrite each other's. None (no socket) for a PostgreSQL store
    or a path too long for a Unix socket."""
    from pathlib import Path

    from router.store import is_postgres

    if isinstance(store, str) and is_postgres(store):
        return None
    name = "gunicorn-" + "".join(c if c.isalnum() or c in ".-" else "-" for c in bind) + ".ctl"
    path = Path(str(store)).resolve().parent / name
    return str(path) if len(str(path)) <= MAX_SOCKET_PATH else None


def _control_options(store: str | os.PathLike, bind: str) -> dict[str, Any]:
    from gunicorn.config import Config as GunicornConfig

    if "control_socket" not in GunicornConfig().settings:
        return {}  # a gunicorn before 25.1 has no control socket
    path = control_socket(store, bind)
    if path is None:
        return {"control_socket_disable": True}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return {"control_socket": path}


def run(rules: str, *, bind: str, workers: int | None, threads: int, timeout: int, access_log: bool,
        delivery: bool) -> None:
    os.environ["ROUTER_RULES"] = rules
    # the gunicorn workers only ingest; delivery runs in a process of its own beside them
    os.environ["ROUTER_DELIVERY"] = "off"
    config = load(rules)
    logs.setup(config.redactor)
    for warning in config.warnings:  # what `router validate` warns about, once, from the master
        logs.warning("rules file warning", problem=str(warning))
    metrics.init(config.settings.store)  # the master counts reloads; workers inherit the folder
    _warn_if_inspector_in_the_clear(config, bind)
    options = {
        "bind": bind,
        "workers": workers or default_workers(),
        # gthread that gives threads whole requests only, answers what gunicorn refuses in JSON, and
        # prints gunicorn's own lines as the router's redacted JSON (router/web/worker.py)
        "worker_class": "router.web.worker.RouterWorker",
        "logger_class": "router.web.worker.JsonLogger",
        "threads": threads,
        "timeout": timeout,
        "graceful_timeout": 30,
        "keepalive": 5,
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        "proc_name": "router",
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "forwarded_allow_ips": "127.0.0.1",
        "pre_fork": assign_slot,  # each worker's slot in the table that shares connections out evenly
        **_control_options(config.settings.store, bind),
    }
    application = RouterApplication(options)
    application.delivery = DeliveryProcess(rules) if delivery else None
    application.run()


def _loopback(bind: str) -> bool:
    """Is every address `bind` (HOST:PORT, [V6]:PORT or unix:PATH) on this host only?"""
    import ipaddress

    if bind.startswith("unix:"):
        return True
    host = bind.rsplit(":", 1)[0] if ":" in bind else bind
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_if_inspector_in_the_clear(config: Config, bind: str) -> None:
    inspector = config.settings.inspector
    if inspector is not None and inspector.enabled and not inspector.behind_tls and not _loopback(bind):
        logs.warning("the inspector is on and the bind address is not loopback: HTTP Basic sends its password "
                     "in the clear, so put TLS in front (a reverse proxy) or bind to 127.0.0.1",
                     bind=bind, path=inspector.path)
