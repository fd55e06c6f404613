"""Plain helpers shared by the test modules: signing, a real gunicorn, a real downstream, the CLI.

Fixtures that hand these out live in conftest.py; test modules import the functions directly
(`from helpers import sign_unitary`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- waiting


T = TypeVar("T")


def wait_until(probe: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05, what: str = "") -> T:
    """Call `probe` until it returns something truthy, or fail after `timeout` seconds with its last value."""
    end = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or probe!r}; last value: {last!r}")
        time.sleep(interval)  # polling interval, bounded by the deadline above


# --------------------------------------------------------------------------- signing



def new_p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def sign_panjaya(body: bytes, key: ec.EllipticCurvePrivateKey, raw: bool = False) -> str:
    """The `X-Signature` value Panjaya sends: hex of the DER ES256 signature, or of raw r||s (JWS form)."""
    der = key.sign(body, ec.ECDSA(hashes.SHA256()))
    if not raw:
        return der.hex()
    r, s = decode_dss_signature(der)
    return (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()


def sign_hmac(body: bytes, secret: str, algorithm: str = "sha256", encoding: str = "hex", prefix: str = "") -> str:
    digest = hmac.new(secret.encode("utf-8"), body, getattr(hashlib, algorithm)).digest()
    text = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode("ascii")
    return prefix + text


def sign_unitary(body: bytes, secret: str) -> str:
    """The `X-Hub-Signature-256` value Unitary sends: base64 of HMAC-SHA256 over the raw body."""
    return sign_hmac(body, secret, "sha256", "base64")


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode("utf-8")


def indent(text: str, spaces: int) -> str:
    return textwrap.indent(text.strip("\n"), " " * spaces)


# --------------------------------------------------------------------------- a real router under gunicorn


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StartupError(RuntimeError):
    pass


class RouterServer:
    """One gunicorn master (and its workers) serving `router.wsgi:app` from a rules file in `workdir`.

    Only the process this object started is ever signalled, by its PID (and, as a last resort, the
    process group it leads, which holds nothing but its own workers).
    """

    def __init__(self, workdir: Path, rules_text: str, *, env: dict[str, str] | None = None,
                 files: dict[str, str | bytes] | None = None, workers: int = 2, store: str = "var/router.db"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for rel, content in (files or {}).items():
            target = self.workdir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        self.rules_path = self.workdir / "rules.yaml"
        self.rules_path.write_text(rules_text, encoding="utf-8")
        self.store_path = self.workdir / store
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
        env = {**os.environ, **self.extra_env, "ROUTER_RULES": str(self.rules_path), "PYTHONUNBUFFERED": "1"}
        cmd = [
            sys.executable, "-m", "gunicorn", "router.wsgi:app",
            "-b", f"127.0.0.1:{port}", "-w", str(self.workers),
            "--graceful-timeout", "3", "--timeout", "60",
        ]
        return env, cmd

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

    # the store ------------------------------------------------------------------

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return query_store(self.store_path, sql, params)

    def event_count(self) -> int:
        rows = self.query("SELECT count(*) FROM events")
        return rows[0][0] if rows else 0

    def job_count(self) -> int:
        rows = self.query("SELECT count(*) FROM jobs")
        return rows[0][0] if rows else 0

    def event_body(self, event_id: str) -> bytes | None:
        rows = self.query("SELECT body FROM events WHERE id = ?", (event_id,))
        return bytes(rows[0][0]) if rows else None

    def event_provider(self, event_id: str) -> str | None:
        rows = self.query("SELECT provider FROM events WHERE id = ?", (event_id,))
        return rows[0][0] if rows else None

    def jobs_for(self, event_id: str) -> list[tuple[str, str]]:
        """(rule, action) of every delivery job stored for an event, sorted."""
        return sorted(self.query("SELECT rule, action FROM jobs WHERE event_id = ?", (event_id,)))

    def events_with_body(self, body: bytes) -> int:
        rows = self.query("SELECT count(*) FROM events WHERE body = ?", (body,))
        return rows[0][0] if rows else 0

    # logs -------------------------------------------------------------------------

    def log_text(self) -> str:
        out = []
        for p in (self.stderr_path, self.stdout_path):
            if p.exists():
                out.append(p.read_text("utf-8", errors="replace"))
        return "\n".join(out)


# --------------------------------------------------------------------------- a real downstream


@dataclass
class Recorded:
    method: str
    path: str  # including any query string
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes | str = b"ok"
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/plain"})
    delay: float = 0.0  # seconds before answering, to exercise the router's timeouts


def query_store(store: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read the router's SQLite store directly; a store not created yet reads as empty."""
    if not Path(store).exists():
        return []
    con = sqlite3.connect(str(store), timeout=10)
    try:
        return con.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        con.close()


