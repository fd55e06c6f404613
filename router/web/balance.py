"""Connections shared out evenly among `router serve`'s workers.

Every worker waits on the one listening socket, and whichever wins the race accepts. Clients
that keep their connections alive (providers do, and so does every load generator) then stay
with the worker that won: eight connections opened at once all went to one of two workers, which
served everything while the other sat idle. So each worker publishes how many connections it
holds in a small table the master shares with them all, and accepts only while it holds at most
one more than every other live worker. The worker holding the fewest always accepts, and
one held back looks again every few milliseconds, so a connection never waits for want of a worker.

The master hands each worker its slot before the fork (gunicorn's pre_fork hook). A worker that
died stops beating, and its slot is ignored until the master gives it to the worker that replaces
it. Plain gunicorn has no table, and its workers accept as gunicorn's do.
"""

from __future__ import annotations

import mmap
import struct
import time
from typing import Any

SLOTS = 64  # workers at most (router serve runs 2 to 8)
_SLOT = struct.Struct("qq")  # connections held, last beat (ms on the monotonic clock)
STALE_MS = 5000  # a worker silent this long (its loop turns at least once a second) is not counted


class Table:
    def __init__(self) -> None:
        self.map = mmap.mmap(-1, SLOTS * _SLOT.size)  # anonymous and shared: it survives the fork

    def free_slot(self, taken: set[int]) -> int | None:
        for i in range(SLOTS):
            if i not in taken:
                return i
        return None

    def publish(self, slot: int, conns: int) -> None:
        _SLOT.pack_into(self.map, slot * _SLOT.size, conns, int(time.monotonic() * 1000))

    def leave(self, slot: int) -> None:
        _SLOT.pack_into(self.map, slot * _SLOT.size, 0, 0)

    def may_accept(self, slot: int, conns: int) -> bool:
        """Whether this worker, holding `conns`, holds at most one more than every other live worker.

        The slack of one keeps two workers from each reading the other's count a moment old and
        both holding back; a worker held back looks again within milliseconds (worker.py)."""
        if conns == 0:
            return True
        now = int(time.monotonic() * 1000)
        for i, (held, beat) in enumerate(_SLOT.iter_unpack(self.map)):
            if i != slot and beat and now - beat < STALE_MS and held < conns - 1:
                return False
        return True


def assign_slot(arbiter: Any, worker: Any) -> None:
    """gunicorn's pre_fork hook: give the worker about to be forked a slot no live worker holds."""
    table = getattr(arbiter, "balance", None)
    if table is None:
        return
    taken = {getattr(w, "balance_slot", None) for w in arbiter.WORKERS.values()}
    slot = table.free_slot({s for s in taken if s is not None})
    if slot is not None:
        table.leave(slot)  # whatever the worker that held it last left there
        worker.balance = table
        worker.balance_slot = slot


__all__ = ["Table", "assign_slot"]
