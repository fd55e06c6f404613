"""Helpers for the operations tests: `router serve` as a real process, Prometheus scrapes, JSON logs,
sockets held open across a signal.

Builds on tests/helpers.py (RouterServer, run_cli) and tests/delivery_support.py (wait_until,
ScriptedServer, children_of). Only processes started here are ever signalled, by their PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import requests
from delivery_support import children_of, wait_until
from helpers import RouterServer
from prometheus_client.parser import text_string_to_metric_families

# --------------------------------------------------------------------------- `router serve` as the gunicorn master


class ServedRouter(RouterServer):
    """`python -m router serve RULES --bind 127.0.0.1:PORT --workers N`: this process IS the gunicorn
    master, so signals sent to `pid` act as gunicorn's (HUP reloads, TERM stops gracefully)."""

    def __init__(self, workdir: Path, rules_text: str, *, extra_args: tuple[str, ...] = (), **kw: Any):
        super().__init__(workdir, rules_text, **kw)
        self.extra_args = tuple(extra_args)
        self.stderr_path = self.workdir / "serve.stderr.log"
        self.stdout_path = self.workdir / "serve.stdout.log"

    def command(self, port: int) -> tuple[dict[str, str], list[str]]:
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        env.pop("ROUTER_RULES", None)
        cmd = [sys.executable, "-m", "router", "serve", str(self.rules_path), "--bind", f"127.0.0.1:{port}",
               "--workers", str(self.workers), *self.extra_args]
        return env, cmd

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def master_pid(server: RouterServer) -> int:
    assert server.proc is not None
    return server.proc.pid


def workers_of(server: RouterServer) -> list[int]:
    return children_of(master_pid(server))


def signal_master(server: RouterServer, sig: int) -> None:
    os.kill(master_pid(server), sig)


def wait_workers(server: RouterServer, n: int, *, timeout: float = 20.0, exclude: set[int] | frozenset = frozenset()
                 ) -> list[int]:
    """Wait until the master has exactly n workers, none of them in `exclude`, all answering."""
    def probe() -> list[int] | None:
        pids = workers_of(server)
        if len(pids) == n and not set(pids) & set(exclude):
            return pids
        return None

    return wait_until(probe, timeout=timeout, what=f"{n} new worker(s)")


# --------------------------------------------------------------------------- files


def atomic_write(path: Path, text: str) -> None:
    """Replace a file in one step, as an editor's save does (a watcher never sees it half written)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- metrics


class Scrape:
    """One parsed /metrics answer: sample name -> [(labels, value)]."""

    def __init__(self, text: str):
        self.text = text
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.samples[s.name].append((dict(s.labels), s.value))

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
        return sum(v for lab, v in self.samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))

    def has(self, name: str, **labels: str) -> bool:
        return any(all(lab.get(k) == x for k, x in labels.items()) for lab, _ in self.samples.get(name, []))

    def by(self, name: str, *keys: str, nonzero: bool = True) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for lab, v in self.samples.get(name, []):
            out[tuple(lab.get(k, "") for k in keys)] += v
        return {k: v for k, v in out.items() if v or not nonzero}


def scrape(url: str) -> Scrape:
    # a fresh connection each time, so successive scrapes can land on different workers
    response = requests.get(url + "/metrics", timeout=15, headers={"Connection": "close"})
    assert response.status_code == 200, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"].startswith("text/plain"), response.headers["Content-Type"]
    return Scrape(response.text)


def per_process_counts(metrics_dir: Path, sample: str) -> dict[int, float]:
    """From prometheus_client's multiprocess files: pid -> total of `sample` written by that process."""
    from prometheus_client.multiprocess import MultiProcessCollector

    out: dict[int, float] = {}
    for f in sorted(metrics_dir.glob("counter_*.db")):
        m = re.search(r"_(\d+)\.db$", f.name)
        if not m:
            continue
        total = 0.0
        for family in MultiProcessCollector.merge([str(f)], accumulate=True):
            for s in family.samples:
                if s.name == sample:
                    total += s.value
        out[int(m.group(1))] = total
    return out


# --------------------------------------------------------------------------- logs


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text` that is a JSON object (the router's structured log lines)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


VALIDATE_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<path>\S+): (?P<msg>.+)$")


# --------------------------------------------------------------------------- raw sockets


def open_request(url: str, path: str, head_body: bytes, total_length: int, *,
                 content_type: str = "application/json") -> socket.socket:
    """Open a connection and send a POST's headers and the first bytes of its body; return the socket."""
    host, port = url.rsplit("//", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {total_length}\r\nConnection: close\r\n\r\n").encode("ascii")
    sock.sendall(head + head_body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def _server_side_inode(client: socket.socket) -> str | None:
    """The inode of the server's end of a loopback connection, from /proc/net/tcp."""
    cport = client.getsockname()[1]
    sport = client.getpeername()[1]
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = row.split()
        local, remote, inode = parts[1], parts[2], parts[9]
        if int(local.split(":")[1], 16) == sport and int(remote.split(":")[1], 16) == cport and inode != "0":
            return inode
    return None


def accepted_by(client: socket.socket, pids: list[int]) -> int | None:
    """The PID (among `pids`) that has accept()ed this connection, or None while it waits in the backlog."""
    inode = _server_side_inode(client)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


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


def now() -> float:
    return time.time()