class HttpServer:
    """A real HTTP/1.1 server on 127.0.0.1 that records every request and answers through `respond`.

    Subclasses decide the answer; recording, waiting and lifecycle are shared. A Reply's `delay`
    makes it hang that long before answering (a slow destination, not a test wait).
    """

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = self.headers.get("Content-Length")
                if length is not None:
                    body = self.rfile.read(int(length))
                elif "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    body = self._read_chunked()
                else:
                    body = b""
                rec = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with outer._cond:
                    reply = outer.respond(rec)
                    outer.requests.append(rec)
                    outer._cond.notify_all()
                if reply.delay:
                    time.sleep(reply.delay)  # a simulated slow server, not a test wait
                payload = reply.body.encode("utf-8") if isinstance(reply.body, str) else reply.body
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up waiting (its timeout): that is what a delay is for
                self.close_connection = True

            def _read_chunked(self) -> bytes:
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True)

    def respond(self, rec: Recorded) -> Reply:  # called with the lock held
        return Reply()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + path

    def start(self) -> Any:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def to(self, path: str) -> list[Recorded]:
        with self._cond:
            return [r for r in self.requests if r.path.split("?")[0] == path]

    def wait_for(self, n: int = 1, timeout: float = 15.0, path: str | None = None,
                 where: Callable[[Recorded], bool] | None = None) -> list[Recorded]:
        """Block until at least n matching requests have arrived; return all matching ones."""

        def matching() -> list[Recorded]:
            return [r for r in self.requests
                    if (path is None or r.path.split("?")[0] == path) and (where is None or where(r))]

        end = time.monotonic() + timeout
        with self._cond:
            while len(matching()) < n:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {n} request(s) to {path or 'any path'} within {timeout}s, got "
                                         f"{len(matching())}: {[(r.method, r.path) for r in self.requests]}")
                self._cond.wait(left)
            return list(matching())


class Downstream(HttpServer):
    """Answers as scripted: `script(Reply(...), ...)` queues answers used in order; when the queue is
    empty `default` answers. `wait_for(n)` blocks (with a deadline) until n requests have arrived."""

    def __init__(self, default: Reply | None = None):
        super().__init__()
        self.default = default or Reply()
        self._queue: deque[Reply] = deque()

    def respond(self, rec: Recorded) -> Reply:
        return self._queue.popleft() if self._queue else self.default

    def script(self, *replies: Reply) -> None:
        with self._cond:
            self._queue.extend(replies)

    def clear(self) -> None:
        with self._cond:
            self.requests.clear()
            self._queue.clear()


# --------------------------------------------------------------------------- the command line


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def run_cli(*args: str | os.PathLike, env: dict[str, str | None] | None = None, cwd: str | os.PathLike | None = None,
            timeout: float = 60, input: str | None = None) -> CliResult:
    """Run `python -m router ARGS...` as a subprocess. An env value of None removes that variable."""
    full_env = dict(os.environ)
    full_env.pop("ROUTER_RULES", None)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    proc = subprocess.run([sys.executable, "-m", "router", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


# --------------------------------------------------------------------------- shared test secrets

UNITARY_SECRET = "unitary-test-secret-7f3a9c"
HMAC_SECRET = "hmac-test-secret-51d2e8"
VIDEOID_TOKEN = "videoid-token-a8b9c0d1"
SECRET_ENV = {"UNITARY_SECRET": UNITARY_SECRET, "HMAC_SECRET": HMAC_SECRET, "VIDEOID_TOKEN": VIDEOID_TOKEN}
