"""Helpers for the delivery tests: path-routed downstreams, a Slack stand-in, store probes, polling.

The real gunicorn (`RouterServer`), the recording types (`Recorded`, `Reply`) and the CLI runner come
from tests/helpers.py; what is here is only what the delivery tests need beyond them.
"""

from __future__ import annotations

import json
import os
import signal
from collections import defaultdict, deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests
from helpers import HttpServer, Recorded, Reply, RouterServer, free_port, query_store, wait_until

# A retry schedule short enough for tests: two retries 200 ms apart, no jitter.
FAST_RETRY = "{schedule: [200ms, 200ms], jitter: 0}"
FINAL_STATES = frozenset({"delivered", "dead"})


# --------------------------------------------------------------------------- polling


# --------------------------------------------------------------------------- real HTTP servers


class ScriptedServer(HttpServer):
    """Answers per path: queued replies first (`script`), then the path's default, then 200 `ok`."""

    def __init__(self) -> None:
        super().__init__()
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._defaults: dict[str, Reply] = {}

    def script(self, path: str, *replies: Reply, then: Reply | None = None) -> None:
        with self._cond:
            self._scripts[path].extend(replies)
            if then is not None:
                self._defaults[path] = then

    def respond(self, rec: Recorded) -> Reply:
        path = rec.path.split("?")[0]
        queued = self._scripts.get(path)
        if queued:
            return queued.popleft()
        return self._defaults.get(path, Reply())


class SlackStandIn(HttpServer):
    """Slack's incoming-webhook contract, as documented, for a few webhooks:

    - a known webhook answers 200 with the body `ok` to a JSON object with `text` or `blocks`;
      a body that is not such an object gets 400 `invalid_payload` (or `no_text`);
    - more than one message per `min_interval` seconds to one webhook gets 429 with `Retry-After: 1`;
    - webhooks for a deleted or archived channel answer 404 `channel_not_found` / 410 `channel_is_archived`;
      a revoked one answers 403 `invalid_token`; an unknown path answers 404 `no_service`.

    `script(path, Reply...)` overrides the next answers of one webhook (e.g. a 429 Slack chose to send).
    """

    GONE = {
        "/services/T000/B000/deleted": Reply(404, "channel_not_found"),
        "/services/T000/B000/archived": Reply(410, "channel_is_archived"),
        "/services/T000/B000/revoked": Reply(403, "invalid_token"),
        "/services/T000/B000/broken": Reply(400, "invalid_payload"),
    }

    def __init__(self, min_interval: float = 0.0) -> None:
        super().__init__()
        self.min_interval = min_interval
        self.hooks: set[str] = set()
        self._last: dict[str, float] = {}
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self.rate_limited: list[Recorded] = []  # 429s the limiter (not a script) sent

    def hook(self, name: str) -> str:
        """Register a working webhook and return its path."""
        path = f"/services/T000/B000/{name}"
        self.hooks.add(path)
        return path

    def script(self, path: str, *replies: Reply) -> None:
        with self._cond:
            self._scripts[path].extend(replies)

    def respond(self, rec: Recorded) -> Reply:
        path = rec.path.split("?")[0]
        if self._scripts.get(path):
            return self._scripts[path].popleft()
        if path in self.GONE:
            return self.GONE[path]
        if path not in self.hooks:
            return Reply(404, "no_service")
        last = self._last.get(path)
        self._last[path] = rec.at
        if last is not None and rec.at - last < self.min_interval:
            self.rate_limited.append(rec)
            return Reply(429, "rate_limited", headers={"Content-Type": "text/plain", "Retry-After": "1"})
        try:
            message = json.loads(rec.body)
        except ValueError:
            return Reply(400, "invalid_payload")
        if not isinstance(message, dict):
            return Reply(400, "invalid_payload")
        if not message.get("text") and not message.get("blocks"):
            return Reply(400, "no_text")
        return Reply(200, "ok")


def refused_url(path: str = "/") -> str:
    """A loopback URL where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}{path}"


# --------------------------------------------------------------------------- posting events


def post_event(server: RouterServer, payload: dict, *, provider: str = "src", timeout: float = 15) -> str:
    """Post a JSON event to an unsigned provider; return its event id (the answer must be 200)."""
    response = server.post(f"/hooks/{provider}", payload, timeout=timeout)
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()["event_id"]


# --------------------------------------------------------------------------- the store, read directly


JOB_COLUMNS = ("id", "rule", "action", "state", "attempts", "last_status", "last_error", "lease_owner")
ATTEMPT_COLUMNS = ("n", "at_ts", "status", "error", "latency_ms", "retryable")


def jobs_of(store: Path, event_id: str) -> list[dict[str, Any]]:
    rows = _query(store, f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs WHERE event_id = ? ORDER BY id", (event_id,))
    return [dict(zip(JOB_COLUMNS, row)) for row in rows]


def attempts_of(store: Path, job_id: int) -> list[dict[str, Any]]:
    rows = _query(store, f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts WHERE job_id = ? ORDER BY n", (job_id,))
    return [dict(zip(ATTEMPT_COLUMNS, row)) for row in rows]


def wait_final(store: Path, event_id: str, *, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Wait until every job of the event is delivered or dead; return the jobs."""

    def settled() -> list[dict[str, Any]] | None:
        jobs = jobs_of(store, event_id)
        return jobs if jobs and all(j["state"] in FINAL_STATES for j in jobs) else None

    return wait_until(settled, timeout=timeout, what=f"the jobs of {event_id} to settle")


def wait_one_final(store: Path, event_id: str, *, timeout: float = 15.0) -> dict[str, Any]:
    jobs = wait_final(store, event_id, timeout=timeout)
    assert len(jobs) == 1, jobs
    return jobs[0]


_query = query_store


# --------------------------------------------------------------------------- processes


def children_of(pid: int) -> list[int]:
    """Direct children of a process, from /proc (every thread's list)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(set(found))


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill9(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_router_hard(server: RouterServer) -> list[int]:
    """`kill -9` a gunicorn master and every one of its workers, by PID; wait until all are gone."""
    assert server.proc is not None
    master = server.proc.pid
    workers = children_of(master)
    assert workers, "the gunicorn master has no workers to kill"
    kill9([master])  # the master first, so it cannot fork replacements for the workers
    kill9(workers)
    server.proc.wait(timeout=10)
    wait_until(lambda: not any(alive(p) for p in workers), timeout=10, what="the killed workers to be gone")
    server.proc = None
    return [master, *workers]


def healthy(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
