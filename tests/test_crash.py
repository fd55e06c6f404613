"""The delivery promise under `kill -9` (README "Delivery"): every event answered 200 is delivered at
least once after every router process is killed and the router is started again, and a job whose
worker died mid-delivery is taken by another once its lease runs out.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from support import Reply, RouterServer, ScriptedServer, alive, attempts_of, jobs_of, kill_router_hard, wait_until

from router.errors import StoreUnavailable
from router.model import IngestResult, NewEvent, Outcome, Verdict, now_ts
from router.store.sqlite import SqliteStore as Store
from router.store.sqlite import _Rows

pytestmark = pytest.mark.backends("sqlite", "postgresql")  # the kill -9 test; the store-level ones are SQLite's

THREADS = 6
PER_THREAD = 1000  # an upper bound: the burst runs until the kill ends it (it must not end before)
HANG_TIMEOUT = 2.0  # the hang action's timeout; its lease is this plus 15 s
LEASE = HANG_TIMEOUT + 15.0


@pytest.fixture
def site() -> ScriptedServer:
    with ScriptedServer() as server:
        yield server


def rules(site: ScriptedServer) -> str:
    return f"""\
version: 1
settings:
  retry: {{schedule: [200ms, 200ms, 500ms, 1s], jitter: 0}}
providers:
  src: {{type: none}}
actions:
  sink: {{type: forward, url: "{site.url}/sink", timeout: 2s}}
  hang: {{type: forward, url: "{site.url}/hang", timeout: {HANG_TIMEOUT}s}}
rules:
  - {{name: burst, when: {{case: burst}}, actions: [sink]}}
  - {{name: stuck, when: {{case: hang}}, actions: [hang]}}
