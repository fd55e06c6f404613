"""Delivery in batches: the `file` action's deliver_batch (one write and one sync per file, a bad
line failing alone), how claimed jobs are shared out among threads, and a whole backlog drained by
a real `router worker` with every line written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import run_cli, wait_until

from router.actions.base import Delivery
from router.actions.file import FileAction
from router.config.settings import Settings
from router.delivery import BATCH, share_out
from router.errors import DeliveryError
from router.model import Job, NewEvent, new_event_id, now_ts
from router.store import open_store
from router.templates import Template


def delivery(n: int, body: bytes | None = None) -> Delivery:
    return Delivery(f"evt_{n}", "src", "rule", "archive", 1, "2026-01-01T00:00:00.000Z", {}, {},
                    body if body is not None else json.dumps({"n": n, "dest": f"d{n % 2}"}).encode(),
                    "application/json")


def file_action(tmp_path: Path, path: str) -> FileAction:
    settings = Settings(store=tmp_path / "router.db", files_root=tmp_path / "files")
    return FileAction("archive", {"path": Template(path), "format": "jsonl"}, settings)


def test_a_batch_is_one_write_and_one_sync_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    action = file_action(tmp_path, "{{ payload.dest }}.jsonl")
    results = action.deliver_batch([delivery(n) for n in range(100)])
    assert results == [None] * 100
    assert len(synced) == 2  # d0.jsonl and d1.jsonl
    for dest in ("d0", "d1"):
        lines = (tmp_path / "files" / f"{dest}.jsonl").read_text().splitlines()
        assert len(lines) == 50 and all(json.loads(line)["payload"]["dest"] == dest for line in lines)
        numbers = [json.loads(line)["payload"]["n"] for line in lines]
        assert numbers == sorted(numbers)  # in the order the jobs were claimed


def test_a_line_that_cannot_be_rendered_fails_alone(tmp_path: Path) -> None:
    action = file_action(tmp_path, "{{ payload.where }}")
    good = delivery(1, json.dumps({"where": "ok.jsonl"}).encode())
    escape = delivery(2, json.dumps({"where": "../out.jsonl"}).encode())
    missing = delivery(3, json.dumps({"elsewhere": 1}).encode())
    results = action.deliver_batch([good, escape, missing, good])
    assert results[0] is None and results[3] is None
    assert isinstance(results[1], DeliveryError) and not results[1].retryable and ".." in results[1].message
    assert isinstance(results[2], DeliveryError) and not results[2].retryable
    assert len((tmp_path / "files" / "ok.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "out.jsonl").exists()


def job(n: int, action: str) -> Job:
    return Job(n, f"evt_{n}", "rule", action, 1, "owner", 0.0)


def test_share_out_batches_by_action_and_deals_out_the_rest() -> None:
    jobs = [job(n, "archive") for n in range(BATCH + 10)] + [job(1000 + n, "hook") for n in range(12)]
    items = share_out(jobs, idle=4, batching={"archive"})
    batches = [i for i in items if i.batch]
    assert [len(b.jobs) for b in batches] == [BATCH, 10]
    assert all(j.action == "archive" for b in batches for j in b.jobs)
    turns = [i for i in items if not i.batch]
    assert len(turns) == 2  # the two threads left idle
    assert sorted(j.id for t in turns for j in t.jobs) == [1000 + n for n in range(12)]
    # with no batching action, as many hands as idle threads (but no empty ones)
    assert [len(i.jobs) for i in share_out([job(n, "hook") for n in range(3)], 8, set())] == [1, 1, 1]


def archived_event(ts: float, n: int) -> NewEvent:
    """An event of provider `src` that rule `all` sends to action `archive`."""
    return NewEvent(id=new_event_id(ts), provider="src", received_ts=ts, headers={}, query={},
                    content_type="application/json", body=json.dumps({"n": n}).encode(), matched=["all"],
                    jobs=[("all", "archive")])


def test_a_worker_drains_a_backlog_writing_every_line_once(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("""\
version: 1
providers:
  src: {type: none}
