"""How long each inspector page takes with 100,000 events in the store.

    python benchmarks/inspector.py [--events 100000] [--runs 30] [--keep DIR]

Fills a SQLite store through the Store protocol (ingest, claim, finish: about 5% of deliveries
dead-lettered, the rest delivered, each with its attempt), then asks every page through the app
in-process (Flask's test client, so the time is the server's: routing, store queries, templates)
and prints the median and the 95th percentile of each. Everything is in a temporary folder that is
removed afterwards unless --keep names one (a kept store is reused by the next run).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from router.config.loader import load
from router.model import NewEvent, Outcome, Verdict, new_event_id
from router.store.sqlite import SqliteStore
from router.web.app import create_app

PASSWORD = "benchmark-password"
RULES = """\
version: 1
settings:
  durability: process
  inspector: {password: "PASSWORD"}
providers:
  dubbing: {type: none}
  moderation: {type: none}
  videoid: {type: none}
actions:
  media: {type: forward, url: "http://127.0.0.1:9/media"}
  ops: {type: forward, url: "http://127.0.0.1:9/ops"}
rules:
  - {name: dub-generated, provider: dubbing, when: {event: version_generated}, actions: [media]}
  - {name: dub-failures, provider: dubbing, when: {event: asset_failed}, actions: [ops]}
  - {name: moderation-all, provider: moderation, actions: [media]}