"""


class Burst:
    """Threads that post events until they have sent their share or the router stops answering."""

    def __init__(self, server: RouterServer):
        self.server = server
        self.acknowledged: dict[str, dict] = {}  # event_id -> payload
        self.failed = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(THREADS)]

    def start(self) -> Burst:
        for t in self._threads:
            t.start()
        return self

    def join(self) -> None:
        for t in self._threads:
            t.join(30)
            assert not t.is_alive()

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def _run(self, t: int) -> None:
        session = requests.Session()
        for i in range(PER_THREAD):
            payload = {"case": "burst", "thread": t, "i": i}
            try:
                response = session.post(self.server.url + "/hooks/src", json=payload, timeout=10)
            except requests.RequestException:
                with self._lock:
                    self.failed += 1
                return  # the router is gone
            if response.status_code == 200:
                with self._lock:
                    self.acknowledged[response.json()["event_id"]] = payload
            else:
                with self._lock:
                    self.failed += 1


def test_acknowledged_events_survive_kill_9_of_every_router_process(start_router, site: ScriptedServer) -> None:
    site.script("/sink", then=Reply(200, "ok", delay=0.02))  # keep deliveries in flight when the kill comes
    site.script("/hang", Reply(200, "too late", delay=HANG_TIMEOUT + 10))
    server = start_router(rules(site), workers=2, name="crash")

    burst = Burst(server).start()
    wait_until(lambda: burst.count() >= 40, timeout=20, what="40 acknowledged events")
    hang = server.post("/hooks/src", {"case": "hang"})
    assert hang.status_code == 200
    hang_id = hang.json()["event_id"]
    [first_hang] = site.wait_for(path="/hang", timeout=10)  # a worker is now mid-delivery

    killed = kill_router_hard(server)
    assert not any(alive(pid) for pid in killed)
    burst.join()
    acknowledged = set(burst.acknowledged)
    assert burst.failed > 0 and len(acknowledged) < THREADS * PER_THREAD, "the kill came after the burst ended"

    # every acknowledged event is in the store, whatever its delivery state
    stored = server.event_ids()
    assert acknowledged <= stored
    [hang_job] = jobs_of(server, hang_id)
    assert hang_job["state"] == "pending" and hang_job["lease_owner"] is not None  # claimed by a dead worker

    server.start()

    def delivered_ids() -> set[str]:
        return {r.headers.get("x-router-event-id", "") for r in site.to("/sink")}

    wait_until(lambda: acknowledged <= delivered_ids(), timeout=LEASE + 20,
               what="every acknowledged event to reach the downstream")

    # the job claimed by the killed worker is taken again once its lease has run out, not before
    second_hang = site.wait_for(2, path="/hang", timeout=LEASE + 20)[1]
    assert second_hang.headers["x-router-event-id"] == hang_id
    # (measured from the claim, as the store recorded its lease: the first attempt may have started
    # well after the claim, behind the jobs claimed with it)
    lease_ends = hang_job["next_ts"]
    to_epoch = time.time() - time.monotonic()  # Recorded.at is monotonic
    assert second_hang.at + to_epoch >= lease_ends - 0.5, (second_hang.at + to_epoch, lease_ends)
    assert lease_ends <= first_hang.at + to_epoch + LEASE + 0.5  # the lease of the claim the first attempt came from
    job = wait_until(lambda: [j for j in jobs_of(server, hang_id) if j["state"] == "delivered"],
                     what="the hang job to be delivered")[0]
    assert job["attempts"] == 2
    history = attempts_of(server, job["id"])
    assert [a["n"] for a in history] == [1, 2]
    assert "lease expired" in history[0]["error"]


# --------------------------------------------------------------------------- leases, at the store level


def one_job(store: Store, action: str = "act") -> str:
    received = now_ts()
    event = NewEvent(id=f"evt_lease_{received}", provider="src", received_ts=received, headers={}, query={},
                     content_type="application/json", body=b"{}", matched=["r"], jobs=[("r", action)])
    return store.ingest(event).event_id


def test_lease_keeps_a_claimed_job_from_others_until_it_expires(tmp_path: Path) -> None:
    store = Store(tmp_path / "router.db")
    try:
        event_id = one_job(store)
        t0 = now_ts() + 1
        leases = {"act": 5.0}

        [job] = store.claim("worker-a", 4, leases, {}, now=t0)
        assert (job.event_id, job.attempts, job.lease_owner) == (event_id, 1, "worker-a")
        assert job.event is not None and job.event.body == b"{}"

        assert store.claim("worker-b", 4, leases, {}, now=t0 + 0.1) == []
        assert store.claim("worker-b", 4, leases, {}, now=t0 + 4.9) == []

        [again] = store.claim("worker-b", 4, leases, {}, now=t0 + 5.01)
        assert (again.id, again.attempts, again.lease_owner) == (job.id, 2, "worker-b")
        lost = attempts_of(store, job.id)
        assert [(a["n"], a["status"]) for a in lost] == [(1, None)]
        assert "lease expired" in lost[0]["error"]

        # the worker that lost its lease reports late: its word no longer counts
        late = Outcome(job.id, "worker-a", "act", 1, Verdict.DELIVERED, t0 + 6, status=200)
        assert store.finish([late]) == 0
        assert jobs_of(store, event_id)[0]["state"] == "pending"

        done = Outcome(job.id, "worker-b", "act", 2, Verdict.DELIVERED, t0 + 6, status=200)
        assert store.finish([done]) == 1
        [row] = jobs_of(store, event_id)
        assert (row["state"], row["attempts"], row["lease_owner"]) == ("delivered", 2, None)
        assert store.claim("worker-c", 4, leases, {}, now=t0 + 100) == []
    finally:
        store.close()


def test_released_job_is_due_at_once_for_another_worker(tmp_path: Path) -> None:
    store = Store(tmp_path / "router.db")
    try:
        one_job(store)
        t0 = now_ts() + 1
        [job] = store.claim("worker-a", 1, {"act": 60.0}, {}, now=t0)
        assert store.finish([Outcome(job.id, "worker-a", "act", 1, Verdict.RELEASED, t0 + 0.1)]) == 1
        [again] = store.claim("worker-b", 1, {"act": 60.0}, {}, now=t0 + 0.2)
        assert (again.id, again.attempts) == (job.id, 1)  # a hand-back is not an attempt
    finally:
        store.close()


def test_rate_slot_is_shared_between_owners(tmp_path: Path) -> None:
    store = Store(tmp_path / "router.db")
    try:
        for _ in range(3):
            one_job(store, "slow")
        t0 = now_ts() + 1
        rates = {"slow": 2.0}
        assert len(store.claim("worker-a", 8, {}, rates, now=t0)) == 1  # one per claim for a rated action
        assert store.claim("worker-b", 8, {}, rates, now=t0 + 0.3) == []  # the slot is held for 0.5 s
        assert len(store.claim("worker-b", 8, {}, rates, now=t0 + 0.51)) == 1
    finally:
        store.close()



# --------------------------------------------------------------------------- group commit, at the store level


def _event(n: int, jobs: list[tuple[str, str]], dedupe_key: str | None = None) -> NewEvent:
    received = now_ts()
    return NewEvent(id=f"evt_batch_{n:04d}", provider="src", received_ts=received, headers={"x-n": str(n)}, query={},
                    content_type="application/json", body=b'{"n": %d}' % n, matched=[r for r, _ in jobs], jobs=jobs,
                    dedupe_key=dedupe_key, dedupe_window=60.0 if dedupe_key else 0.0)


def test_one_failing_event_does_not_spoil_its_batch(tmp_path: Path) -> None:
    """A batch is written with one multi-row INSERT per table; when one of its events cannot be
    stored (here: its id is taken), the others are still committed, each with exactly its jobs."""
    store = Store(tmp_path / "router.db")
    conn = store._conn()
    try:
        assert isinstance(store._ingest_batch(conn, lambda: [_Rows(_event(2, [("r", "a")]))])[0], IngestResult)
        batch = [_event(1, [("r", "a"), ("s", "b")]), _event(2, [("r", "a")]), _event(3, []),
                 _event(4, [("r", "a")], dedupe_key="k"), _event(5, [("r", "a")], dedupe_key="k")]
        results = store._ingest_batch(conn, lambda: [_Rows(e) for e in batch])
        assert [type(r).__name__ for r in results] == ["IngestResult", "IntegrityError", "IngestResult",
                                                       "IngestResult", "IngestResult"]
        assert results[4].duplicate and results[4].event_id == "evt_batch_0004"
        assert store.counts()["events"] == 4
        for n in (1, 2, 3, 4):
            stored = store.event(f"evt_batch_{n:04d}")
            assert stored is not None and stored.body == b'{"n": %d}' % n
        assert store.event("evt_batch_0005") is None
        jobs = [(j.event_id, j.rule, j.action) for j in store.jobs()]
        assert jobs == [("evt_batch_0002", "r", "a"), ("evt_batch_0001", "r", "a"), ("evt_batch_0001", "s", "b"),
                        ("evt_batch_0004", "r", "a")]
    finally:
        store.close()


def test_concurrent_ingests_are_each_committed_once(tmp_path: Path) -> None:
    """Threads of one process share commits; every event comes back with its own id and jobs,
    and the store holds each exactly once, with more events than there are rows per INSERT."""
    store = Store(tmp_path / "router.db")
    events = [_event(n, [("r", "a")] * (n % 3)) for n in range(300)]
    results: dict[str, IngestResult] = {}
    lock = threading.Lock()

    def work(chunk: list[NewEvent]) -> None:
        for e in chunk:
            r = store.ingest(e)
            with lock:
                results[e.id] = r

    threads = [threading.Thread(target=work, args=(events[i::12],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sorted(results) == [e.id for e in events]
        assert all(results[e.id].deliveries == len(e.jobs) and results[e.id].event_id == e.id for e in events)
        assert store.counts()["events"] == 300
        assert all(store.event(e.id) is not None for e in events)
        per_event = Counter(j.event_id for j in store.jobs())
        assert per_event == {e.id: len(e.jobs) for e in events if e.jobs}
    finally:
        store.close()


# --------------------------------------------------------------------------- the fsync before the answer


class _SyncSpy:
    """Wraps os.fdatasync: records which file each sync was of, and what the store held by then."""

    def __init__(self, db: Path, fail: int = 0):
        self.db, self.fail = db, fail
        self.synced: list[tuple[int, int]] = []  # (inode, events committed when the sync began)
        self._real = os.fdatasync

    def __call__(self, fd: int) -> None:
        reader = Store(self.db)  # what another process would find committed right now
        try:
            committed = reader.counts()["events"]
        finally:
            reader.close()
        self.synced.append((os.fstat(fd).st_ino, committed))
        if self.fail:
            self.fail -= 1
            raise OSError(errno.EIO, "Input/output error")
        self._real(fd)


def test_fsync_durability_answers_only_after_the_wal_holding_the_event_is_synced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite commits without syncing; the WAL file is then fdatasynced, outside the write lock,
    before the request is answered. The sync must come after the commit and be of the WAL."""
    db = tmp_path / "router.db"
    spy = _SyncSpy(db)
    monkeypatch.setattr(os, "fdatasync", spy)
    store = Store(db)
    try:
        for n in range(3):
            assert store.ingest(_event(n, [("r", "a")])).event_id == f"evt_batch_{n:04d}"
            wal = Path(str(db) + "-wal").stat().st_ino
            assert spy.synced[-1] == (wal, n + 1)  # this event was committed, and its WAL synced, before the answer
    finally:
        store.close()