actions:
  archive: {type: file, path: "backlog.jsonl"}
rules:
  - name: all
    actions: [archive]
""")
    store = open_store(tmp_path / "var" / "router.db", "process")
    ids = []
    for n in range(1500):
        event = archived_event(now_ts(), n)
        ids.append(store.ingest(event).event_id)
    out = tmp_path / "var" / "files" / "backlog.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "router", "worker", str(rules)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(store.jobs(state="delivered")) == 1500, timeout=60, what="the backlog to drain")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    written = [json.loads(line)["event_id"] for line in out.read_text().splitlines()]
    assert sorted(written) == sorted(ids)  # each exactly once
    assert run_cli("dead-letters", "list", "--rules", rules).stdout.strip() in ("(none)", "")


def test_a_commit_in_one_process_wakes_the_deliverer_of_another(tmp_path: Path) -> None:
    """The SQLite wake channel: the first listener gets a wake-up per commit that made jobs; a
    second listener on the same store is refused (it polls instead)."""
    import threading

    woken = threading.Event()
    listening = open_store(tmp_path / "router.db", "process")
    other = open_store(tmp_path / "router.db", "process")
    try:
        listening.on_new_jobs(woken.set)
        assert other.wake.listen(lambda: None) is False
        script = ("import sys; from router.store import open_store; from router.model import NewEvent;"
                  " s = open_store(sys.argv[1], 'process');"
                  " s.ingest(NewEvent(id='evt_wake', provider='src', received_ts=float(sys.argv[2]), headers={},"
                  " query={}, content_type=None, body=b'{}', matched=['r'], jobs=[('r', 'a')]))")
        writer = subprocess.run([sys.executable, "-c", script, str(tmp_path / "router.db"), str(now_ts())],
                                capture_output=True, text=True, timeout=60)
        assert writer.returncode == 0, writer.stderr
        assert woken.wait(10), "no wake-up arrived from the other process's commit"
    finally:
        listening.close()
        other.close()


def test_a_worker_prunes_what_outlived_its_retention_while_it_delivers(tmp_path: Path) -> None:
    """Pruning runs beside delivery (in short transactions, in a thread of its own): a worker that
    starts on a store full of events delivered hours ago prunes them, delivers what is new, and
    keeps the new events, whose retention has not passed."""
    from router.model import Outcome, Verdict

    rules = tmp_path / "rules.yaml"
    rules.write_text("""\
version: 1
settings:
  retention: 1h
providers:
  src: {type: none}
actions:
  archive: {type: file, path: "kept.jsonl"}
rules:
  - name: all
    actions: [archive]
""")
    store = open_store(tmp_path / "var" / "router.db", "process")

    old_ts = now_ts() - 7200
    old = [archived_event(old_ts + n * 0.001, n) for n in range(1200)]  # more than one prune transaction takes
    store.ingest_many(old)
    jobs = store.claim("earlier", 2000, {"archive": 30.0}, {})
    assert len(jobs) == len(old)
    store.finish([Outcome(j.id, j.lease_owner, j.action, j.attempts, Verdict.DELIVERED, old_ts + 1, status=None)
                  for j in jobs])
    new = [archived_event(now_ts(), n) for n in range(300)]
    store.ingest_many(new)
    err = tmp_path / "worker.err"
    with err.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "router", "worker", str(rules)], stdout=subprocess.DEVNULL,
                                stderr=sink)
        try:
            wait_until(lambda: all(store.event(e.id) is None for e in (old[0], old[-1]))
                       and len(store.jobs(state="delivered")) == len(new), timeout=60,
                       what="the old events to be pruned and the new ones delivered")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert all(store.event(e.id) is not None for e in new)
    written = (tmp_path / "var" / "files" / "kept.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["event_id"] for line in written) == sorted(e.id for e in new)
    pruned = [json.loads(line) for line in err.read_text().splitlines() if '"pruned"' in line]
    assert pruned and pruned[0]["events"] == len(old) and pruned[0]["jobs"] == len(old)