""".replace("PASSWORD", PASSWORD)

EVENTS = ["version_generated", "asset_failed", "version_ready"]


def fill(store: SqliteStore, count: int) -> None:
    rng = random.Random(7)
    start = time.time() - count * 0.5  # one event every half second, ending now
    t = time.monotonic()
    for n in range(count):
        ts = start + n * 0.5
        provider = rng.choices(["dubbing", "moderation", "videoid"], [80, 19, 1])[0]
        event = rng.choice(EVENTS)
        payload = {"event": event, "asset_id": f"asset-{n}", "version_id": f"v{n % 7}",
                   "version_locale": rng.choice(["de", "fr", "it", "es"]), "note": "x" * rng.randint(50, 400)}
        matched, jobs = [], []
        if provider == "dubbing" and event == "version_generated":
            matched, jobs = ["dub-generated"], [("dub-generated", "media")]
        elif provider == "dubbing" and event == "asset_failed":
            matched, jobs = ["dub-failures"], [("dub-failures", "ops")]
        elif provider == "moderation":
            matched, jobs = ["moderation-all"], [("moderation-all", "media")]
        store.ingest(NewEvent(new_event_id(ts), provider, ts, {"content-type": "application/json",
                                                               "user-agent": "bench"}, {}, "application/json",
                              json.dumps(payload).encode(), matched, jobs))
        if n % 20000 == 0 and n:
            print(f"  {n:,} events ({n / (time.monotonic() - t):,.0f}/s)", file=sys.stderr)
    now = time.time()
    while True:
        claimed = store.claim("bench", 2000, {}, {}, now=now + 10)
        if not claimed:
            break
        store.finish([Outcome(j.id, "bench", j.action, j.attempts,
                              Verdict.DEAD if rng.random() < 0.05 else Verdict.DELIVERED, at=now,
                              status=400 if j.action == "ops" else 200, error=None, latency_ms=rng.uniform(1, 80))
                      for j in claimed])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--keep", default=None, help="folder to build the store in and keep")
    args = ap.parse_args()

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="router-inspector-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        rules = folder / "rules.yaml"
        rules.write_text(RULES, encoding="utf-8")
        config = load(rules)
        store = SqliteStore(config.settings.store, "process")
        have = store.counts()["events"]
        if have < args.events:
            print(f"filling the store with {args.events - have:,} events ...", file=sys.stderr)
            fill(store, args.events - have)
        counts = store.counts()
        store.close()
        os.environ["ROUTER_LOG_LEVEL"] = "warning"
        app = create_app(config, rules)
        client = app.test_client()
        auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}

        first = client.get("/ui/", headers=auth).get_data(as_text=True)
        some_event = re.findall(r"/ui/events/(evt_[0-9a-f]+)", first)[10]
        cursor = re.search(r'href="(/ui/\?cursor=[^"]+)"', first)
        page2 = cursor.group(1).replace("&amp;", "&") if cursor else "/ui/"
        dead = client.get("/ui/dead", headers=auth).get_data(as_text=True)
        dead_event = re.findall(r"/ui/events/(evt_[0-9a-f]+)", dead)[0]
        csrf = re.search(r'name="csrf" value="([^"]+)"', dead).group(1)
        day_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 86400))

        pages: list[tuple[str, str, dict | None]] = [
            ("events, first page", "/ui/", None),
            ("events, next page (cursor)", page2, None),
            ("events, 200 per page", "/ui/?limit=200", None),
            ("events, list refresh (fragment)", "/ui/?fragment=rows", None),
            ("filter provider (80%)", "/ui/?provider=dubbing", None),
            ("filter provider (1%)", "/ui/?provider=videoid", None),
            ("filter provider (none match)", "/ui/?provider=nobody", None),
            ("filter rule", "/ui/?rule=dub-failures", None),
            ("filter state=dead", "/ui/?state=dead", None),
            ("filter since 1 day ago", f"/ui/?since={day_ago}", None),
            ("filter text (rare)", "/ui/?q=asset-4242%22", None),
            ("filter JSON path (rare)", "/ui/?path=asset_id&value=asset-4242", None),
            ("filter JSON path (none match)", "/ui/?path=asset_id&value=nothing", None),
            ("one event", f"/ui/events/{some_event}", None),
            ("one event with a dead letter", f"/ui/events/{dead_event}", None),
            ("dead letters", "/ui/dead", None),
            ("dead letters, filter action", "/ui/dead?action=ops", None),
            ("replay confirmation (count)", "/ui/dead/replay?action=media", None),
            ("try a payload (POST)", "/ui/try", {"csrf": csrf, "provider": "dubbing",
                                                 "payload": json.dumps({"event": "version_generated"})}),
        ]
        print(f"\nstore: {counts['events']:,} events, {counts['jobs']:,} jobs, {counts['attempts']:,} attempts "
              f"(SQLite, {config.settings.store.stat().st_size / 1e6:.0f} MB); {args.runs} runs per page, in-process\n")
        # wall time is what a user waits; CPU time is this process's own work, which a machine shared
        # with other jobs does not inflate (SQLite runs in this thread, so it counts there)
        print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
        print(f"{'page':<36} {'wall median':>11} {'wall p95':>9} {'CPU median':>11} {'CPU p95':>8}  status")
        worst_wall = worst_cpu = 0.0
        for name, url, form in pages:
            wall, cpu = [], []
            status = 0
            for _ in range(args.runs):
                t, c = time.perf_counter(), time.thread_time()
                r = client.post(url, data=form, headers=auth) if form else client.get(url, headers=auth)
                r.get_data()
                wall.append((time.perf_counter() - t) * 1000)
                cpu.append((time.thread_time() - c) * 1000)
                status = r.status_code
            wall.sort()
            cpu.sort()
            p95 = min(len(wall) - 1, int(len(wall) * 0.95))
            worst_wall, worst_cpu = max(worst_wall, wall[p95]), max(worst_cpu, cpu[p95])
            print(f"{name:<36} {statistics.median(wall):>11.1f} {wall[p95]:>9.1f} {statistics.median(cpu):>11.1f}"
                  f" {cpu[p95]:>8.1f}  {status}")
        print(f"\nworst p95: wall {worst_wall:.1f} ms, CPU {worst_cpu:.1f} ms (budget 100 ms); "
              f"load average at end: {os.getloadavg()[0]:.1f}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
