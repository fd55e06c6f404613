"""Slow clients against `router serve` and plain gunicorn: does anyone else still get answered?

    python benchmarks/slow_clients.py [--kinds router,gthread,sync,gevent] [--idle 500] [--trickle 200] \
        [--seconds 20] [--rate 50] [--output benchmarks/SLOW.md]

For each server kind, one at a time, on 127.0.0.1:

- router: `router serve rules.yaml --workers 2` with its other defaults (its own worker class,
  router.web.worker.RouterWorker: 8 threads, requests read whole in the event loop; delivery in its
  own process);
- routerworker (only when asked for): plain gunicorn given the router's worker class,
  `--worker-class router.web.worker.RouterWorker --threads 8 -w 2 --timeout 30`: the same worker
  without what `router serve` adds around it (the master's table that shares connections out
  evenly among the workers, router/web/balance.py, its logger and its other settings);
- gthread: plain gunicorn serving router.wsgi:app, `-k gthread --threads 8 -w 2 --timeout 30`;
- sync: plain gunicorn, `-k sync -w 2 --timeout 30`;
- gevent: plain gunicorn, `-k gevent -w 2 --timeout 30`, only when gevent is installed (otherwise
  it is reported as not installed and skipped).

Every kind gets ROUTER_BODY_TIMEOUT=10 and ROUTER_WATCH=off, and the rules of benchmarks/peers.py.
Against each: `--idle` connections that connect and send nothing, and `--trickle` connections that
send one byte a second (half trickle their request head, half send a whole head with its
Content-Length and trickle the body), all driven from one thread with non-blocking sockets. Meanwhile
an ordinary client, in a second thread, posts signed HMAC events (peers.BODY) to /hooks/hmac on a
fresh connection each, at `--rate` a second for `--seconds` seconds, open loop (a slow answer does
not slow the schedule), 5 s allowed per request; a timeout, an error or a non-2xx answer counts as
failed. The measurement ends when the last ordinary request is done; slow connections that have seen
neither an answer nor a close by then count as still open.

Target (the issue's): no ordinary request fails and their p99 stays under 250 ms, and every slow
connection is answered 408 or closed by its deadline. Prints a markdown table and writes it, with
the machine, to benchmarks/SLOW.md. Every process started here is stopped by its PID; the temporary
folder is removed.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import random
import resource
import selectors
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from peers import BODY, router_rules, signed
from run import HERE, PY, Proc, free_port, machine, wait_http

DEADLINE = 10.0  # ROUTER_BODY_TIMEOUT given to every server
REQUEST_TIMEOUT = 5.0  # seconds an ordinary request may take before it counts as failed
TRICKLE_EVERY = 1.0  # seconds between two bytes of a trickling connection
TARGET_P99_MS = 250.0
KINDS = ("router", "routerworker", "gthread", "sync", "gevent")
DEFAULT_KINDS = ("router", "gthread", "sync", "gevent")
PLAIN = [PY, "-m", "gunicorn", "router.wsgi:app", "-w", "2", "--timeout", "30", "--log-level", "warning",
         "--no-control-socket"]  # no control socket: plain gunicorn's default path is shared by every instance


# --------------------------------------------------------------------------- set-up


def raise_nofile() -> tuple[int, str | None]:
    """Soft RLIMIT_NOFILE up to the hard limit; a note when that is not enough for the run."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 1500:
        return soft, (f"RLIMIT_NOFILE could not go above {soft} (hard limit {hard}); this run needs about "
                      "idle + trickle + rate x 5 s descriptors, so connections may fail for want of them")
    return soft, None


def start_server(kind: str, work: Path, port: int, rules: Path) -> Proc:
    env = {"ROUTER_WATCH": "off", "ROUTER_BODY_TIMEOUT": str(int(DEADLINE))}
    bind = f"127.0.0.1:{port}"
    if kind == "router":
        cmd = [PY, "-m", "router", "serve", str(rules), "--bind", bind, "--workers", "2"]
    else:
        worker = {"gthread": ["-k", "gthread", "--threads", "8"],
                  "routerworker": ["--worker-class", "router.web.worker.RouterWorker", "--threads", "8"]
                  }.get(kind, ["-k", kind])
        cmd = PLAIN + worker + ["-b", bind]
        env["ROUTER_RULES"] = str(rules)
    return Proc(cmd, env=env, cwd=str(rules.parent), log=work / f"{kind}.log")


def accept_queue(port: int) -> int | None:
    """Connections waiting in the listening socket's accept queue (Linux: rx_queue of the LISTEN row)."""
    suffix = f":{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[3] == "0A" and parts[1].endswith(suffix):
                    return int(parts[4].split(":")[1], 16)
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return None


