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
    response: str | None = None  # the first bytes of the destination's answer


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
    # a match on the payload (the inspector's filters): raw bytes contain `text`; the value at a dotted
    # `json_path` (as rules write it, `data.items[0].id`; no `[*]`) equals `json_value`, a JSON literal
    # (`5`, `true`, `"x"`) or, when it does not parse as one, a string
    text: str | None = None
    json_path: str | None = None
    json_value: str | None = None


@dataclass(frozen=True)
class Cursor:
    """Where a newest-first listing goes on: strictly older than (ts, key).

    For events ts is received_ts and key the event id; for dead letters ts is the time the job
    died and key its job id. Its text form is opaque to the pages that carry it in URLs."""

    ts: float
    key: str

    def encode(self) -> str:
        return f"{self.ts!r}~{self.key}"

    @classmethod
    def decode(cls, text: str | None) -> Cursor | None:
        if not text or "~" not in text:
            return None
        ts, key = text.split("~", 1)
        try:
            value = float(ts)
        except ValueError:
            return None
        return cls(value, key) if key and value == value else None  # value == value: not NaN


@dataclass
class EventSummary:
    """One row of the inspector's event list."""

    event_id: str
    received_at: str
    received_ts: float
    provider: str
    matched: list[str]
    deliveries: dict[str, int]  # job state -> count
    last_at: float | None = None  # the newest attempt of any of its deliveries
    last_status: int | None = None
    last_error: str | None = None
    body: bytes | None = None  # only when at most `body_limit` bytes (to tell the event type)
    headers: dict[str, str] = field(default_factory=dict)  # as stored


@dataclass
class DeadFilter:
    """Which dead letters a listing, a count or a bulk replay takes (every field optional)."""

    action: str | None = None
    rule: str | None = None
    provider: str | None = None
    event_id: str | None = None
    since: float | None = None  # dead at or after (unix seconds)
    until: float | None = None  # dead before
    limit: int = 50


@dataclass
class DeadSummary:
    job_id: int
    event_id: str
    provider: str | None  # None when the event is no longer stored
    rule: str
    action: str
    attempts: int
    dead_ts: float
    last_status: int | None
    reason: str | None


@dataclass
class Page:
    """A page of a newest-first listing. `next` is where the following page starts (None: the end).

    A listing that filters on what no index holds examines a bounded number of rows per page, so
    a page costs about the same however rare the match: `exhausted` says the page ended because
    that bound was reached, not because the page filled (the rows beyond are still to be
    searched, from `next`); `scanned` is how many rows it examined (at most that many when the
    page reached the end)."""

    rows: list[Any]
    next: Cursor | None
    exhausted: bool = False
    scanned: int = 0


# the read models' JSON shapes, shared by the back ends (the CLI prints them)

def payload_view(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def attempt_view(a: AttemptRow) -> dict[str, Any]:
    return {"n": a.n, "at": iso_utc(a.at_ts), "status": a.status, "error": a.error,
            "latency_ms": round(a.latency_ms, 2) if a.latency_ms is not None else None, "response": a.response}


def dead_view(job: JobRow, history: list[dict[str, Any]]) -> dict[str, Any]:
    return {"job_id": job.id, "event_id": job.event_id, "rule": job.rule, "action": job.action,
            "attempts": job.attempts, "status": job.last_status, "dead_at": iso_utc(job.updated_ts),
            "reason": job.last_error, "history": history}


def json_path_steps(path: str) -> list[str | int]:
    """`data.items[0].id` as keys and indexes; ValueError for what the inspector's filter cannot take."""
    steps: list[str | int] = []
    text = path.strip()
    if text.startswith("$."):
        text = text[2:]
    for part in text.split("."):
        key, _, rest = part.partition("[")
        if not key and not steps:
            raise ValueError("a path starts with a key, as in data.items[0].id")
        if key:
            steps.append(key)
        while rest:
            index, close, rest = rest.partition("]")
            if not close or not index.isdigit():
                raise ValueError("an index is a number in brackets, as in items[0] ([*] is for rules, not here)")
            steps.append(int(index))
            if rest:
                if not rest.startswith("["):
                    raise ValueError(f"unexpected '{rest[:20]}' after ']'")
                rest = rest[1:]
    if not steps or any(s == "" for s in steps):
        raise ValueError("empty path")
    return steps


def json_literal(text: str) -> Any:
    """What a JSON-path filter's value means: a JSON scalar when it parses as one, else the string."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if value is None or isinstance(value, (str, int, float, bool)) else text


class Store(Protocol):
    backend: str  # "sqlite" or "postgresql"
    location: str  # where it is, safe to print (a path, or a URI without its password)

    # ---------------------------------------------------------------- ingest and delivery
    def ingest(self, event: NewEvent, timeout: float = 15.0) -> IngestResult: ...

    def ingest_many(self, events: Sequence[NewEvent], timeout: float = 15.0) -> list[IngestResult | Exception]:
        """Commit several events at once (as ingest does each): one result per event, in order, its
        IngestResult or the StoreUnavailable that refused it. One caller's batch shares transactions
        and syncs with every other ingest of the process."""
        ...

    def ingest_now(self, events: Sequence[NewEvent], wait: float) -> list[IngestResult | Exception] | None:
        """ingest_many for a caller that must not block for long (an event loop): the results, the
        events committed and synced at once, or None, with nothing committed, when that cannot be
        done without waiting longer than `wait` seconds for anyone else (the caller then commits
        them with ingest_many, off its loop). A back end whose commit is a round trip to a server
        that may stall always answers None."""
        ...

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

    # ---------------------------------------------------------------- the inspector's pages
    def browse_events(self, filt: EventFilter, after: Cursor | None = None, *, scan: int = 100_000,
                      budget: float = 0.04, body_limit: int = 16384) -> Page:
        """Events newest first (by received time, then id), strictly older than `after`, as
        EventSummary rows (with the body when at most `body_limit` bytes). When `filt` needs more
        than the time index (provider, rule, state, payload), events are examined in windows of the
        newest until the page is full, `scan` were examined, or `budget` seconds went by (see Page)."""
        ...

    def browse_dead(self, filt: DeadFilter, after: Cursor | None = None) -> Page:
        """Dead letters newest first (by the time they died, then job id), as DeadSummary rows."""
        ...

    def count_dead_matching(self, filt: DeadFilter) -> int: ...

    def replay_dead_matching(self, filt: DeadFilter) -> int:
        """Re-queue every dead letter `filt` takes (as `replay` does one); returns how many."""
        ...
