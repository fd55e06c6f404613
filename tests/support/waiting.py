"""Polling with a deadline: the one way the tests wait for something to happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(probe: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05, what: str = "") -> T:
    """Call `probe` until it returns something truthy, or fail after `timeout` seconds with its last value."""
    end = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or probe!r}; last value: {last!r}")
        time.sleep(interval)  # polling interval, bounded by the deadline above
