"""A running router's store as the tests read it: through the router's own store interface.

Every probe takes either a RouterServer (its store) or a Store, so the same probes serve the
end-to-end tests and the store-level ones, on either back end.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from router.store import Store
from support.servers import RouterServer
from support.waiting import wait_until

# A retry schedule short enough for tests: two retries 200 ms apart, no jitter.
FAST_RETRY = "{schedule: [200ms, 200ms], jitter: 0}"
FINAL_STATES = frozenset({"delivered", "dead"})


def _store(where: RouterServer | Store) -> Store:
    return where.store() if isinstance(where, RouterServer) else where


def jobs_of(where: RouterServer | Store, event_id: str) -> list[dict[str, Any]]:
    """Every job of an event, oldest first, as dicts of the job's columns."""
    return [dataclasses.asdict(j) for j in _store(where).jobs(event_id=event_id)]


def attempts_of(where: RouterServer | Store, job_id: int) -> list[dict[str, Any]]:
    """Every attempt of a job, in order, as dicts (n, at_ts, status, error, latency_ms, retryable)."""
    return [dataclasses.asdict(a) for a in _store(where).attempts(job_id)]


def wait_settled(where: RouterServer | Store, event_id: str, *, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Wait until every job of the event is delivered or dead; return the jobs."""

    def settled() -> list[dict[str, Any]] | None:
        jobs = jobs_of(where, event_id)
        return jobs if jobs and all(j["state"] in FINAL_STATES for j in jobs) else None

    try:
        return wait_until(settled, timeout=timeout, what=f"the jobs of {event_id} to be delivered or dead")
    except AssertionError as exc:
        jobs = jobs_of(where, event_id)
        attempts = {j["id"]: attempts_of(where, j["id"]) for j in jobs}
        raise AssertionError(f"{exc}\njobs: {jobs}\nattempts: {attempts}") from None


def wait_one_settled(where: RouterServer | Store, event_id: str, *, timeout: float = 20.0) -> dict[str, Any]:
    jobs = wait_settled(where, event_id, timeout=timeout)
    assert len(jobs) == 1, jobs
    return jobs[0]


def events_count(where: RouterServer | Store) -> int:
    return _store(where).counts()["events"]


def jobs_count(where: RouterServer | Store) -> int:
    return _store(where).counts()["jobs"]


def post_event(server: RouterServer, payload: dict, *, provider: str = "src", timeout: float = 15) -> str:
    """Post a JSON event to an unsigned provider; return its event id (the answer must be 200)."""
    response = server.post(f"/hooks/{provider}", payload, timeout=timeout)
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()["event_id"]
