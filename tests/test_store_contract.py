"""The store contract: every operation of `router.store.base.Store`, on both back ends.

Each test runs against SQLite (a fresh file) and PostgreSQL (a fresh database on the session's
throwaway cluster). `other()` opens a second store on the same location: another process on the
SQLite file, another host on the PostgreSQL database. Leases and windows are short and waited
for by polling, since the database's clock cannot be faked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import wait_until

from router.errors import StoreError, StoreUnavailable
from router.model import NewEvent, Outcome, Verdict, new_event_id, now_ts
from router.store import EventFilter, Store, open_store

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    if request.param == "sqlite":
        return tmp_path / "router.db"
    return request.getfixturevalue("pg_database")


@pytest.fixture
def opened(location: str | Path) -> Iterator[Callable[[], Store]]:
    stores: list[Store] = []

    def open_one() -> Store:
        store = open_store(location, "fsync")
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        store.close()


@pytest.fixture
def store(opened: Callable[[], Store]) -> Store:
    return opened()


@pytest.fixture
def other(opened: Callable[[], Store]) -> Store:
    """A second process (SQLite) or host (PostgreSQL) on the same store."""
    return opened()


def event(provider: str = "p", jobs: list[tuple[str, str]] | None = None, *, matched: list[str] | None = None,
          dedupe_key: str | None = None, window: float = 0.0, ts: float | None = None, body: bytes = b'{"a": 1}') -> NewEvent:
    ts = now_ts() if ts is None else ts
    jobs = [("r1", "a1")] if jobs is None else jobs
    return NewEvent(new_event_id(ts), provider, ts, {"content-type": "application/json"}, {"q": "1"},
                    "application/json", body, matched if matched is not None else sorted({r for r, _ in jobs}),
                    jobs, dedupe_key=dedupe_key, dedupe_window=window)


def outcome(job, verdict: Verdict = Verdict.DELIVERED, *, owner: str | None = None, attempt: int | None = None,
            delay: float = 0.0, status: int | None = 200, error: str | None = None,
            hold: float | None = None) -> Outcome:
    at = now_ts()
    return Outcome(job.id, owner or job.lease_owner, job.action, job.attempts if attempt is None else attempt, verdict,
                   at, next_ts=at + delay, status=status, error=error, reason=error if verdict is Verdict.DEAD else None,
                   latency_ms=1.5, retryable=verdict is Verdict.RETRY,
                   hold_action_until=at + hold if hold is not None else None)


LEASES = {"a1": 30.0, "a2": 30.0, "slack": 30.0}


# --------------------------------------------------------------------------- ingest


def test_ingest_commits_event_and_jobs(store: Store, other: Store) -> None:
    e = event(jobs=[("r1", "a1"), ("r1", "a2"), ("r2", "a1")])
    result = store.ingest(e)
    assert (result.event_id, result.matched, result.deliveries, result.duplicate) == (e.id, ["r1", "r2"], 3, False)
    stored = other.event(e.id)  # visible to every other process or host at once: it is committed
    assert stored is not None
    assert (stored.provider, stored.body, stored.headers, stored.query, stored.content_type) == (
        "p", b'{"a": 1}', {"content-type": "application/json"}, {"q": "1"}, "application/json")
    assert [(j.rule, j.action, j.state, j.attempts) for j in other.jobs(event_id=e.id)] == [
        ("r1", "a1", "pending", 0), ("r1", "a2", "pending", 0), ("r2", "a1", "pending", 0)]
    assert other.counts() == {"events": 1, "jobs": 3, "attempts": 0}


def test_event_with_no_match_is_stored_without_jobs(store: Store) -> None:
    e = event(jobs=[], matched=[])
    assert store.ingest(e).deliveries == 0
    assert store.event(e.id) is not None and store.jobs(event_id=e.id) == []


def test_duplicate_within_window_answers_the_original(store: Store, other: Store) -> None:
    first = event(jobs=[("r1", "a1")], dedupe_key="k1", window=60)
    assert not store.ingest(first).duplicate
    again = other.ingest(event(jobs=[("r1", "a1")], dedupe_key="k1", window=60))  # from another host
    assert (again.duplicate, again.event_id, again.matched, again.deliveries) == (True, first.id, ["r1"], 0)
    assert store.counts()["events"] == 1 and store.counts()["jobs"] == 1
    # another provider's key of the same text is not a duplicate
    assert not store.ingest(event("q", dedupe_key="k1", window=60)).duplicate


def test_duplicate_after_window_is_a_new_event(store: Store) -> None:
    first = event(dedupe_key="k2", window=0.3)
    store.ingest(first)

    def fresh() -> str | None:
        result = store.ingest(event(dedupe_key="k2", window=0.3))
        return result.event_id if not result.duplicate else None

    second = wait_until(fresh, timeout=10, interval=0.1, what="the dedupe window to close")
    assert second != first.id
    assert store.event(second) is not None


def test_concurrent_duplicates_store_one_event(store: Store, other: Store) -> None:
    results = []

    def send(s: Store) -> None:
        results.append(s.ingest(event(dedupe_key="race", window=60)))

    threads = [threading.Thread(target=send, args=(s,)) for s in (store, other) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 8
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.event_id for r in results}) == 1
    assert store.counts()["events"] == 1


# --------------------------------------------------------------------------- claim, lease, finish


def test_claim_leases_each_job_to_one_owner(store: Store, other: Store) -> None:
    for _ in range(5):
        store.ingest(event())
    mine = store.claim("A", 3, LEASES, {})
    theirs = other.claim("B", 10, LEASES, {})
    assert len(mine) == 3 and len(theirs) == 2
    assert not {j.id for j in mine} & {j.id for j in theirs}
    assert all(j.attempts == 1 and j.event is not None and j.event.body == b'{"a": 1}' for j in mine + theirs)
    assert other.claim("B", 10, LEASES, {}) == []  # everything is leased


def test_claim_filters_by_action(store: Store) -> None:
    store.ingest(event(jobs=[("r", "a1"), ("r", "a2")]))
    jobs = store.claim("A", 10, LEASES, {}, actions=["a2"])
    assert [j.action for j in jobs] == ["a2"]


def test_expired_lease_is_claimed_again_and_the_lost_attempt_recorded(store: Store, other: Store) -> None:
    store.ingest(event())
    (first,) = store.claim("A", 1, {"a1": 0.4}, {})
    assert other.claim("B", 1, {"a1": 0.4}, {}) == []
    (second,) = wait_until(lambda: other.claim("B", 1, {"a1": 30}, {}), timeout=15, what="the lease to run out")
    assert (second.id, second.attempts, second.lease_owner) == (first.id, 2, "B")
    lost = store.attempts(first.id)
    assert [(a.n, a.status) for a in lost] == [(1, None)] and "lease expired" in (lost[0].error or "")


def test_stale_owner_cannot_finish(store: Store, other: Store) -> None:
    store.ingest(event())
    (first,) = store.claim("A", 1, {"a1": 0.3}, {})
    (second,) = wait_until(lambda: other.claim("B", 1, {"a1": 30}, {}), timeout=15, what="the lease to run out")
    assert store.finish([outcome(first, Verdict.DELIVERED)]) == 0  # A's lease is gone
    assert store.jobs()[0].state == "pending" and store.jobs()[0].lease_owner == "B"
    assert other.finish([outcome(second, Verdict.DELIVERED, attempt=1)]) == 0  # the token is (owner, attempts)
    assert other.finish([outcome(second, Verdict.DELIVERED)]) == 1
    job = store.jobs()[0]
    assert (job.state, job.lease_owner, job.last_status) == ("delivered", None, 200)
    assert [a.n for a in store.attempts(job.id)] == [1, 2]


def test_finish_counts_only_the_outcomes_that_applied(store: Store) -> None:
    for _ in range(3):
        store.ingest(event())
    jobs = store.claim("A", 3, LEASES, {})
    batch = [outcome(jobs[0]), outcome(jobs[1], Verdict.RETRY, delay=60, status=503, error="HTTP 503"),
             outcome(jobs[2], owner="B"), outcome(jobs[2], Verdict.RELEASED)]
    assert store.finish(batch) == 3  # the outcome from a non-owner did not count
    states = {j.id: (j.state, j.attempts) for j in store.jobs()}
    assert states == {jobs[0].id: ("delivered", 1), jobs[1].id: ("pending", 1), jobs[2].id: ("pending", 0)}


def test_retry_is_due_after_its_delay_and_dead_is_final(store: Store) -> None:
    store.ingest(event())
    (job,) = store.claim("A", 1, LEASES, {})
    assert store.finish([outcome(job, Verdict.RETRY, delay=0.5, status=503, error="HTTP 503")]) == 1
    pending = store.jobs()[0]
    assert (pending.state, pending.attempts, pending.lease_owner, pending.last_status) == ("pending", 1, None, 503)
    assert store.claim("A", 1, LEASES, {}) == []  # not due yet
    (again,) = wait_until(lambda: store.claim("A", 1, LEASES, {}), timeout=10, what="the retry to be due")
    assert again.attempts == 2
    store.finish([outcome(again, Verdict.DEAD, status=400, error="HTTP 400")])
    dead = store.jobs()[0]
    assert (dead.state, dead.last_error) == ("dead", "HTTP 400")
    assert [(a.n, a.status, a.retryable) for a in store.attempts(dead.id)] == [(1, 503, True), (2, 400, False)]
    assert store.claim("A", 1, LEASES, {}) == []


def test_release_hands_the_job_back_uncounted(store: Store, other: Store) -> None:
    store.ingest(event())
    (job,) = store.claim("A", 1, LEASES, {})
    assert store.finish([outcome(job, Verdict.RELEASED)]) == 1
    (again,) = other.claim("B", 1, LEASES, {})
    assert (again.id, again.attempts) == (job.id, 1)
    assert store.attempts(job.id) == []


def test_rate_slot_holds_across_owners(store: Store, other: Store) -> None:
    for _ in range(3):
        store.ingest(event(jobs=[("r", "slack")]))
    rates = {"slack": 2.0}  # one every 0.5 s, whoever claims
    taken: list[float] = []
    first = store.claim("A", 5, LEASES, rates)
    assert len(first) == 1  # one job of a paced action per claim
    taken.append(time.monotonic())
    assert other.claim("B", 5, LEASES, rates) == []  # the slot is taken, for every host
    for claimant, owner in ((other, "B"), (store, "A")):
        wait_until(lambda c=claimant, o=owner: c.claim(o, 5, LEASES, rates), timeout=10, interval=0.02,
                   what="the next rate slot")
        taken.append(time.monotonic())
    gaps = [b - a for a, b in zip(taken, taken[1:])]
    assert all(gap >= 0.45 for gap in gaps), gaps


def test_a_429_holds_the_whole_action(store: Store, other: Store) -> None:
    store.ingest(event(jobs=[("r", "a1")]))
    store.ingest(event(jobs=[("r", "a1"), ("r", "a2")]))
    (job,) = store.claim("A", 1, LEASES, {}, actions=["a1"])
    store.finish([outcome(job, Verdict.RETRY, delay=0.8, status=429, error="HTTP 429", hold=0.8)])
    held = other.claim("B", 10, LEASES, {})
    assert [j.action for j in held] == ["a2"]  # a1 waits, on every host; a2 does not
    released = wait_until(lambda: other.claim("B", 10, LEASES, {}), timeout=10, what="the Retry-After hold to end")
    assert {j.action for j in released} == {"a1"}


# --------------------------------------------------------------------------- operations


def _dead_job(store: Store, action: str = "a1") -> int:
    e = event(jobs=[("r", action)])
    store.ingest(e)
    (job,) = store.claim("A", 1, LEASES, {}, actions=[action])
    store.finish([outcome(job, Verdict.DEAD, status=404, error="HTTP 404")])
    return job.id


def test_replay_by_job_and_by_event(store: Store) -> None:
    job_id = _dead_job(store)
    assert store.count_dead() == 1
    assert store.replay("999999") == 0
    assert store.replay(str(job_id)) == 1
    assert store.replay(str(job_id)) == 0  # no longer dead
    job = store.jobs()[0]
    assert (job.state, job.round_start, job.attempts) == ("pending", 1, 1)
    (again,) = store.claim("A", 1, LEASES, {})
    assert (again.attempts, again.round_attempt) == (2, 1)  # numbering goes on; the schedule starts over
    store.finish([outcome(again, Verdict.DEAD, error="HTTP 404")])
    assert store.replay(job.event_id) == 1


def test_replay_dead_and_count_dead_filter_by_action_and_time(store: Store) -> None:
    _dead_job(store, "a1")
    _dead_job(store, "a2")
    _dead_job(store, "a2")
    assert store.count_dead() == 3
    assert store.count_dead(action="a2") == 2
    assert store.count_dead(since=store.clock() + 3600) == 0
    assert store.replay_dead(action="a2") == 2
    assert store.count_dead() == 1 and len(store.jobs(state="pending")) == 2
    assert store.replay_dead() == 1


def test_dead_letter_missing_actions(store: Store) -> None:
    store.ingest(event(jobs=[("r", "a1"), ("r", "gone")]))
    assert store.dead_letter_missing_actions(["a1"]) == 1
    (dead,) = store.jobs(state="dead")
    assert dead.action == "gone" and "removed" in (dead.last_error or "")
    assert store.dead_letter_missing_actions([]) == 1  # every pending job's action is gone


def test_prune_deletes_what_is_delivered_and_keeps_the_rest(store: Store) -> None:
    done = event(ts=now_ts() - 10)
    store.ingest(done)
    (job,) = store.claim("A", 1, LEASES, {})
    store.finish([outcome(job)])
    waiting = event(ts=now_ts() - 10)
    store.ingest(waiting)
    dead_id = _dead_job(store)
    def pruned(dead_retention: float | None) -> bool:
        store.prune(0.0, dead_retention)  # retention 0: anything finished before now
        return store.event(done.id) is None and (dead_retention is None or not store.jobs(state="dead"))

    wait_until(lambda: pruned(None), timeout=10, what="the delivered job to be pruned")
    assert store.event(done.id) is None and store.attempts(job.id) == []
    assert store.event(waiting.id) is not None and len(store.jobs(state="pending")) == 1
    assert [j.id for j in store.jobs(state="dead")] == [dead_id]  # dead letters stay without dead_retention
    wait_until(lambda: pruned(0.0), timeout=10, what="the dead letter to be pruned")
    assert store.attempts(dead_id) == []


def test_prune_takes_a_store_larger_than_one_chunk_and_keeps_what_is_still_due(store: Store) -> None:
    """More delivered events than one SQLite prune transaction looks at (PRUNE_CHUNK, so the write
    lock is never held for long): all of them go, with their jobs and attempts, while an event
    among them whose job is still pending stays, and so does one with an event just as old."""
    from router.store.sqlite import PRUNE_CHUNK

    base = now_ts() - 100
    events = [event(ts=base + i * 0.001) for i in range(2 * PRUNE_CHUNK + 7)]
    assert all(not isinstance(r, Exception) for r in store.ingest_many(events))
    kept = events[PRUNE_CHUNK + 3]  # in the second chunk
    jobs: list = []
    while len(jobs) < len(events):
        claimed = store.claim("A", 400, LEASES, {})
        assert claimed, "every job is due"
        jobs += claimed
    outcomes = [outcome(j) for j in jobs if j.event_id != kept.id]
    store.finish(outcomes)
    last = max(o.at for o in outcomes)
    wait_until(lambda: store.clock() > last + 0.01, timeout=10, what="the store's clock to pass the last outcome")
    assert store.prune(0.0, None) == (len(events) - 1, len(events) - 1)  # one call takes every chunk
    assert store.event(kept.id) is not None
    assert [j.event_id for j in store.jobs(state="pending")] == [kept.id]
    assert store.event(events[0].id) is None and store.event(events[-1].id) is None
    assert store.attempts(jobs[0].id) == [] and store.attempts(jobs[-1].id) == []
    assert store.prune(0.0, None) == (0, 0)  # nothing left to take


def test_a_dead_letter_retention_shorter_than_the_retention_still_prunes_dead_letters(store: Store) -> None:
    """Dead letters go after dead_letter_retention even while retention keeps delivered events
    longer; the event of a pruned dead letter stays until retention has passed for it too."""
    dead_id = _dead_job(store)
    (dead,) = store.jobs(state="dead")
    done = event(ts=now_ts() - 5)
    store.ingest(done)
    (job,) = store.claim("A", 1, LEASES, {})
    store.finish([outcome(job)])
    wait_until(lambda: store.prune(3600.0, 0.0)[1] == 1, timeout=10, what="the dead letter to be pruned")
    assert store.jobs(state="dead") == [] and store.attempts(dead_id) == []
    assert store.event(dead.event_id) is not None  # younger than retention: kept, with nothing to deliver
    assert store.event(done.id) is not None and len(store.jobs(state="delivered")) == 1


# --------------------------------------------------------------------------- read models


def test_list_events_with_every_filter(store: Store) -> None:
    base = now_ts() - 100
    a = event("p", [("r1", "a1")], ts=base)
    b = event("q", [("r2", "a1")], ts=base + 10)
    c = event("p", [], matched=[], ts=base + 20)
    for e in (a, b, c):
        store.ingest(e)
    dead_id = _dead_job(store, "a2")
    dead_event = store.jobs(state="dead")[0].event_id
    ids = lambda rows: [r["event_id"] for r in rows]  # noqa: E731
    assert ids(store.list_events(EventFilter()))[-3:] == [c.id, b.id, a.id]  # newest first
    assert ids(store.list_events(EventFilter(provider="q"))) == [b.id]
    assert ids(store.list_events(EventFilter(rule="r1"))) == [a.id]
    assert ids(store.list_events(EventFilter(state="dead"))) == [dead_event]
    assert set(ids(store.list_events(EventFilter(state="pending")))) == {a.id, b.id}
    assert ids(store.list_events(EventFilter(since=base + 5, until=base + 15))) == [b.id]
    assert len(store.list_events(EventFilter(limit=2))) == 2
    row = store.list_events(EventFilter(provider="q"))[0]
    assert row == {"event_id": b.id, "received_at": b.received_at, "provider": "q", "matched": ["r2"],
                   "deliveries": {"pending": 1}}
    assert dead_id


def test_show_event_and_list_dead(store: Store) -> None:
    job_id = _dead_job(store)
    event_id = store.jobs()[0].event_id
    shown = store.show_event(event_id)
    assert shown is not None
    assert (shown["provider"], shown["payload"], shown["matched"], shown["query"]) == ("p", {"a": 1}, ["r"], {"q": "1"})
    (delivery,) = shown["deliveries"]
    assert (delivery["job_id"], delivery["state"], delivery["attempts"], delivery["last_status"]) == (job_id, "dead", 1, 404)
    assert [h["status"] for h in delivery["history"]] == [404]
    assert store.show_event("evt_nope") is None
    job = store.job(job_id)
    assert job is not None and (job.state, job.attempts, job.last_status) == ("dead", 1, 404)
    assert store.job(job_id + 1000) is None
    (dead,) = store.list_dead(action=None, limit=10)
    assert (dead["job_id"], dead["action"], dead["reason"], dead["status"]) == (job_id, "a1", "HTTP 404", 404)
    assert store.list_dead(action="a2", limit=10) == []


def test_queue_gauges(store: Store) -> None:
    before = store.clock()
    store.ingest(event(jobs=[("r", "a1"), ("r", "a2")]))
    store.ingest(event(jobs=[("r", "a1")]))
    _dead_job(store, "a2")
    g = store.queue_gauges()
    assert g.pending == {"a1": 2, "a2": 1} and g.dead == {"a2": 1}
    assert g.oldest_pending_ts is not None and before - 1 <= g.oldest_pending_ts <= g.now
    assert abs(store.clock() - now_ts()) < 5  # the test host and the store agree here; the code never relies on it


def test_readiness(store: Store) -> None:
    assert store.readiness(1024) == "writable"


# --------------------------------------------------------------------------- PostgreSQL only


def test_new_jobs_wake_another_host(pg_database: str) -> None:
    listener, writer = open_store(pg_database), open_store(pg_database)
    try:
        woke = threading.Event()
        listener.on_new_jobs(woke.set)
        wait_until(lambda: woke.is_set(), timeout=10, what="the listener's first wake (on connecting)")
        woke.clear()
        writer.ingest(event())
        assert woke.wait(10), "no NOTIFY reached the other host within 10 s"
    finally:
        listener.close()
        writer.close()


def test_schema_is_created_once_by_concurrent_hosts(pg_database: str) -> None:
    from router.store.postgres import SCHEMA_VERSION, PostgresStore

    results: list[object] = []

    def start() -> None:
        try:
            results.append(PostgresStore(pg_database).schema_version())
        except Exception as exc:  # recorded, so the assertion shows it
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [SCHEMA_VERSION] * 4


def test_location_and_errors_never_show_the_password(pg_cluster) -> None:  # type: ignore[no-untyped-def]
    from router.store.postgres import PostgresStore

    uri = f"postgresql://router:hunter2-pw@/nodb?host={pg_cluster.root}/nowhere&connect_timeout=2"
    store = PostgresStore(uri, migrate=False)
    assert "hunter2" not in store.location and store.location.startswith("postgresql://router:<secret>@")
    with pytest.raises(StoreUnavailable) as failed:
        store.ingest(event(), timeout=2)
    assert "hunter2" not in str(failed.value)
    with pytest.raises(StoreError) as failed2:
        store.schema_version()
    assert "hunter2" not in str(failed2.value)
    assert store.readiness(0).startswith("unavailable")
    store.close()


def test_a_database_restart_costs_503s_while_down_and_nothing_after() -> None:
    """The database goes away and comes back: ingest fails fast (StoreUnavailable, so the router answers
    503 and the provider retries), then every operation works again without reopening the store, and
    the listener reconnects and wakes again."""
    from support.postgres import PgCluster

    cluster = PgCluster().start()
    try:
        uri = cluster.database()
        store, writer = open_store(uri), open_store(uri)
        woke = threading.Event()
        store.on_new_jobs(woke.set)
        writer.ingest(event())
        assert len(store.claim("A", 5, LEASES, {})) == 1

        cluster.stop_server()
        with pytest.raises(StoreUnavailable):
            writer.ingest(event(), timeout=3)
        with pytest.raises(StoreError):
            store.counts()
        assert store.readiness(0) != "writable"

        cluster.start_server()
        wait_until(lambda: store.readiness(0) == "writable", timeout=30, what="the store to be writable again")
        woke.clear()
        wait_until(lambda: writer.ingest(event()) and woke.is_set(), timeout=30, interval=0.5,
                   what="an ingest after the restart to wake the reconnected listener")
        assert len(store.claim("A", 5, LEASES, {})) >= 1
        store.close()
        writer.close()
    finally:
        cluster.stop()


def test_concurrent_ingests_are_each_committed_once(store: Store, other: Store) -> None:
    """Many request threads at once (a group commit on either back end): every answer is a committed event."""
    from concurrent.futures import ThreadPoolExecutor

    def send(i: int) -> str:
        s = store if i % 3 else other
        return s.ingest(event(jobs=[("r", "a1"), ("r", "a2")] if i % 2 else [])).event_id

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(send, range(400)))
    assert len(set(ids)) == 400
    assert store.counts()["events"] == 400 and store.counts()["jobs"] == 400
    assert all(store.event(i) is not None for i in ids[::37])


def test_ingest_many_answers_each_event_in_order(store: Store, other: Store) -> None:
    """The event loop's batch: one result per event, in order; a duplicate and a failing event in the
    batch are answered alone, and the rest are committed."""
    original = event(dedupe_key="many", window=60)
    store.ingest(original)
    taken = event()
    store.ingest(taken)
    batch = [event(jobs=[("r", "a1")]), event(dedupe_key="many", window=60), taken, event(jobs=[]),
             event(jobs=[("r", "a1"), ("r", "a2")])]
    results = store.ingest_many(batch)
    assert len(results) == 5
    first, duplicate, failed, unmatched, fanned = results
    assert not isinstance(first, Exception) and (first.event_id, first.deliveries) == (batch[0].id, 1)
    assert not isinstance(duplicate, Exception) and (duplicate.duplicate, duplicate.event_id) == (True, original.id)
    assert isinstance(failed, StoreUnavailable)  # its id was taken: refused, and only it
    assert not isinstance(unmatched, Exception) and unmatched.deliveries == 0
    assert not isinstance(fanned, Exception) and fanned.deliveries == 2
    for e in (batch[0], batch[3], batch[4]):
        assert other.event(e.id) is not None  # committed, for every other process or host to see
    assert other.event(batch[1].id) is None
    assert store.ingest_many([]) == []


def test_ingest_now_commits_the_batch_as_ingest_many_would_or_nothing(store: Store, other: Store) -> None:
    """An event loop's commit (SQLite commits there; PostgreSQL never does, and answers None): either
    every event is answered as ingest_many answers it and committed, or nothing at all is."""
    original = event(dedupe_key="now", window=60)
    store.ingest(original)
    taken = event()
    store.ingest(taken)
    batch = [event(jobs=[("r", "a1")]), event(dedupe_key="now", window=60), taken, event(jobs=[])]
    results = store.ingest_now(batch, 0.5)
    if results is None:
        assert store.backend == "postgresql"
        assert all(other.event(e.id) is None for e in (batch[0], batch[3]))  # nothing committed
        results = store.ingest_many(batch)
    first, duplicate, failed, unmatched = results
    assert not isinstance(first, Exception) and (first.event_id, first.deliveries) == (batch[0].id, 1)
    assert not isinstance(duplicate, Exception) and (duplicate.duplicate, duplicate.event_id) == (True, original.id)
    assert isinstance(failed, StoreUnavailable)
    assert not isinstance(unmatched, Exception) and unmatched.deliveries == 0
    assert other.event(batch[0].id) is not None and other.event(batch[3].id) is not None
    assert [j.event_id for j in other.jobs(state="pending") if j.event_id == batch[0].id] == [batch[0].id]
    assert store.ingest_now([], 0.5) == []


def test_ingest_many_from_several_threads_commits_each_event_once(store: Store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def send(i: int) -> list[str]:
        batch = [event(jobs=[("r", "a1")]) for _ in range(1 + i % 7)]
        results = store.ingest_many(batch)
        assert all(not isinstance(r, Exception) for r in results), results
        return [r.event_id for r in results if not isinstance(r, Exception)]

    with ThreadPoolExecutor(8) as pool:
        ids = [i for batch in pool.map(send, range(60)) for i in batch]
    assert len(ids) == len(set(ids)) == sum(1 + i % 7 for i in range(60))
    assert store.counts()["events"] == len(ids) and store.counts()["jobs"] == len(ids)


def test_one_failing_event_does_not_spoil_the_others_committed_with_it(store: Store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    first = event()
    store.ingest(first)
    batch = [event() for _ in range(30)]
    batch.insert(15, first)  # its id is taken: this one fails, alone

    def send(e: NewEvent) -> str:
        try:
            return store.ingest(e).event_id
        except StoreUnavailable:
            return "failed"

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, batch))
    assert answers.count("failed") == 1 and answers[15] == "failed"
    assert all(store.event(e.id) is not None for e in batch)
    assert store.counts()["events"] == 31


def test_a_host_with_a_wrong_clock_still_agrees_with_the_others(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Due times, leases and retries are on the database's clock: a host an hour ahead neither claims
    early nor makes its retries wait an hour longer."""
    import router.store.postgres as pg

    skew = 3600.0
    real = time.time

    class Skewed:
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def time() -> float:
            return real() + skew

    monkeypatch.setattr(pg, "time", Skewed)
    ahead, honest = open_store(pg_database), open_store(pg_database)
    try:
        e = event(ts=real() + skew)  # stamped by the host that is an hour ahead
        ahead.ingest(e)
        assert ahead.ingest(event(jobs=[], dedupe_key="k", window=60, ts=real() + skew)).duplicate is False
        assert ahead.ingest(event(jobs=[], dedupe_key="k", window=60, ts=real() + skew)).duplicate is True
        (job,) = honest.claim("B", 5, {"a1": 30}, {})  # due now for every host
        at = real() + skew
        retry = Outcome(job.id, "B", job.action, job.attempts, Verdict.RETRY, at, next_ts=at + 0.5, status=503,
                        error="HTTP 503", retryable=True)
        assert ahead.finish([retry]) == 1  # the outcome is written by the host that is ahead
        assert honest.claim("B", 5, {"a1": 30}, {}) == []
        (again,) = wait_until(lambda: honest.claim("B", 5, {"a1": 30}, {}), timeout=10,
                              what="the retry to be due half a second later, not an hour")
        assert again.attempts == 2
        history = honest.attempts(job.id)
        assert abs(history[0].at_ts - honest.clock()) < 60  # recorded on the database's clock
    finally:
        ahead.close()
        honest.close()


