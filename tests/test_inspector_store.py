"""The store methods the inspector reads through (router/store/base.py), on a real SQLite file:
cursor pagination, filters (provider, rule, state, time, text and JSON path on the payload), the
bounded scan, and dead letters listed, counted and replayed by filter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.model import NewEvent, Outcome, Verdict
from router.store.base import Cursor, DeadFilter, EventFilter
from router.store.sqlite import SqliteStore

T0 = 1_800_000_000.0


def _event(n: int, provider: str, payload: dict | bytes, matched: list[str], jobs: list[tuple[str, str]]) -> NewEvent:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    ts = T0 + n
    return NewEvent(id=f"evt_{int(ts * 1000):012x}{n:016x}", provider=provider, received_ts=ts,
                    headers={"content-type": "application/json", "x-n": str(n)}, query={},
                    content_type="application/json", body=body, matched=matched, jobs=jobs)


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "router.db", durability="process")
    for n in range(30):
        provider = "alpha" if n % 3 else "beta"
        payload = {"n": n, "kind": "even" if n % 2 == 0 else "odd", "flag": n % 5 == 0, "data": {"items": [{"id": f"i{n}"}]}}
        matched = ["all"] + (["fives"] if n % 5 == 0 else [])
        jobs = [("all", "sink")] + ([("fives", "pager")] if n % 5 == 0 else [])
        s.ingest(_event(n, provider, payload, matched, jobs))
    s.ingest(_event(30, "alpha", b"token=abc&form=1", [], []))  # not JSON: the path filter must skip it
    yield s
    s.close()


def _kill_pager_jobs(store: SqliteStore, status: int = 400) -> list[int]:
    """Claim every pager job and dead-letter it, as a delivery worker would on a permanent failure."""
    jobs = store.claim("w1", 100, {}, {}, actions=["pager"], now=T0 + 100)
    store.finish([Outcome(j.id, "w1", j.action, j.attempts, Verdict.DEAD, at=T0 + 100 + i, status=status,
                          error=f"HTTP {status}", reason=f"HTTP {status} (permanent)", latency_ms=3.0)
                  for i, j in enumerate(jobs)])
    return [j.id for j in jobs]


def _all_pages(store: SqliteStore, filt: EventFilter, scan: int = 20000) -> tuple[list[str], int]:
    ids: list[str] = []
    after: Cursor | None = None
    pages = 0
    while True:
        page = store.browse_events(filt, after, scan=scan)
        pages += 1
        ids += [r.event_id for r in page.rows]
        if page.next is None:
            return ids, pages
        after = Cursor.decode(page.next.encode())  # as the page's link carries it
        assert pages < 100


def test_pages_walk_every_event_once_newest_first(store: SqliteStore) -> None:
    ids, pages = _all_pages(store, EventFilter(limit=7))
    assert len(ids) == 31 == len(set(ids))
    assert pages == 5
    received = [store.show_event(i)["received_at"] for i in ids]
    assert received == sorted(received, reverse=True)


def test_a_row_says_what_the_list_shows(store: SqliteStore) -> None:
    _kill_pager_jobs(store)
    row = next(r for r in store.browse_events(EventFilter(limit=50)).rows if r.received_ts == T0 + 25)
    assert row.provider == "alpha" and row.matched == ["all", "fives"]
    assert row.deliveries == {"pending": 1, "dead": 1}
    assert row.last_status == 400 and row.last_error == "HTTP 400"
    assert json.loads(row.body or b"")["n"] == 25 and row.headers["x-n"] == "25"


def test_a_large_body_is_left_out_of_the_list(store: SqliteStore) -> None:
    rows = store.browse_events(EventFilter(limit=1), body_limit=10).rows
    assert rows[0].body is None


@pytest.mark.parametrize(("filt", "expected"), [
    (EventFilter(provider="beta"), {n for n in range(30) if n % 3 == 0}),
    (EventFilter(rule="fives"), {0, 5, 10, 15, 20, 25}),
    (EventFilter(rule="fiv"), set()),
    (EventFilter(text='"kind": "odd"'), {n for n in range(30) if n % 2}),
    (EventFilter(text="token=abc"), {30}),
    (EventFilter(json_path="kind", json_value="even"), {n for n in range(30) if n % 2 == 0}),
    (EventFilter(json_path="n", json_value="7"), {7}),
    (EventFilter(json_path="n", json_value='"7"'), set()),
    (EventFilter(json_path="flag", json_value="true"), {0, 5, 10, 15, 20, 25}),
    (EventFilter(json_path="data.items[0].id", json_value="i12"), {12}),
    (EventFilter(json_path="$.data.items[0].id", json_value="i12"), {12}),
    (EventFilter(json_path="data.missing", json_value="x"), set()),
    (EventFilter(since=T0 + 10, until=T0 + 13), {10, 11, 12}),
    (EventFilter(provider="alpha", rule="fives", since=T0 + 6), {10, 20, 25}),
], ids=["provider", "rule", "rule-prefix-is-not-a-rule", "text", "text-in-a-form-body", "path-string",
        "path-number", "path-number-is-not-a-string", "path-bool", "path-index", "path-dollar", "path-missing",
        "time-range", "combined"])
def test_filters(store: SqliteStore, filt: EventFilter, expected: set[int]) -> None:
    filt.limit = 4  # several pages, so the cursor and the filters work together
    ids, _ = _all_pages(store, filt)
    found = {int(store.show_event(i)["headers"]["x-n"]) for i in ids}
    assert found == expected


def test_state_filter(store: SqliteStore) -> None:
    _kill_pager_jobs(store)
    ids, _ = _all_pages(store, EventFilter(state="dead", limit=4))
    assert {int(store.show_event(i)["headers"]["x-n"]) for i in ids} == {0, 5, 10, 15, 20, 25}


def test_a_rare_match_costs_a_bounded_scan_and_the_next_page_goes_on(store: SqliteStore) -> None:
    page = store.browse_events(EventFilter(json_path="n", json_value="2", limit=10), scan=10)
    assert page.rows == [] and page.exhausted and page.next is not None  # n=2 is older than the 10 newest
    ids, pages = _all_pages(store, EventFilter(json_path="n", json_value="2", limit=10), scan=10)
    assert len(ids) == 1 and pages == 4


def test_dead_letters_listed_counted_and_replayed_by_filter(store: SqliteStore) -> None:
    job_ids = _kill_pager_jobs(store)
    assert store.count_dead_matching(DeadFilter()) == 6
    everything = store.browse_dead(DeadFilter(limit=4))
    assert [d.job_id for d in everything.rows] == sorted(job_ids, reverse=True)[:4]
    rest = store.browse_dead(DeadFilter(limit=4), everything.next)
    assert len(rest.rows) == 2 and rest.next is None
    assert {d.provider for d in everything.rows + rest.rows} == {"alpha", "beta"}
    assert store.count_dead_matching(DeadFilter(provider="beta")) == 2  # n = 0 and 15
    assert store.count_dead_matching(DeadFilter(action="sink")) == 0
    assert store.count_dead_matching(DeadFilter(until=T0 + 102)) == 2  # died at T0+100 and T0+101
    assert store.replay_dead_matching(DeadFilter(provider="beta")) == 2
    assert store.count_dead_matching(DeadFilter()) == 4
    replayed = [j for j in store.jobs(action="pager") if j.state == "pending"]
    assert len(replayed) == 2 and all(j.round_start == j.attempts == 1 for j in replayed)


@pytest.mark.parametrize("text", ["", "nope", "1.5", "x~", "nan~evt_1", "~evt"])
def test_a_garbled_cursor_starts_from_the_top(text: str) -> None:
    assert Cursor.decode(text) is None


def test_the_time_budget_ends_a_page_after_one_window(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "many.db", durability="process")
    try:
        for n in range(2500):
            s.ingest(_event(n, "alpha", {"n": n}, [], []))
        filt = EventFilter(provider="nobody", limit=10)
        scanned, after, pages = [], None, 0
        while True:
            page = s.browse_events(filt, after, budget=0.0)  # out of time at once: one window per page
            pages += 1
            scanned.append(page.scanned)
            assert page.rows == []
            if page.next is None:
                break
            assert page.exhausted
            after = page.next
        assert scanned == [1000, 1000, 1000] and pages == 3  # the last window finds the end (500 left)
        everything = s.browse_events(filt)  # with the default budget one page searches them all
        assert everything.next is None and everything.scanned == 3000
    finally:
        s.close()
