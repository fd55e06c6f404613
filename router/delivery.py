"""The delivery loop: claim due jobs with a lease, attempt them, record every outcome.

One dispatcher thread per process claims work for its idle delivery threads, many jobs per
transaction, and outcomes go back many per transaction too. Jobs of an action that batches (`file`)
go to one thread together and are delivered with one write and one sync; the jobs of other
actions are shared out among the idle threads, each taking its own in turn, and a job whose lease
could run out before its attempt would is handed back unstarted rather than attempted late. The
decision after a failed attempt (retry when, or dead-letter why) is `decide`, kept pure so it is
easy to test.
"""

from __future__ import annotations

import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable

from router import logs, metrics
from router.actions.base import LEASE_MARGIN, Delivery
from router.config.model import ActionSpec, Config
from router.errors import DeliveryError
from router.model import Job, Outcome, Verdict, now_ts
from router.store import Store

IDLE_POLL = 0.25  # seconds between looks at the store when nothing is due
PER_THREAD = 32  # jobs claimed per idle delivery thread in one claim
BATCH = 512  # at most this many jobs of a batching action go to one thread at once
GATHER = 0.02  # seconds a claim waits for more jobs when the last one was not full (latency, not throughput)
START_WITHIN = LEASE_MARGIN - 5.0  # a job not started this long after its claim is handed back instead
PRUNE_EVERY = 300.0


def decide(job: Job, spec: ActionSpec, error: DeliveryError, now: float, rng: random.Random = random._inst) -> Outcome:  # type: ignore[attr-defined]
    """The outcome of a failed attempt: retry after the schedule (or Retry-After), or dead-letter."""
    schedule = spec.retry.schedule
    hold = None
    if error.retry_after is not None and error.status == 429:
        hold = now + error.retry_after  # the destination asked the whole action to wait
    n = job.round_attempt
    if error.retryable and n <= len(schedule):
        if error.retry_after is not None:
            delay = error.retry_after
        else:
            jitter = spec.retry.jitter
            delay = schedule[n - 1] * (1 + rng.uniform(-jitter, jitter))
        return Outcome(
            job.id, job.lease_owner, job.action, job.attempts, Verdict.RETRY, now,
            next_ts=now + max(0.0, delay), status=error.status, error=error.message, retryable=True,
            hold_action_until=hold,
        )
    reason = error.message if not error.retryable else f"gave up after {n} attempts: {error.message}"
    return Outcome(
        job.id, job.lease_owner, job.action, job.attempts, Verdict.DEAD, now, next_ts=now, status=error.status,
        error=error.message, reason=reason, retryable=error.retryable, hold_action_until=hold,
    )


def delivery_for(job: Job, config: Config | None = None) -> Delivery:
    e = job.event
    assert e is not None
    spec = config.providers.get(e.provider) if config is not None else None
    return Delivery(
        event_id=job.event_id,
        provider=e.provider,
        rule=job.rule,
        action=job.action,
        attempt=job.attempts,
        received_at=e.received_at,
        headers=e.headers,
        query=e.query,
        body=e.body,
        content_type=e.content_type,
        source=spec.impl if spec is not None else None,
    )


