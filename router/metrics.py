"""Prometheus metrics, correct across every gunicorn worker and delivery worker.

Counters and histograms use prometheus_client's multiprocess mode: each process writes its own
memory-mapped files in one folder (`PROMETHEUS_MULTIPROC_DIR`, default a private folder per store
in the system's temporary directory) and a scrape sums them. The folder is emptied when a process starts and finds no live
process among the files' owners, so a restart starts counting from zero, as Prometheus expects.

Queue depth, the oldest pending job's age and dead letters are read from the store at scrape
time: the store is their source of truth.

prometheus_client decides single- or multi-process mode when it is first imported, so this
module imports it only inside `init`, after choosing the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from router.store.base import Store

_metrics: dict[str, Any] = {}
_registry_factory: Any = None  # builds a fresh registry for each scrape

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_dir(store: Path | str) -> Path:
    """One private folder per store, in the system's temporary directory.

    Not beside the store: prometheus_client writes through mmap, and a process writing to a mapped
    page of a full file system gets SIGBUS. The store's disk filling up must cost a 503, not a worker.
    """
    key = store if isinstance(store, str) else str(Path(store).resolve())  # a URI, or the SQLite file
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"router-metrics-{os.getuid()}-{digest}"


def _prepare_dir(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        owners = set()
        for f in folder.glob("*.db"):
            m = re.search(r"_(\d+)\.db$", f.name)
            if m:
                owners.add(int(m.group(1)))
        if not any(pid != os.getpid() and _pid_alive(pid) for pid in owners):
            for f in folder.glob("*.db"):
                try:
                    f.unlink()
                except OSError:
                    pass


def init(store_path: Path | str) -> None:
    """Set up the metrics of this process (idempotent)."""
    global _registry_factory
    if _metrics:
        return
    multiprocess = "prometheus_client" not in sys.modules or "PROMETHEUS_MULTIPROC_DIR" in os.environ
    if multiprocess:
        folder = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or default_dir(store_path))
        _prepare_dir(folder)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client import multiprocess as mp

    own: list[Any] = []  # single-process mode only: our metric objects, joined to each scrape's registry

    def registry() -> Any:
        reg = CollectorRegistry()
        if multiprocess:
            mp.MultiProcessCollector(reg)
        for collector in own:
            reg.register(collector)
        return reg

    _registry_factory = registry
    kw: dict[str, Any] = {} if multiprocess else {"registry": None}
    _metrics.update(
        events=Counter("router_events_received", "Events received, by provider and outcome.", ["provider", "outcome"], **kw),
        matches=Counter("router_rule_matches", "Rule matches.", ["rule"], **kw),
        deliveries=Counter("router_deliveries", "Delivery attempts, by action and outcome (delivered, retry, dead).",
                           ["action", "outcome"], **kw),
        attempts=Counter("router_delivery_attempts", "Delivery attempts made, by action.", ["action"], **kw),
        latency=Histogram("router_delivery_latency_seconds", "Time of one delivery attempt, by action.", ["action"],
                          buckets=LATENCY_BUCKETS, **kw),
        ingest_latency=Histogram("router_ingest_latency_seconds", "Time from request to answer for accepted and duplicate events.",
                                 ["provider"], buckets=LATENCY_BUCKETS, **kw),
        reloads=Counter("router_rules_reloads", "Successful rules reloads.", **kw),
        reload_failures=Counter("router_rules_reload_failures", "Rules reloads refused because the file was invalid.", **kw),
    )
    if not multiprocess:
        own.extend(_metrics.values())


_children: dict[tuple[str, tuple[str, ...]], Any] = {}  # (metric, labels) -> its child: labels() costs a lock


def _child(name: str, *labels: str) -> Any:
    key = (name, labels)
    child = _children.get(key)
    if child is None:
        if len(_children) > 10_000:  # a bound, should labels ever come from somewhere unbounded
            _children.clear()
        child = _children[key] = _metrics[name].labels(*labels)
    return child


_local = threading.local()


@contextlib.contextmanager
def batched() -> Iterator[None]:
    """Counter increments made inside (by this thread) are summed and written once each on the way
    out: in multiprocess mode every increment is a locked write to a memory-mapped file, and a
    batch of events would otherwise pay it several times per event. Histograms are written as they
    are observed. Leave the block before answering, so a scrape never lags an answer."""
    pending: dict[Any, float] = {}
    outer = getattr(_local, "pending", None)
    _local.pending = pending
    try:
        yield
    finally:
        _local.pending = outer
        for child, amount in pending.items():
            child.inc(amount)


def _inc(child: Any) -> None:
    pending = getattr(_local, "pending", None)
    if pending is None:
        child.inc()
    else:
        pending[child] = pending.get(child, 0) + 1


def event(provider: str, outcome: str, latency: float | None = None, matched: list[str] | None = None) -> None:
    if not _metrics:
        return
    _inc(_child("events", provider, outcome))
    if latency is not None:
        _child("ingest_latency", provider).observe(latency)
    for rule in matched or ():
        _inc(_child("matches", rule))


def delivery(action: str, outcome: str, latency: float) -> None:
    if not _metrics:
        return
    _inc(_child("attempts", action))
    _inc(_child("deliveries", action, outcome))
    _child("latency", action).observe(latency)


def reload(ok: bool) -> None:
    if _metrics:
        _metrics["reloads" if ok else "reload_failures"].inc()


class _StoreCollector:
    def __init__(self, store: Store, actions: list[str]):
        self.store = store
        self.actions = actions

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        depth = GaugeMetricFamily("router_queue_depth", "Jobs waiting to be delivered, by action.", labels=["action"])
        dead = GaugeMetricFamily("router_dead_letters", "Dead-lettered deliveries kept, by action.", labels=["action"])
        oldest = GaugeMetricFamily("router_oldest_pending_job_age_seconds", "Age of the oldest job not yet delivered.")
        gauges = self.store.queue_gauges()
        for action in sorted(set(self.actions) | set(gauges.pending) | set(gauges.dead)):
            depth.add_metric([action], gauges.pending.get(action, 0))
            dead.add_metric([action], gauges.dead.get(action, 0))
        age = gauges.now - gauges.oldest_pending_ts if gauges.oldest_pending_ts is not None else 0.0
        oldest.add_metric([], max(0.0, age))
        yield depth
        yield dead
        yield oldest


def scrape(store: Store, actions: list[str]) -> tuple[bytes, str]:
    """The Prometheus text exposition of every process's metrics plus the store's gauges."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = _registry_factory()
    registry.register(_StoreCollector(store, actions))
    return generate_latest(registry), CONTENT_TYPE_LATEST
