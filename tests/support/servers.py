"""A real router: gunicorn serving `router.wsgi:app` (RouterServer), or `router serve` as the
gunicorn master (ServedRouter), each in its own folder with its own rules file, store and logs.

Only the processes these objects started are ever signalled, by their PID (and, as a last resort,
the process group a master leads, which holds nothing but its own workers). The store is read
through the router's own store interface, never with SQL of the tests' own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from router.store import EventFilter, Store, open_store
from support.http import free_port
from support.signing import dumps


class StartupError(RuntimeError):
    pass


class RouterServer:
    """One gunicorn master (and its workers) serving `router.wsgi:app` from a rules file in `workdir`.

    Only the process this object started is ever signalled, by its PID (and, as a last resort, the
    process group it leads, which holds nothing but its own workers).
    """

    def __init__(self, workdir: Path, rules_text: str, *, env: dict[str, str] | None = None,
                 files: dict[str, str | bytes] | None = None, workers: int = 2, store: str = "var/router.db"):
        """`store` is a SQLite path relative to `workdir`, or a PostgreSQL URI (handed to the router as
        ROUTER_STORE, so the same rules run on either back end)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for rel, content in (files or {}).items():
            target = self.workdir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        self.rules_path = self.workdir / "rules.yaml"
        self.rules_path.write_text(rules_text, encoding="utf-8")
        self.store_uri = store if store.startswith(("postgresql://", "postgres://")) else None
        self.store_path = self.workdir / (store if self.store_uri is None else "var/router.db")
        self._store: Store | None = None
        self.stderr_path = self.workdir / "gunicorn.stderr.log"
        self.stdout_path = self.workdir / "gunicorn.stdout.log"
        self.extra_env = dict(env or {})
        self.workers = workers
        self.proc: subprocess.Popen | None = None
        self.url = ""

    # lifecycle ---------------------------------------------------------------

    def start(self, deadline: float = 30.0) -> RouterServer:
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between probing and binding; try another
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            env, cmd = self.command(port)
            with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
                self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=out, stderr=err,
                                             start_new_session=True)
            try:
                self._wait_healthy(deadline)
                return self
            except StartupError as exc:
                last_error = str(exc)
                self.stop()
                if "Address already in use" not in self.log_text():
                    break
        raise StartupError(last_error)

    def command(self, port: int) -> tuple[dict[str, str], list[str]]:
        """The environment and command line that start this server on `port`."""
        env = {**self.base_env(), "ROUTER_RULES": str(self.rules_path)}
        cmd = [
            sys.executable, "-m", "gunicorn", "router.wsgi:app",
            "-b", f"127.0.0.1:{port}", "-w", str(self.workers),
            "--graceful-timeout", "3", "--timeout", "60",
        ]
        return env, cmd

    def base_env(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        env.pop("ROUTER_RULES", None)
        if self.store_uri is not None:
            env["ROUTER_STORE"] = self.store_uri
        return env

    def _wait_healthy(self, deadline: float) -> None:
        assert self.proc is not None
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise StartupError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)  # polling interval, bounded by the deadline above
        raise StartupError(f"gunicorn did not answer /healthz within {deadline}s:\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this master leads: it and its workers only
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    def __enter__(self) -> RouterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # HTTP -----------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | dict | list | None = None, *,
                headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
                timeout: float = 15) -> requests.Response:
        hdrs = dict(headers or {})
        data: Any = body
        if isinstance(body, (dict, list)):
            data = dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        return requests.request(method, self.url + path, data=data, headers=hdrs, params=params, timeout=timeout)

    def post(self, path: str, body: bytes | dict | list | None = None, **kw: Any) -> requests.Response:
        return self.request("POST", path, body, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    # the store, read through the router's own store interface -------------------

    @property
    def store_location(self) -> str:
        """Where this server's store is: the SQLite file, or the PostgreSQL URI given as `store`."""
        return self.store_uri or str(self.store_path)

    def store(self) -> Store:
        """The store this server writes, opened as the router opens it (one per test process and server)."""
        if self._store is None:
            self._store = open_store(self.store_location)
        return self._store

    def event_count(self) -> int:
        return self.store().counts()["events"]

    def job_count(self) -> int:
        return self.store().counts()["jobs"]

    def event_body(self, event_id: str) -> bytes | None:
        event = self.store().event(event_id)
        return event.body if event else None

    def event_provider(self, event_id: str) -> str | None:
        event = self.store().event(event_id)
        return event.provider if event else None

    def jobs_for(self, event_id: str) -> list[tuple[str, str]]:
        """(rule, action) of every delivery job stored for an event, sorted."""
        return sorted((j.rule, j.action) for j in self.store().jobs(event_id=event_id))

    def event_ids(self) -> set[str]:
        return {e["event_id"] for e in self.store().list_events(EventFilter(limit=10**9))}

    def events_with_body(self, body: bytes) -> int:
        store = self.store()
        return sum(1 for event_id in self.event_ids() if (e := store.event(event_id)) and e.body == body)

    # logs -------------------------------------------------------------------------

    def log_text(self) -> str:
        out = []
        for p in (self.stderr_path, self.stdout_path):
            if p.exists():
                out.append(p.read_text("utf-8", errors="replace"))
        return "\n".join(out)


class ServedRouter(RouterServer):
    """`python -m router serve RULES --bind 127.0.0.1:PORT --workers N`: this process IS the gunicorn
    master, so signals sent to `pid` act as gunicorn's (HUP reloads, TERM stops gracefully)."""

    def __init__(self, workdir: Path, rules_text: str, *, extra_args: tuple[str, ...] = (), **kw: Any):
        super().__init__(workdir, rules_text, **kw)
        self.extra_args = tuple(extra_args)
        self.stderr_path = self.workdir / "serve.stderr.log"
        self.stdout_path = self.workdir / "serve.stdout.log"

    def command(self, port: int) -> tuple[dict[str, str], list[str]]:
        env = self.base_env()
        cmd = [sys.executable, "-m", "router", "serve", str(self.rules_path), "--bind", f"127.0.0.1:{port}",
               "--workers", str(self.workers), *self.extra_args]
        return env, cmd

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid
