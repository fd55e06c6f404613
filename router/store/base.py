"""The store interface: what the router needs of a durable store, whichever database holds it.

Two back ends implement it, `sqlite` (one host, embedded, the default) and `postgres` (several
hosts on one database). Everything outside this package goes through `Store`; no SQL lives
anywhere else. Driver errors become `StoreError` (or `StoreUnavailable` for a failed ingest)
at this boundary.

The promise both keep:
- `ingest` returns only once the event and its jobs are committed (and, with durability fsync,
  on disk); a failure raises StoreUnavailable and writes nothing of that event.
- `claim` leases due jobs: a claimed job is due again by itself when its lease runs out, so a
  worker that died loses nothing. A claim is identified by (lease_owner, attempts): `finish` applies
  an outcome only while both still hold, so a stale worker cannot overwrite a job another has
  re-claimed.
- A `rate` (deliveries per second of one action) holds across every process sharing the store;
  a 429's Retry-After holds the whole action.
- Attempts are numbered across replays; every attempt is kept with its outcome.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from router.model import IngestResult, Job, NewEvent, Outcome, StoredEvent, iso_utc


@dataclass
class JobRow:
    """A job as the read models show it."""

    id: int
    event_id: str
    rule: str
    action: str
    state: str
    attempts: int
    round_start: int
    next_ts: float
    lease_owner: str | None
    created_ts: float
    updated_ts: float
    last_status: int | None
    last_error: str | None


@dataclass
class AttemptRow:
    job_id: int
    n: int
    at_ts: float
    status: int | None
    error: str | None
    latency_ms: float | None
    retryable: bool | None


@dataclass
class QueueGauges:
    """For /metrics: jobs waiting and dead letters by action, and the oldest pending job's creation."""

    pending: dict[str, int] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)
    oldest_pending_ts: float | None = None
    now: float = 0.0  # the store's clock when read (the age is measured on it)


@dataclass
class EventFilter:
    """Which events a listing shows (every field optional)."""

    provider: str | None = None
    rule: str | None = None  # matched this rule
    state: str | None = None  # has a job in this state: pending, delivered or dead
    since: float | None = None  # received at or after (unix seconds)
    until: float | None = None  # received before
    limit: int = 50


# the read models' JSON shapes, shared by the back ends (the CLI prints them)

def payload_view(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def attempt_view(a: AttemptRow) -> dict[str, Any]:
    return {"n": a.n, "at": iso_utc(a.at_ts), "status": a.status, "error": a.error,
            "latency_ms": round(a.latency_ms, 2) if a.latency_ms is not None else None}


def dead_view(job: JobRow, history: list[dict[str, Any]]) -> dict[str, Any]:
    return {"job_id": job.id, "event_id": job.event_id, "rule": job.rule, "action": job.action,
            "attempts": job.attempts, "status": job.last_status, "dead_at": iso_utc(job.updated_ts),
            "reason": job.last_error, "history": history}


class Store(Protocol):
    backend: str  # "sqlite" or "postgresql"
    location: str  # where it is, safe to print (a path, or a URI without its password)

    # ---------------------------------------------------------------- ingest and delivery
    def ingest(self, event: NewEvent, timeout: float = 15.0) -> IngestResult: ...

    def claim(self, owner: str, limit: int, leases: dict[str, float], rates: dict[str, float], *,
              actions: Iterable[str] | None = None) -> list[Job]: ...

    def finish(self, outcomes: Sequence[Outcome]) -> int: ...

    def on_new_jobs(self, wake: Callable[[], None]) -> None:
        """Call `wake` whenever another process commits new jobs (where the back end can tell)."""

    # ---------------------------------------------------------------- operations
    def replay(self, ident: str) -> int: ...

    def replay_dead(self, *, action: str | None = None, since: float | None = None) -> int: ...

    def count_dead(self, *, action: str | None = None, since: float | None = None) -> int: ...

    def dead_letter_missing_actions(self, known: Iterable[str]) -> int: ...

    def prune(self, retention: float, dead_retention: float | None) -> tuple[int, int]: ...

    def save_rules_snapshot(self, rules_path: str, text: str) -> None: ...

    def rules_snapshot(self, rules_path: str) -> str | None: ...

    def readiness(self, min_free_bytes: int) -> str:
        """'writable', or why not ('not writable', 'disk full: N bytes free', 'unavailable: ...')."""
        ...

    def backup(self, destination: Path) -> str:
        """Copy the store to `destination` while it is in use; returns a one-line summary."""
        ...

    def close(self) -> None: ...

    # ---------------------------------------------------------------- read models
    def queue_gauges(self) -> QueueGauges: ...

    def list_events(self, filt: EventFilter) -> list[dict[str, Any]]: ...

    def show_event(self, event_id: str) -> dict[str, Any] | None: ...

    def list_dead(self, *, action: str | None, limit: int) -> list[dict[str, Any]]: ...

    def event(self, event_id: str) -> StoredEvent | None: ...

    def job(self, job_id: int) -> JobRow | None: ...

    def jobs(self, *, event_id: str | None = None, action: str | None = None,
             state: str | None = None) -> list[JobRow]: ...

    def attempts(self, job_id: int) -> list[AttemptRow]: ...

    def counts(self) -> dict[str, int]:
        """Rows kept: {'events': N, 'jobs': N, 'attempts': N}."""
        ...

    def clock(self) -> float:
        """The store's own clock (unix seconds): due times and leases are measured on it."""
        ...