def test_process_durability_does_not_sync_the_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "router.db"
    spy = _SyncSpy(db)
    monkeypatch.setattr(os, "fdatasync", spy)
    store = Store(db, durability="process")
    try:
        store.ingest(_event(1, [("r", "a")]))
        assert spy.synced == []
    finally:
        store.close()


def test_a_failed_wal_sync_is_a_503_not_an_acknowledgement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the disk refuses the sync, the event may not be durable: the request is not answered
    200 (the provider retries; at worst the retry is a second copy), and the store keeps working."""
    db = tmp_path / "router.db"
    spy = _SyncSpy(db, fail=1)
    monkeypatch.setattr(os, "fdatasync", spy)
    store = Store(db)
    try:
        with pytest.raises(StoreUnavailable, match="Input/output error"):
            store.ingest(_event(1, [("r", "a")]))
        assert store.ingest(_event(2, [("r", "a")])).event_id == "evt_batch_0002"
        assert spy.synced[-1][1] == 2
    finally:
        store.close()


def test_concurrent_wal_syncs_are_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits that finish while a sync is running are covered by one sync after it, not one each;
    and a call returns only after a sync that began after it has ended."""
    store = Store(tmp_path / "router.db")
    store.ingest(_event(0, []))  # the WAL file exists
    started, release = threading.Semaphore(0), threading.Event()
    calls: list[int] = []

    def slow_sync(fd: int) -> None:
        calls.append(fd)
        started.release()
        assert release.wait(10)

    monkeypatch.setattr(os, "fdatasync", slow_sync)
    returned: list[str] = []
    first = threading.Thread(target=lambda: (store.wal_sync.sync(), returned.append("first")))
    first.start()
    assert started.acquire(timeout=10)  # the first sync is running
    later = [threading.Thread(target=lambda: (store.wal_sync.sync(), returned.append("later"))) for _ in range(3)]
    for t in later:
        t.start()
    wait_until(lambda: store.wal_sync._calls == 5)  # ingest's own call, the first, and the three later ones
    assert returned == [] and len(calls) == 1
    release.set()
    for t in [first, *later]:
        t.join(10)
    assert sorted(returned) == ["first", "later", "later", "later"]
    assert len(calls) == 2  # the three later calls shared the one sync that began after theirs
    store.close()
