"""What the two back ends' group commits share: a request's place in the queue, and the wait of a
caller that queued many events at once (the event loop of `router serve`'s worker).

Each back end's committer has the same shape: the first caller to find nobody committing leads,
commits everything queued in one transaction, and hands the lead to the next caller still
waiting. A caller that queued a batch waits for each of its events in turn and leads whenever the
lead is handed to one of them, so a batch is never stranded behind its own events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from router.errors import StoreUnavailable
from router.model import IngestResult


class Waiter:
    __slots__ = ("event", "done", "result", "lead", "abandoned")

    def __init__(self, event: Any) -> None:
        self.event = event  # what the back end commits (its rows, or the NewEvent)
        self.done = threading.Event()
        self.result: IngestResult | Exception | None = None
        self.lead = False  # set with done when this request is handed the lead
        self.abandoned = False


def wait_all(waiters: Sequence[Waiter], timeout: float, lock: threading.Lock,
             lead: Callable[[Waiter], None]) -> list[IngestResult | Exception]:
    """The result of each of `waiters` (queued by this caller), leading the commit whenever one of
    them is handed the lead; a waiter still not committed after `timeout` seconds is given up
    (StoreUnavailable: the provider retries; the next leader still commits it)."""
    deadline = time.monotonic() + timeout
    results: list[IngestResult | Exception] = []
    for w in waiters:
        while w.result is None:
            if w.lead:
                w.lead = False
                lead(w)
                continue
            remaining = deadline - time.monotonic()
            if remaining > 0 and w.done.wait(remaining):
                continue
            with lock:
                if not w.done.is_set():
                    w.abandoned = True
                    break
        results.append(w.result if w.result is not None else StoreUnavailable("the store did not commit in time"))
    return results


class BatchSubmit:
    """What a back end's group committer adds to take a caller's batch: its queue (`_lock`,
    `_pending`, `_leading`) and `_lead_for(waiter)`, which commits until that waiter's event is
    committed or the lead is handed on."""

    _lock: threading.Lock
    _pending: list[Waiter]
    _leading: bool

    def _lead_for(self, waiter: Waiter) -> None:
        raise NotImplementedError

    def submit_many(self, waiters: list[Waiter], timeout: float) -> list[IngestResult | Exception]:
        """Queue the batch's waiters, lead at once if nobody commits, and wait for each result."""
        with self._lock:
            self._pending.extend(waiters)
            lead = not self._leading
            if lead:
                self._leading = True
        if lead:
            self._lead_for(waiters[-1])
        return refusals_named(wait_all(waiters, timeout, self._lock, self._lead_for))


def refusals_named(results: Sequence[IngestResult | Exception]) -> list[IngestResult | Exception]:
    """Each result as a caller of ingest_many gets it: the IngestResult, or a StoreUnavailable that
    says why (whatever the back end raised)."""
    return [r if isinstance(r, (IngestResult, StoreUnavailable)) else
            StoreUnavailable(f"the store could not commit: {r}") for r in results]


__all__ = ["BatchSubmit", "Waiter", "refusals_named", "wait_all"]
