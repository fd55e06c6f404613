"""The domain types an event passes through, from the request to its last delivery attempt.

    NewEvent      accepted, routed, ready to commit (with one job per matched rule and action)
    IngestResult  what the store answered for it (stored, or a duplicate of an earlier event)
    Job           one delivery of one event by one action, as a worker holds it under a lease
    Outcome       what one attempt came to: delivered, retry later, dead, or released unstarted

The clock and event ids are here too, so ingest, delivery and the command line share them.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any


def now_ts() -> float:
    return time.time()


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_event_id(ts: float) -> str:
    # time-ordered, so listings sort by arrival; 64 random bits make collisions irrelevant
    return f"evt_{int(ts * 1000):012x}{secrets.token_hex(8)}"


def template_context(payload: Any, headers: dict[str, str], query: dict[str, str], provider: str, event_id: str,
                     received_at: str, rule: str | None, *, event_type: str | None = None) -> dict[str, Any]:
    """What a template sees: the same names for a dedupe key at ingest and for an action at delivery.
    `event_type` is the provider's name for the event (`$event` in rules), when it has one."""
    return {
        "payload": payload,
        "headers": dict(headers),
        "query": dict(query),
        "provider": provider,
        "event_id": event_id,
        "received_at": received_at,
        "rule": rule,
        "event_type": event_type,
    }


class JobState(str, Enum):
    """A job's state in the store."""

    PENDING = "pending"  # due now or later (also while a worker holds it under a lease)
    DELIVERED = "delivered"
    DEAD = "dead"  # a dead letter: permanent failure, or retries used up


class Verdict(str, Enum):
    """What one attempt came to, and so what the store does with the job."""

    DELIVERED = "delivered"
    RETRY = "retry"  # stays pending, due again at `next_ts`
    DEAD = "dead"
    RELEASED = "released"  # handed back unstarted (a graceful stop): the attempt is not counted

    @property
    def state(self) -> JobState:
        return {Verdict.DELIVERED: JobState.DELIVERED, Verdict.DEAD: JobState.DEAD}.get(self, JobState.PENDING)


@dataclass
class NewEvent:
    id: str
    provider: str
    received_ts: float
    headers: dict[str, str]
    query: dict[str, str]
    content_type: str | None
    body: bytes
    matched: list[str]
    jobs: list[tuple[str, str]]  # (rule, action)
    dedupe_key: str | None = None
    dedupe_window: float = 0.0

    @property
    def received_at(self) -> str:
        return iso_utc(self.received_ts)


@dataclass
class IngestResult:
    event_id: str
    matched: list[str]
    deliveries: int
    duplicate: bool = False


@dataclass
class StoredEvent:
    """An event as a delivery reads it back from the store."""

    id: str
    provider: str
    received_at: str
    headers: dict[str, str]
    query: dict[str, str]
    content_type: str | None
    body: bytes


@dataclass
class Job:
    id: int
    event_id: str
    rule: str
    action: str
    attempts: int  # every attempt ever made, including the one now claimed; numbers the attempts
    lease_owner: str  # with `attempts`, the claim's token: an outcome counts only while both still hold
    created_ts: float
    event: StoredEvent | None = None  # None when the event is no longer in the store
    round_start: int = 0  # attempts made before the last replay; the retry schedule counts from here
    lost_by: str | None = None  # the owner of the previous claim, when its lease ran out without an outcome

    @property
    def round_attempt(self) -> int:
        """Which attempt of the current round (1 = first) this is."""
        return self.attempts - self.round_start


@dataclass
class Outcome:
    job_id: int
    owner: str
    action: str
    attempt: int
    verdict: Verdict
    at: float
    next_ts: float = 0.0
    status: int | None = None
    error: str | None = None  # this attempt's own error
    reason: str | None = None  # why the job is dead, when it is (kept on the job)
    latency_ms: float | None = None
    retryable: bool = False
    hold_action_until: float | None = None
    response: str | None = None  # the first bytes of the destination's answer, as text (redacted)