def request_bytes(headers: dict[str, str], close: bool = True) -> tuple[bytes, bytes]:
    """(head, body) of a signed event for /hooks/hmac."""
    lines = ["POST /hooks/hmac HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             *(f"{k}: {v}" for k, v in headers.items()), f"Content-Length: {len(BODY)}"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), BODY


def warm_up(url: str, headers: dict[str, str], count: int = 20) -> None:
    """A few ordinary events before the slow clients arrive: imports, first writes, a check of the set-up."""
    for _ in range(count):
        req = urllib.request.Request(url, data=BODY, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
        with urllib.request.urlopen(req, timeout=10) as r:
            if not 200 <= r.status < 300:
                raise RuntimeError(f"warm-up event answered {r.status}")


# --------------------------------------------------------------------------- the slow connections


@dataclass
class Slow:
    sock: socket.socket
    kind: str  # idle | head | body
    started: float
    rest: bytes  # still to trickle, one byte a tick
    connected: bool = False
    got: bytes = b""
    outcome: str | None = None  # 408 | closed | reset | answer NNN | connect failed | open
    ended: float | None = None


class SlowCrowd:
    """Idle and trickling connections, all driven from one thread with non-blocking sockets."""

    def __init__(self, port: int, idle: int, trickle: int, headers: dict[str, str]):
        self.port = port
        head, body = request_bytes(headers, close=False)
        # mixed (the same order every run), so no server sees all of one kind before the other
        self.plan = ["idle"] * idle + ["head"] * (trickle - trickle // 2) + ["body"] * (trickle // 2)
        random.Random(7).shuffle(self.plan)
        self.head, self.body = head, body
        self.conns: list[Slow] = []
        self.sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-crowd", daemon=True)
        self.started = 0.0
        self.queue: list[tuple[float, int]] = []  # (s since start, the server's accept queue), once a tick

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def _open(self) -> None:
        for kind in self.plan:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            rest = b"" if kind == "idle" else (self.head + self.body if kind == "head" else self.body)
            conn = Slow(sock, kind, time.monotonic(), rest)
            self.conns.append(conn)
            err = sock.connect_ex(("127.0.0.1", self.port))
            if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                self._end(conn, "connect failed")
                continue
            self.sel.register(sock, selectors.EVENT_WRITE, conn)

    def _end(self, conn: Slow, outcome: str) -> None:
        conn.outcome, conn.ended = outcome, time.monotonic()
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _connected(self, conn: Slow) -> None:
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._end(conn, "connect failed")
            return
        conn.connected = True
        self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
        if conn.kind == "body":
            self._send(conn, self.head)  # the whole head at once; the body trickles
        elif conn.kind == "head":
            self._trickle(conn)

    def _send(self, conn: Slow, data: bytes) -> bool:
        try:
            conn.sock.send(data)  # a few hundred bytes at most: the socket buffer takes them whole
            return True
        except BlockingIOError:
            return True
        except OSError:
            self._read(conn)  # an answer may be waiting behind the refusal
            if conn.outcome is None:
                self._end(conn, "reset")
            return False

    def _trickle(self, conn: Slow) -> None:
        if conn.rest and self._send(conn, conn.rest[:1]):
            conn.rest = conn.rest[1:]

    def _read(self, conn: Slow) -> None:
        if conn.outcome is not None:
            return
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = None  # reset
        if data:
            conn.got += data
            if b"\r\n" not in conn.got:
                return
        if conn.got.startswith(b"HTTP/") and b" " in conn.got:
            status = conn.got.split(b"\r\n", 1)[0].split(b" ")[1].decode(errors="replace")
            self._end(conn, "408" if status == "408" else f"answer {status}")
        elif conn.got:
            self._end(conn, "answer ?")
        else:
            self._end(conn, "closed" if data == b"" else "reset")

    def _run(self) -> None:
        self._open()
        next_tick = time.monotonic() + TRICKLE_EVERY
        while not self._stop.is_set():
            now = time.monotonic()
            for key, _ in self.sel.select(max(0.0, min(next_tick - now, 0.2))):
                conn = key.data
                if not conn.connected:
                    self._connected(conn)
                else:
                    self._read(conn)
            if not self.connected.is_set() and all(c.connected or c.outcome for c in self.conns):
                self.connected.set()
            now = time.monotonic()
            if now >= next_tick:
                next_tick += TRICKLE_EVERY
                waiting = accept_queue(self.port)
                if waiting is not None:
                    self.queue.append((now - self.started, waiting))
                for conn in self.conns:
                    if conn.outcome is None and conn.connected and conn.kind != "idle":
                        self._trickle(conn)
                for conn in self.conns:
                    if conn.outcome is None and not conn.connected and now - conn.started > REQUEST_TIMEOUT:
                        self._end(conn, "connect failed")

    def stop(self) -> list[Slow]:
        """End the measurement: what has not been answered or closed is still open. Closes them all."""
        self._stop.set()
        self._thread.join(10)
        for conn in self.conns:
            if conn.outcome is None:
                conn.outcome = "open"
                try:
                    self.sel.unregister(conn.sock)
                except (KeyError, ValueError):
                    pass
                conn.sock.close()
        self.sel.close()
        return self.conns


# --------------------------------------------------------------------------- the ordinary client


@dataclass
class Call:
    sock: socket.socket
    started: float
    out: bytes
    connected: bool = False
    got: bytes = b""
    status: int | None = None
    failure: str | None = None  # timeout | error | None
    ended: float | None = None


def _answer_complete(got: bytes, eof: bool) -> bool:
    end = got.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = got[:end].lower()
    body = got[end + 4:]
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            return len(body) >= int(value.strip() or 0)
        if name.strip() == b"transfer-encoding" and b"chunked" in value:
            return body.endswith(b"0\r\n\r\n") or eof
    return eof


@dataclass
class Ordinary:
    calls: list[Call] = field(default_factory=list)
    began: float = 0.0


def ordinary_client(port: int, headers: dict[str, str], seconds: float, rate: float) -> Ordinary:
    """Signed events at a steady rate, each on a fresh connection, open loop, until the last is done."""
    head, body = request_bytes(headers)
    request = head + body
    sel = selectors.DefaultSelector()
    total = int(seconds * rate)
    result = Ordinary(began=time.monotonic())
    inflight: list[Call] = []

    def finish(call: Call, failure: str | None = None) -> None:
        call.failure, call.ended = failure, time.monotonic()
        try:
            sel.unregister(call.sock)
        except (KeyError, ValueError):
            pass
        call.sock.close()
        inflight.remove(call)

    def start() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        call = Call(sock, time.monotonic(), request)
        result.calls.append(call)
        inflight.append(call)
        err = sock.connect_ex(("127.0.0.1", port))
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            finish(call, "error")
            return
        sel.register(sock, selectors.EVENT_WRITE, call)

    def writable(call: Call) -> None:
        if not call.connected:
            if call.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                finish(call, "error")
                return
            call.connected = True
        try:
            sent = call.sock.send(call.out)
        except BlockingIOError:
            return
        except OSError:
            finish(call, "error")
            return
        call.out = call.out[sent:]
        if not call.out:
            sel.modify(call.sock, selectors.EVENT_READ, call)

    def readable(call: Call) -> None:
        try:
            data = call.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            finish(call, "error")
            return
        call.got += data
        if _answer_complete(call.got, eof=not data):
            try:
                call.status = int(call.got.split(b" ", 2)[1])
            except (IndexError, ValueError):
                finish(call, "error")
                return
            finish(call)
        elif not data:
            finish(call, "error")  # closed before a whole answer

    sent = 0
    while sent < total or inflight:
        now = time.monotonic()
        while sent < total and result.began + sent / rate <= now:
            start()
            sent += 1
        for call in [c for c in inflight if now - c.started > REQUEST_TIMEOUT]:
            finish(call, "timeout")
        wait = 0.05 if sent >= total else max(0.0, result.began + sent / rate - time.monotonic())
        if inflight:
            wait = min(wait, max(0.0, min(c.started for c in inflight) + REQUEST_TIMEOUT - time.monotonic()))
            for key, mask in sel.select(wait):
                call = key.data
                if call not in inflight:
                    continue
                if mask & selectors.EVENT_WRITE:
                    writable(call)
                elif mask & selectors.EVENT_READ:
                    readable(call)
        else:
            time.sleep(wait)
    sel.close()
    return result


# --------------------------------------------------------------------------- one kind, the report


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


@dataclass
class Result:
    kind: str
    ordinary: Ordinary
    slow: list[Slow]
    queue: list[tuple[float, int]]  # (s since the slow connections' start, the server's accept queue)
    slow_started: float  # when the first slow connection was opened (time.monotonic)
    notes: list[str]

    def ok(self) -> list[float]:
        return [(c.ended - c.started) * 1000 for c in self.ordinary.calls
                if c.failure is None and c.status is not None and 200 <= c.status < 300]

    def failed(self) -> dict[str, int]:
        out = {"timeout": 0, "error": 0, "non-2xx": 0}
        for c in self.ordinary.calls:
            if c.failure:
                out[c.failure] += 1
            elif c.status is None or not 200 <= c.status < 300:
                out["non-2xx"] += 1
        return out

    def counts(self, kind: str | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.slow:
            if kind is None or c.kind == kind:
                key = c.outcome or "open"
                out[key] = out.get(key, 0) + 1
        return out

    def drop_times(self, kind: str | None = None) -> list[float]:
        return [c.ended - c.started for c in self.slow if (kind is None or c.kind == kind)
                and c.outcome in ("408", "closed", "reset") and c.ended is not None]

    def drop_text(self, kind: str | None = None) -> str:
        """Median / most seconds from a slow connection's connect to its 408 or close."""
        times = self.drop_times(kind)
        return f"{statistics.median(times):.1f} / {max(times):.1f}" if times else "-"

    def failure_window(self) -> str | None:
        """When (s from the slow connections' start) the failed ordinary requests were sent."""
        times = [c.started - self.slow_started for c in self.ordinary.calls
                 if c.failure or c.status is None or not 200 <= c.status < 300]
        if not times:
            return None
        return f"the failed ordinary requests were sent between {min(times):.1f} s and {max(times):.1f} s"

    def late(self) -> int:
        """Slow connections not dropped by their deadline (1 s of grace for a sweep and a busy machine)."""
        return sum(1 for c in self.slow if c.outcome not in ("408", "closed", "reset")
                   or c.ended is None or c.ended - c.started > DEADLINE + 1.0)

    def queue_text(self) -> str:
        """The most waiting, when the queue was empty again after it (s), the last sample."""
        if not self.queue:
            return "-"
        peak_at, peak = max(self.queue, key=lambda s: s[1])
        if peak == 0:
            return "0"
        empty = next((t for t, q in self.queue if t > peak_at and q == 0), None)
        return f"{peak} / {'-' if empty is None else f'{empty:.0f}'} / {self.queue[-1][1]}"

    def verdict(self) -> str:
        p99 = percentile(self.ok(), 99)
        why = []
        if sum(self.failed().values()):
            why.append("failures")
        if p99 is None or p99 >= TARGET_P99_MS:
            why.append("p99")
        if self.late():
            why.append(f"{self.late()} slow not dropped in time")
        return "no: " + ", ".join(why) if why else "yes"


def run_kind(kind: str, work: Path, args: argparse.Namespace, headers: dict[str, str], pem: str) -> Result:
    folder = work / kind
    rules = router_rules(folder, pem)
    port = free_port()
    proc = start_server(kind, work, port, rules)
    crowd: SlowCrowd | None = None
    notes: list[str] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        warm_up(f"http://127.0.0.1:{port}/hooks/hmac", headers)
        crowd = SlowCrowd(port, args.idle, args.trickle, headers)
        crowd.start()
        if not crowd.connected.wait(REQUEST_TIMEOUT + 1):
            notes.append("not every slow connection had connected after 6 s")
        time.sleep(0.5)
        ordinary = ordinary_client(port, headers, args.seconds, args.rate)
        queue, crowd_started = crowd.queue, crowd.started
        slow = crowd.stop()
        crowd = None
        result = Result(kind, ordinary, slow, queue, crowd_started, notes)
    finally:
        if crowd is not None:
            crowd.stop()
        proc.stop()
    log = (work / f"{kind}.log").read_text(errors="replace")
    timeouts = log.count("WORKER TIMEOUT")
    if timeouts:
        notes.append(f"gunicorn killed {timeouts} worker(s) for --timeout")
    return result


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report(results: list[Result], skipped: list[str], notes: list[str], args: argparse.Namespace,
           command: str) -> str:
    out = ["# Slow clients against the router's worker and plain gunicorn's", "", machine() + " (here the load "
           "is this script's own Python client, not wrk)", "",
           f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, made by `{command}`.", "",
           f"Each server (2 workers, ROUTER_BODY_TIMEOUT={DEADLINE:g}) gets {args.idle} idle connections (connected, "
           f"nothing sent) and {args.trickle} trickling ones ({args.trickle - args.trickle // 2} send their request "
           f"head one byte a second, {args.trickle // 2} a whole head with Content-Length and then the body one byte "
           "a second), opened together from one thread. From 0.5 s after they are all connected, an ordinary client "
           f"posts signed HMAC events to /hooks/hmac, {args.rate:g} a second for {args.seconds:g} s, each on a fresh "
           f"connection, open loop, {REQUEST_TIMEOUT:g} s allowed each; a timeout, an error or a non-2xx answer is a "
           "failure; p50/p99 are of the 2xx answers, from connect to the answer's last byte. The measurement ends "
           "when the last ordinary request is done: a slow connection that has by then seen neither an answer nor "
           "a close is still open. *Dropped after* is the median and the longest time from a slow connection's "
           "connect to its 408 or close. *Accept queue* is how many connections the kernel had completed that the "
           "server had not yet taken off its listening socket, sampled once a second: the most, the time (from the "
           "slow connections' start) it was first empty again after that, and the last sample. Target: no ordinary "
           f"request fails, p99 < {TARGET_P99_MS:g} ms, and every slow connection is answered 408 or closed by its "
           f"deadline ({DEADLINE:g} s, with 1 s of grace).", "",
           "| server | ordinary sent | 2xx | failed (timeout/error/non-2xx) | p50 ms | p99 ms | slow: 408 | closed | "
           "still open | other | dropped after s (median / most) | accept queue: most / empty at s / last | "
           "target met |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lat = r.ok()
        failed = r.failed()
        counts = r.counts()
        closed = counts.get("closed", 0) + counts.get("reset", 0)
        other = sum(v for k, v in counts.items() if k not in ("408", "closed", "reset", "open"))
        p99 = percentile(lat, 99)
        queue = r.queue_text()
        out.append(f"| {r.kind} | {len(r.ordinary.calls)} | {len(lat)} | {sum(failed.values())} "
                   f"({failed['timeout']}/{failed['error']}/{failed['non-2xx']}) | {fmt(percentile(lat, 50), 1)} | "
                   f"{fmt(p99, 1)} | {counts.get('408', 0)} | {closed} | {counts.get('open', 0)} | {other} | "
                   f"{r.drop_text()} | {queue} | {r.verdict()} |")
    for name in skipped:
        out.append(f"| {name} | - | - | - | - | - | - | - | - | - | - | - | not run |")
    out += ["", "By kind of slow connection (closed: of which reset by the server):", "",
            "| server | slow kind | connections | 408 | closed (reset) | still open | other | "
            "dropped after s (median / most) |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for kind in ("idle", "head", "body"):
            c = r.counts(kind)
            n = sum(c.values())
            if not n:
                continue
            other = {k: v for k, v in c.items() if k not in ("408", "closed", "reset", "open")}
            other_text = ", ".join(f"{k}: {v}" for k, v in sorted(other.items())) or "0"
            out.append(f"| {r.kind} | {kind} | {n} | {c.get('408', 0)} | {c.get('closed', 0) + c.get('reset', 0)} "
                       f"({c.get('reset', 0)}) | {c.get('open', 0)} | {other_text} | {r.drop_text(kind)} |")
    extra = notes + [f"{r.kind}: {n}" for r in results for n in r.notes + [r.failure_window()] if n]
    if extra:
        out += ["", "Notes:", ""] + [f"- {n}" for n in extra]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS),
                        help=f"server kinds, comma-separated, of {', '.join(KINDS)} (default "
                             f"{','.join(DEFAULT_KINDS)}; gevent only if installed)")
    parser.add_argument("--idle", type=int, default=500, help="idle connections (default 500)")
    parser.add_argument("--trickle", type=int, default=200, help="trickling connections (default 200)")
    parser.add_argument("--seconds", type=float, default=20, help="seconds of ordinary load (default 20)")
    parser.add_argument("--rate", type=float, default=50, help="ordinary events a second (default 50)")
    parser.add_argument("--output", default=str(HERE / "SLOW.md"))
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    command = "python benchmarks/slow_clients.py" + "".join(f" {a}" for a in sys.argv[1:])

    notes: list[str] = []
    limit, problem = raise_nofile()
    print(f"RLIMIT_NOFILE soft limit: {limit}", file=sys.stderr)
    if problem:
        print(problem, file=sys.stderr)
        notes.append(problem)
    skipped: list[str] = []
    if "gevent" in kinds and importlib.util.find_spec("gevent") is None:
        print("gevent: not installed", file=sys.stderr)
        notes.append("gevent: not installed (not run)")
        kinds.remove("gevent")
        skipped.append("gevent")

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    headers = signed("hmac", key)
    work = Path(tempfile.mkdtemp(prefix="router-slow-"))
    results: list[Result] = []
    try:
        for kind in kinds:
            began = time.monotonic()
            results.append(run_kind(kind, work, args, headers, pem))
            print(f"{kind}: done in {time.monotonic() - began:.0f} s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(results, skipped, notes, args, command)
    print(text)
    Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