def test_an_attempt_keeps_the_first_bytes_of_the_answer(store: Store) -> None:
    store.ingest(event())
    (job,) = store.claim("A", 1, LEASES, {})
    done = outcome(job)
    done.response = '{"accepted": true, "id": "downstream-7"}'
    assert store.finish([done]) == 1
    (attempt,) = store.attempts(job.id)
    assert attempt.response == '{"accepted": true, "id": "downstream-7"}'
    shown = store.show_event(job.event_id)
    assert shown is not None and shown["deliveries"][0]["history"][0]["response"] == attempt.response


def test_a_sqlite_store_of_an_earlier_version_gains_the_response_column(tmp_path: Path) -> None:
    """A version-2 file (attempts without `response`) opens, keeps its attempts, and records answers."""
    import sqlite3

    path = tmp_path / "old.db"
    open_store(path, "process").close()
    with sqlite3.connect(path) as conn:  # make it look like a store written by the previous release
        conn.execute("DROP TABLE attempts")
        conn.execute("CREATE TABLE attempts (job_id INTEGER NOT NULL, n INTEGER NOT NULL, at_ts REAL NOT NULL,"
                     " status INTEGER, error TEXT, latency_ms REAL, retryable INTEGER, PRIMARY KEY (job_id, n))"
                     " WITHOUT ROWID")
        conn.execute("INSERT INTO attempts VALUES (99, 1, 1.0, 500, 'HTTP 500', 2.0, 1)")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    store = open_store(path, "process")
    try:
        assert [(a.n, a.status, a.response) for a in store.attempts(99)] == [(1, 500, None)]
        store.ingest(event())
        (job,) = store.claim("A", 1, LEASES, {})
        done = outcome(job)
        done.response = "ok"
        assert store.finish([done]) == 1
        assert store.attempts(job.id)[0].response == "ok"
    finally:
        store.close()


