"""The delivery loop's pure decision after a failed attempt (`router.delivery.decide`), as a table:
retry when (the schedule, its jitter, Retry-After) or dead-letter why, and what a 429 holds."""

from __future__ import annotations

import random

import pytest

from router.actions.forward import ForwardAction
from router.config.model import ActionSpec
from router.config.settings import RetryPolicy
from router.delivery import decide
from router.errors import DeliveryError
from router.model import Job, Verdict

NOW = 1_700_000_000.0
SCHEDULE = (10.0, 60.0, 300.0)


def spec(jitter: float = 0.0) -> ActionSpec:
    # the action's own impl plays no part in the decision; any real one will do
    impl = ForwardAction.__new__(ForwardAction)
    return ActionSpec("hook", "forward", impl, RetryPolicy(SCHEDULE, jitter), rate=None, timeout=10.0)


def job(attempts: int, round_start: int = 0) -> Job:
    return Job(7, "evt_1", "rule", "hook", attempts, "owner-a", NOW - 100, round_start=round_start)


@pytest.mark.parametrize(
    ("attempt", "round_start", "retryable", "status", "retry_after", "verdict", "delay"),
    [
        (1, 0, True, 500, None, Verdict.RETRY, 10.0),  # first failure: the schedule's first delay
        (2, 0, True, 503, None, Verdict.RETRY, 60.0),
        (3, 0, True, None, None, Verdict.RETRY, 300.0),  # a connection error is retried like a 5xx
        (4, 0, True, 500, None, Verdict.DEAD, None),  # the schedule is used up
        (1, 0, False, 404, None, Verdict.DEAD, None),  # permanent at once
        (1, 0, True, 429, 42.0, Verdict.RETRY, 42.0),  # Retry-After wins over the schedule
        (5, 4, True, 500, None, Verdict.RETRY, 10.0),  # after a replay the schedule restarts
        (8, 4, True, 500, None, Verdict.DEAD, None),
    ],
)
def test_decide_table(attempt, round_start, retryable, status, retry_after, verdict, delay) -> None:
    error = DeliveryError("boom", retryable=retryable, status=status, retry_after=retry_after)
    outcome = decide(job(attempt, round_start), spec(), error, NOW)
    assert outcome.verdict is verdict
    assert (outcome.job_id, outcome.owner, outcome.attempt, outcome.status) == (7, "owner-a", attempt, status)
    assert outcome.retryable is retryable
    if delay is not None:
        assert outcome.next_ts == pytest.approx(NOW + delay)
        assert outcome.reason is None
    else:
        assert outcome.reason  # a dead letter always says why
        if retryable:
            assert outcome.reason.startswith(f"gave up after {attempt - round_start} attempts")
        else:
            assert outcome.reason == "boom"


def test_jitter_stays_within_its_fraction() -> None:
    rng = random.Random(1)
    error = DeliveryError("boom", retryable=True, status=500)
    delays = [decide(job(2), spec(jitter=0.2), error, NOW, rng).next_ts - NOW for _ in range(500)]
    assert min(delays) >= 60 * 0.8 and max(delays) <= 60 * 1.2
    assert max(delays) - min(delays) > 60 * 0.2  # it really varies, so retries of many jobs spread out


def test_a_429_holds_the_whole_action_even_when_the_job_is_dead() -> None:
    error = DeliveryError("rate limited", retryable=True, status=429, retry_after=30.0)
    alive = decide(job(1), spec(), error, NOW)
    assert alive.hold_action_until == pytest.approx(NOW + 30.0)
    dead = decide(job(4), spec(), error, NOW)
    assert dead.verdict is Verdict.DEAD and dead.hold_action_until == pytest.approx(NOW + 30.0)
    # a Retry-After on another status paces this job only
    other = decide(job(1), spec(), DeliveryError("busy", retryable=True, status=503, retry_after=5.0), NOW)
    assert other.hold_action_until is None and other.next_ts == pytest.approx(NOW + 5.0)
