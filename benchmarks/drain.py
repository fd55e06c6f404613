"""Drain: how fast a backlog of delivery jobs goes out, for `file` jobs and for `forward` jobs.

    python benchmarks/drain.py [--backlog 50000] [--workers 1] [--store postgresql://...]

A backlog is written into a fresh store through the store's own interface (the SQLite default,
or the PostgreSQL database given), then `router worker` processes deliver it: `file` jobs append
to a file under files_root, `forward` jobs go to a local asyncio sink (benchmarks/sink.py) over
kept-alive connections. Reports jobs/s from the first delivery to the last line or request, and
beside it the rate counting from the worker's start (its imports and boot).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from run import HERE, PY, Proc, count_file, free_port, machine

from router.model import NewEvent, new_event_id, now_ts
from router.store import open_store

BODY = json.dumps({"event": "version_failed", "asset_id": "asset-5", "version_id": "ver-19b2"}).encode()


def rules(folder: Path, store: str | None, sink_url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    settings = f"settings:\n  store: \"{store}\"\n" if store else ""
    path = folder / "rules.yaml"
    path.write_text(f"""version: 1
{settings}providers:
  src: {{type: none}}
actions:
  archive: {{type: file, path: "drain.jsonl"}}
  downstream: {{type: forward, url: "{sink_url}", timeout: 10s}}
rules:
  - name: to-file
    actions: [archive]
  - name: to-sink
    actions: [downstream]
""")
    return path


def fill(location: str, action: str, rule: str, n: int) -> None:
    """n events with one job each, committed through the store's interface by 8 threads at once."""
    store = open_store(location, "process")

    def work(count: int) -> None:
        for _ in range(count):
            ts = now_ts()
            store.ingest(NewEvent(id=new_event_id(ts), provider="src", received_ts=ts, headers={}, query={},
                                  content_type="application/json", body=BODY, matched=[rule], jobs=[(rule, action)]))

    threads = [threading.Thread(target=work, args=(n // 8 + (1 if i < n % 8 else 0),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()


def lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def drain(work: Path, kind: str, backlog: int, workers: int, store: str | None, sink_url: str,
          counter: Path) -> dict:
    folder = work / kind
    rules_path = rules(folder, store, sink_url)
    location = store or str(folder / "var" / "router.db")
    rule, action = ("to-file", "archive") if kind == "file" else ("to-sink", "downstream")
    t0 = time.monotonic()
    fill(location, action, rule, backlog)
    filled = time.monotonic() - t0
    out = folder / "var" / "files" / "drain.jsonl"
    before = count_file(counter)

    def done() -> int:
        return lines(out) if kind == "file" else count_file(counter) - before

    started = time.monotonic()
    # at the default log level: a line per delivery attempt, as in service
    procs = [Proc([PY, "-m", "router", "worker", str(rules_path)], env={"ROUTER_WATCH": "off"},
                  log=work / f"{kind}-worker-{i}.log")
             for i in range(workers)]
    try:
        deadline = started + 600
        first = None  # when the first job was out: the processes' start (imports, boot) is not drain
        while done() < backlog and time.monotonic() < deadline:
            if first is None and done() > 0:
                first = time.monotonic()
            time.sleep(0.01)
        end = time.monotonic()
    finally:
        for p in procs:
            p.stop()
    delivered = done()
    first = first or end
    return {"kind": kind, "backlog": backlog, "delivered": delivered, "seconds": end - first, "boot_s": first - started,
            "rate": delivered / max(end - first, 1e-9), "overall": delivered / (end - started), "fill_s": filled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=50000)
    parser.add_argument("--workers", type=int, default=1, help="router worker processes (default 1)")
    parser.add_argument("--store", default=None, help="a PostgreSQL URI (a fresh database); default a new SQLite file")
    parser.add_argument("--only", choices=["file", "forward"], default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="router-drain-"))
    sink_port = free_port()
    counter = work / "sink.count"
    sink = Proc([PY, str(HERE / "sink.py"), str(sink_port), str(counter)], log=work / "sink.log")
    try:
        end = time.monotonic() + 10
        while not counter.exists() and time.monotonic() < end:
            time.sleep(0.05)
        results = []
        for kind in ("file", "forward"):
            if args.only in (None, kind):
                results.append(drain(work, kind, args.backlog, args.workers, args.store,
                                     f"http://127.0.0.1:{sink_port}/in", counter))
        print(machine(), file=sys.stderr)
        for r in results:
            print(f"drain {r['backlog']} {r['kind']} jobs, {args.workers} worker(s): {r['rate']:,.0f} jobs/s "
                  f"({r['delivered']} in {r['seconds']:.1f} s from the first delivery; {r['overall']:,.0f} jobs/s "
                  f"counting the {r['boot_s']:.1f} s from the worker's start; backlog written in {r['fill_s']:.1f} s)")
    finally:
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