# --------------------------------------------------------------------------- SQLite only: the event loop's commit


def test_ingest_now_gives_way_to_a_writer_holding_the_lock_and_commits_nothing(tmp_path: Path) -> None:
    """While another process holds the store's write lock, or a program that knows nothing of it
    holds SQLite's own, ingest_now answers None within about its wait and commits nothing; once the
    lock is free it commits."""
    import sqlite3

    store = open_store(tmp_path / "router.db", "fsync")
    holder = open_store(tmp_path / "router.db", "fsync")  # its own flock: as another process's
    try:
        store.ingest(event())  # the schema exists
        first = event()
        with holder.write_lock:  # type: ignore[attr-defined]
            started = time.monotonic()
            assert store.ingest_now([first], 0.05) is None
            assert time.monotonic() - started < 5.0  # gave way: it did not wait for the holder
        assert store.event(first.id) is None
        foreign = sqlite3.connect(str(tmp_path / "router.db"), isolation_level=None)
        try:
            foreign.execute("BEGIN IMMEDIATE")  # SQLite's write lock, without ours
            assert store.ingest_now([first], 0.05) is None
            foreign.execute("ROLLBACK")
        finally:
            foreign.close()
        assert store.event(first.id) is None
        (result,) = store.ingest_now([first], 0.05) or [None]
        assert not isinstance(result, Exception) and result is not None and result.event_id == first.id
        assert holder.event(first.id) is not None
    finally:
        store.close()
        holder.close()
