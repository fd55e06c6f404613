"""Processes seen from outside, through /proc: a master's workers, liveness, kill -9, signals."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests

from support.logs import tail_log
from support.servers import RouterServer
from support.waiting import wait_until


def children_of(pid: int) -> list[int]:
    """Direct children of a process, from /proc (every thread's list)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(set(found))


def is_delivery_process(pid: int) -> bool:
    """The `router worker` that `router serve` runs beside its gunicorn workers (also a child of the master)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argv[2:4] == [b"router", b"worker"]


def delivery_pids(server: RouterServer) -> list[int]:
    assert server.proc is not None
    return [pid for pid in children_of(server.proc.pid) if is_delivery_process(pid)]


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill9(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_router_hard(server: RouterServer) -> list[int]:
    """`kill -9` a gunicorn master and every one of its workers, by PID; wait until all are gone."""
    assert server.proc is not None
    master = server.proc.pid
    workers = children_of(master)
    assert workers, "the gunicorn master has no workers to kill"
    kill9([master])  # the master first, so it cannot fork replacements for the workers
    kill9(workers)
    server.proc.wait(timeout=10)
    wait_until(lambda: not any(alive(p) for p in workers), timeout=10, what="the killed workers to be gone")
    server.proc = None
    return [master, *workers]


def healthy(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def worker_pids(server: RouterServer) -> list[int]:
    """The gunicorn workers: direct children of the master."""
    assert server.proc is not None and server.proc.poll() is None, "the gunicorn master is not running"
    return [pid for pid in children_of(server.proc.pid) if not is_delivery_process(pid)]


def healthz(server: RouterServer, timeout: float = 5.0) -> int:
    return requests.get(server.url + "/healthz", timeout=timeout).status_code


class WorkersSurvive:
    """`with WorkersSurvive(server): ...` - the same worker PIDs before and after, and /healthz answers."""

    def __init__(self, server: RouterServer):
        self.server = server
        self.before: list[int] = []

    def __enter__(self) -> WorkersSurvive:
        self.before = wait_until(lambda: worker_pids(self.server), timeout=10, what="gunicorn workers")
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is not None:
            return
        assert healthz(self.server) == 200
        after = worker_pids(self.server)
        assert after == self.before, (
            f"gunicorn workers changed (one died or was killed): before {self.before}, after {after}\n"
            + tail_log(self.server)
        )


def master_pid(server: RouterServer) -> int:
    assert server.proc is not None
    return server.proc.pid


def signal_master(server: RouterServer, sig: int) -> None:
    os.kill(master_pid(server), sig)


def wait_workers(server: RouterServer, n: int, *, timeout: float = 20.0, exclude: set[int] | frozenset = frozenset()
                 ) -> list[int]:
    """Wait until the master has exactly n workers, none of them in `exclude`, all answering."""
    def probe() -> list[int] | None:
        pids = [pid for pid in children_of(master_pid(server)) if not is_delivery_process(pid)]
        if len(pids) == n and not set(pids) & set(exclude):
            return pids
        return None

    return wait_until(probe, timeout=timeout, what=f"{n} new worker(s)")


def not_accepting(url: str) -> bool:
    """True when a fresh request is no longer answered (every worker stopped accepting)."""
    try:
        requests.get(url + "/healthz", timeout=1, headers={"Connection": "close"})
        return False
    except requests.RequestException:
        return True


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"process {proc.pid} did not exit within {timeout}s") from None


def term_and_wait(server: RouterServer, timeout: float = 40.0) -> int:
    """SIGTERM the master (by PID) and wait for it; return its exit status."""
    assert server.proc is not None
    proc = server.proc
    os.kill(proc.pid, signal.SIGTERM)
    code = wait_exit(proc, timeout)
    server.proc = None
    return code


def store_open_by(pid: int, store: Path) -> bool:
    """True when the process has the SQLite file open (a worker that finished booting and delivers)."""
    target = str(Path(store).resolve())
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) == target:
                return True
        except OSError:
            continue
    return False