class Deliverer:
    """Delivery workers of one process."""

    def __init__(self, get_config: Callable[[], Config], get_store: Callable[[], Store] | Store, *,
                 concurrency: int | None = None):
        self.get_config = get_config
        self._get_store = get_store if callable(get_store) else (lambda: get_store)
        self.concurrency = concurrency or get_config().settings.delivery_concurrency
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._work: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._kick = threading.Event()
        self._stopping = threading.Event()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._dispatcher: threading.Thread | None = None
        self.heartbeat = time.monotonic()

    @property
    def store(self) -> Store:
        return self._get_store()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Deliverer:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._work_loop, name=f"router-deliver-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="router-dispatch", daemon=True)
        self._dispatcher.start()
        # pruning a large store takes seconds (in short transactions): never in the way of claims
        threading.Thread(target=self._prune_loop, name="router-prune", daemon=True).start()
        try:
            # other hosts' (and processes') new jobs wake this one at once where the store can tell
            self.store.on_new_jobs(self.kick)
        except Exception as exc:  # polling still finds the work
            logs.warning("cannot listen for new jobs; polling only", error=f"{type(exc).__name__}: {exc}")
        return self

    def alive(self) -> bool:
        return self._dispatcher is not None and self._dispatcher.is_alive()

    def healthy(self, stall: float = 60.0) -> bool:
        """Alive, and the dispatcher went round its loop recently."""
        return self.alive() and time.monotonic() - self.heartbeat < stall

    def kick(self) -> None:
        """Look for work now (an event was just committed in this process)."""
        self._kick.set()

    def stop(self, grace: float = 10.0) -> None:
        """Stop claiming, hand back jobs not yet started, and let in-flight attempts finish."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._kick.set()
        if self._dispatcher is not None:
            self._dispatcher.join(grace)
        released: list[Outcome] = []
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                released.extend(_released(job) for job in item.jobs)
        for _ in self._threads:
            self._work.put(None)
        deadline = time.monotonic() + grace
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._flush(released)

    # ------------------------------------------------------------------ loops

    def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            self.heartbeat = time.monotonic()
            asked = 0
            try:
                self._flush()
                claimed, asked = self._claim()
            except Exception as exc:  # the store is locked or the disk is full: wait and try again
                logs.error("delivery loop error", error=f"{type(exc).__name__}: {exc}")
                claimed = 0
                self._stopping.wait(1.0)
            if asked == 0:  # every thread is busy: claim as soon as one is free
                self._kick.wait(IDLE_POLL)
                self._kick.clear()
            elif claimed == 0:
                self._kick.wait(IDLE_POLL)
                self._kick.clear()
                # new work: give the jobs committed with it, and just after it, a moment to arrive,
                # so one claim (one write transaction) takes them together rather than one by one
                self._stopping.wait(GATHER)
            elif claimed < asked:
                self._stopping.wait(GATHER)  # a trickle: gather it rather than claim each job alone
        self._flush()

    def _claim(self) -> tuple[int, int]:
        """Claim work for the idle threads: (jobs claimed, jobs asked for; 0 when no thread is idle)."""
        idle = self.concurrency - self._busy
        if idle <= 0:
            return 0, 0
        config = self.get_config()
        leases = {name: spec.timeout + LEASE_MARGIN for name, spec in config.actions.items()}
        rates = {name: spec.rate for name, spec in config.actions.items() if spec.rate}
        asked = idle * PER_THREAD
        jobs = self.store.claim(self.owner, asked, leases, rates)
        for job in jobs:
            if job.lost_by is not None:
                logs.warning("lease expired; delivering again", event_id=job.event_id, rule=job.rule,
                             action=job.action, job_id=job.id, lost_by=job.lost_by, attempt=job.attempts)
        items = share_out(jobs, idle, {name for name, spec in config.actions.items() if spec.impl.batches})
        with self._busy_lock:
            self._busy += len(items)
        for item in items:
            self._work.put(item)
        return len(jobs), asked

    def _flush(self, extra: list[Outcome] | None = None) -> None:
        outcomes = list(extra or [])
        while True:
            try:
                outcomes.append(self._outcomes.get_nowait())
            except queue.Empty:
                break
        if outcomes:
            self.store.finish(outcomes)

    def _work_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            try:
                if item.batch:
                    with metrics.batched():
                        outcomes = self.attempt_batch(item.jobs)
                    for outcome in outcomes:
                        self._outcomes.put(outcome)
                else:
                    for job in item.jobs:  # each outcome is recorded at the next flush, not after the whole list
                        late = time.monotonic() - item.claimed > START_WITHIN
                        # not started: handed back, so another worker (or this one) takes it at once
                        self._outcomes.put(_released(job) if late or self._stopping.is_set() else self.attempt(job))
            finally:
                with self._busy_lock:
                    self._busy -= 1
                self._kick.set()

    def _prune_loop(self) -> None:
        """Prune once at start, then every PRUNE_EVERY seconds, until stopped."""
        while True:
            try:
                settings = self.get_config().settings
                events, jobs = self.store.prune(settings.retention, settings.dead_letter_retention)
                if events or jobs:
                    logs.info("pruned", events=events, jobs=jobs)
            except Exception as exc:  # the store is locked or gone: the next round tries again
                logs.error("prune failed", error=f"{type(exc).__name__}: {exc}")
            if self._stopping.wait(PRUNE_EVERY) or not self.alive():
                return  # stopped, or its dispatcher died (and a new Deliverer prunes in its place)

    # ------------------------------------------------------------------ one attempt

    def attempt(self, job: Job) -> Outcome:
        config = self.get_config()
        spec = config.actions.get(job.action)
        started = time.perf_counter()
        if spec is None:
            error = DeliveryError(f"action '{job.action}' no longer exists in the rules file", retryable=False)
            return self._failed(job, None, error, started)
        if job.event is None:
            error = DeliveryError("the event is no longer in the store", retryable=False)
            return self._failed(job, spec, error, started)
        try:
            delivery = delivery_for(job, config)
            status = spec.impl.deliver(delivery)
        except DeliveryError as failed:
            return self._failed(job, spec, failed, started)
        except UnicodeError as exc:  # the same bytes fail the same way every time
            unencodable = DeliveryError(f"cannot encode the delivery: {type(exc).__name__}", retryable=False)
            return self._failed(job, spec, unencodable, started)
        except Exception as exc:  # a bug of ours: never lose the job to it; the schedule still applies
            internal = DeliveryError(f"internal error: {type(exc).__name__}: {exc}", retryable=True)
            return self._failed(job, spec, internal, started)
        return self._delivered(job, status, started, delivery.response)

    def attempt_batch(self, jobs: list[Job]) -> list[Outcome]:
        """One attempt of each of these jobs of one action, in one call of the action's deliver_batch."""
        config = self.get_config()
        spec = config.actions.get(jobs[0].action)
        present = [j for j in jobs if j.event is not None]
        outcomes = [self.attempt(j) for j in jobs if spec is None or j.event is None]  # dead letters that say why
        if spec is None or not present:
            return outcomes
        started = time.perf_counter()
        try:
            results = spec.impl.deliver_batch([delivery_for(j, config) for j in present])
        except Exception as exc:  # a bug of ours: never lose the jobs to it; the schedule still applies
            failed = DeliveryError(f"internal error: {type(exc).__name__}: {exc}", retryable=True)
            results = [failed] * len(present)
        for job, result in zip(present, results):
            if isinstance(result, DeliveryError):
                outcomes.append(self._failed(job, spec, result, started))
            else:
                outcomes.append(self._delivered(job, result, started))
        return outcomes

    def _delivered(self, job: Job, status: int | None, started: float, response: str | None = None) -> Outcome:
        latency = (time.perf_counter() - started) * 1000
        metrics.delivery(job.action, "delivered", latency / 1000)
        logs.info(
            "delivery", event_id=job.event_id, provider=job.event.provider if job.event else None, rule=job.rule,
            action=job.action, attempt=job.attempts, outcome="delivered", status=status, latency_ms=round(latency, 2),
        )
        if response is not None:
            response = self.get_config().redactor(response)  # a destination may echo what we sent it
        return Outcome(job.id, job.lease_owner, job.action, job.attempts, Verdict.DELIVERED, now_ts(),
                       status=status, latency_ms=latency, response=response)

    def _failed(self, job: Job, spec: ActionSpec | None, error: DeliveryError, started: float) -> Outcome:
        latency = (time.perf_counter() - started) * 1000
        # a destination's answer may quote our secrets (a Slack webhook's path): the store keeps no secret
        error.message = self.get_config().redactor(error.message)
        now = now_ts()
        if spec is None:
            outcome = Outcome(job.id, job.lease_owner, job.action, job.attempts, Verdict.DEAD, now, error=error.message,
                              reason=error.message)
        else:
            outcome = decide(job, spec, error, now)
        outcome.latency_ms = latency
        if error.response is not None:
            outcome.response = self.get_config().redactor(error.response)
        label = outcome.verdict.value
        metrics.delivery(job.action, label, latency / 1000)
        fields = dict(event_id=job.event_id, provider=job.event.provider if job.event else None, rule=job.rule,
                      action=job.action, attempt=job.attempts, outcome=label, status=error.status, error=error.message,
                      latency_ms=round(latency, 2))
        if outcome.verdict is Verdict.DEAD:
            logs.warning("delivery", reason=outcome.reason, **fields)  # a dead letter: somebody should look
        else:
            logs.info("delivery", **fields)
        return outcome


class _Item:
    """What one delivery thread takes at once: a batch of one batching action, or jobs to attempt in turn."""

    __slots__ = ("jobs", "batch", "claimed")

    def __init__(self, jobs: list[Job], batch: bool):
        self.jobs = jobs
        self.batch = batch
        self.claimed = time.monotonic()


def share_out(jobs: list[Job], idle: int, batching: set[str]) -> list[_Item]:
    """Jobs of batching actions in one batch per action (of at most BATCH); the others dealt out in
    turn among the threads left idle, so no thread holds more than its share."""
    batches: dict[str, list[Job]] = {}
    others: list[Job] = []
    for job in jobs:
        if job.action in batching:
            batches.setdefault(job.action, []).append(job)
        else:
            others.append(job)
    items = [_Item(group[i:i + BATCH], True) for group in batches.values() for i in range(0, len(group), BATCH)]
    if others:
        hands = max(1, min(len(others), idle - len(items)))
        items += [_Item(others[i::hands], False) for i in range(hands)]
    return items


def _released(job: Job) -> Outcome:
    return Outcome(job.id, job.lease_owner, job.action, job.attempts, Verdict.RELEASED, now_ts())
