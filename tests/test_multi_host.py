"""Several hosts on one PostgreSQL (README "Several hosts"): two `router serve` instances on their own
ports share one database; a burst is spread over both; one is killed with `kill -9` mid-burst.

What must hold: every event either host acknowledged is delivered; a job leased by one host is
never delivered by the other while that lease holds (the downstream's record, checked against the
jobs' attempts); Slack's pace of one message a second holds across both hosts together.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict

import pytest
import requests
from support import (
    Reply,
    ScriptedServer,
    ServedRouter,
    SlackStandIn,
    alive,
    children_of,
    kill_router_hard,
    wait_until,
)

SINK_TIMEOUT = 1.0
LEASE = SINK_TIMEOUT + 15.0  # the action's timeout plus the lease margin
THREADS = 6
SLACK_EVERY = 25  # one event in this many also goes to Slack (paced at 1/s across hosts)


def rules(site: ScriptedServer, slack: SlackStandIn) -> str:
    return f"""\
version: 1
settings:
  retry: {{schedule: [200ms, 500ms, 1s, 2s], jitter: 0}}
providers:
  src: {{type: none}}
actions:
  sink: {{type: forward, url: "{site.url}/sink", timeout: {SINK_TIMEOUT}s}}
  ops-slack: {{type: slack, webhook_url: "{slack.url}{slack.hook('ops')}", text: "event {{{{ payload.n }}}}"}}
rules:
  - {{name: all, when: {{case: burst}}, actions: [sink]}}
  - {{name: loud, when: {{loud: true}}, actions: [ops-slack]}}
"""


class SpreadBurst:
    """Threads that post events to both hosts in turn until stopped (or their share is sent)."""

    def __init__(self, hosts: list[ServedRouter], tag: str, per_thread: int = 400):
        self.hosts = hosts
        self.tag = tag
        self.per_thread = per_thread
        self.acknowledged: dict[str, tuple[int, int]] = {}  # event_id -> (host index, n)
        self.failed = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(THREADS)]

    def start(self) -> SpreadBurst:
        for t in self._threads:
            t.start()
        return self

    def join(self) -> None:
        for t in self._threads:
            t.join(60)
            assert not t.is_alive()

    def count(self, host: int | None = None) -> int:
        with self._lock:
            return sum(1 for h, _ in self.acknowledged.values() if host is None or h == host)

    def _run(self, t: int) -> None:
        sessions = [requests.Session() for _ in self.hosts]
        for i in range(self.per_thread):
            if self.stop.is_set():
                return
            host = (t + i) % len(self.hosts)
            n = t * self.per_thread + i
            payload = {"case": "burst", "tag": self.tag, "n": n, "loud": n % SLACK_EVERY == 0}
            try:
                response = sessions[host].post(self.hosts[host].url + "/hooks/src", json=payload, timeout=10)
            except requests.RequestException:
                with self._lock:
                    self.failed += 1
                continue
            if response.status_code == 200:
                with self._lock:
                    self.acknowledged[response.json()["event_id"]] = (host, n)
            else:
                with self._lock:
                    self.failed += 1


@pytest.fixture
def site() -> ScriptedServer:
    with ScriptedServer() as server:
        server.script("/sink", then=Reply(200, "ok", delay=0.03))  # keeps deliveries in flight when the kill comes
        yield server


@pytest.fixture
def slack() -> SlackStandIn:
    # Slack refuses a second message within 0.7 s; `rate` 1/s keeps 1 s between claims on every host,
    # and the margin absorbs the scheduling noise between a claim and its request on a busy machine
    with SlackStandIn(min_interval=0.7) as server:
        yield server


def test_two_hosts_one_killed_mid_burst_lose_nothing_and_never_deliver_twice_under_a_lease(
        pg_database: str, tmp_path_factory: pytest.TempPathFactory, site: ScriptedServer, slack: SlackStandIn) -> None:
    text = rules(site, slack)
    hosts = [ServedRouter(tmp_path_factory.mktemp(f"host{i}"), text, store=pg_database, workers=2) for i in range(2)]
    try:
        for host in hosts:
            host.start()
        victim, survivor = hosts
        tag = uuid.uuid4().hex
        burst = SpreadBurst(hosts, tag).start()
        wait_until(lambda: burst.count(0) >= 60 and burst.count(1) >= 60, timeout=60,
                   what="both hosts to acknowledge events")
        wait_until(lambda: victim_leases(survivor, victim_owner_pids(victim)), timeout=30, interval=0.01,
                   what="the victim to hold a lease")
        victim_pids = victim_owner_pids(victim)
        leased = {j.id for j in survivor.store().jobs(state="pending") if owned_by(j.lease_owner, victim_pids)}
        killed = kill_router_hard(victim)
        assert not any(alive(pid) for pid in killed)
        wait_until(lambda: burst.count(1) >= 200 or burst.stop.is_set(), timeout=60,
                   what="the survivor to go on acknowledging")
        burst.stop.set()
        burst.join()
        acknowledged = dict(burst.acknowledged)
        assert burst.failed > 0, "the kill came after the burst ended"

        store = survivor.store()

        def sink_ids() -> dict[str, list]:
            got = defaultdict(list)
            for r in site.to("/sink"):
                got[r.headers.get("x-router-event-id", "")].append(r)
            return got

        # every acknowledged event is delivered, the victim's leased jobs by the survivor once the lease ran out
        wait_until(lambda: set(acknowledged) <= set(sink_ids()), timeout=LEASE + 60,
                   what="every acknowledged event to reach the downstream")
        wait_until(lambda: not store.jobs(state="pending"), timeout=LEASE + 60, what="the queue to drain")

        jobs = {j.event_id: j for j in store.jobs(action="sink")}
        received = sink_ids()
        taken_over = 0
        for event_id, deliveries in received.items():
            if event_id not in jobs:
                continue  # not this test's (or not acknowledged: the kill cut its answer)
            job = jobs[event_id]
            assert job.state == "delivered", job
            # each receipt is one attempt of the job: no host sent it without holding its lease
            attempts = [r.headers["x-router-attempt"] for r in deliveries]
            assert len(set(attempts)) == len(attempts), (event_id, attempts)
            assert len(deliveries) <= job.attempts, (event_id, len(deliveries), job.attempts)
            if len(deliveries) > 1:
                history = store.attempts(job.id)
                first, second = sorted(deliveries, key=lambda r: r.at)[:2]
                lost = [a for a in history if a.error and "lease expired" in a.error]
                # a second delivery comes only after the first attempt failed, or its lease ran out
                assert lost or any(a.status != 200 for a in history[:-1]), (event_id, history)
                if lost:
                    assert second.at - first.at >= LEASE - 1.0, (event_id, second.at - first.at)
                    taken_over += 1
        # what the victim held when it died was taken over by the survivor once the lease ran out
        by_id = {j.id: j for j in store.jobs()}
        assert all(by_id[i].state == "delivered" for i in leased), [by_id[i] for i in leased]
        assert taken_over > 0, "no job was leased by the victim when it died (the kill came too late to test take-over)"

        # Slack's pace held across both hosts: its limiter never refused a message
        loud = {e for e, (_, n) in acknowledged.items() if n % SLACK_EVERY == 0}
        wait_until(lambda: len({r.json()["text"] for r in slack.to("/services/T000/B000/ops")}) >= len(loud),
                   timeout=len(loud) * 2 + LEASE + 30, what="every loud event to reach Slack")
        assert slack.rate_limited == []
        times = sorted(r.at for r in slack.to("/services/T000/B000/ops"))
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert min(gaps) >= 0.7, gaps
    finally:
        for host in hosts:
            host.stop()


def victim_owner_pids(host: ServedRouter) -> set[int]:
    assert host.proc is not None
    return set(children_of(host.proc.pid))


def owned_by(owner: str | None, pids: set[int]) -> bool:
    """A lease owner is host:pid:random (router.delivery.Deliverer.owner)."""
    return owner is not None and int(owner.split(":")[1]) in pids


def victim_leases(survivor: ServedRouter, pids: set[int]) -> bool:
    return any(owned_by(j.lease_owner, pids) for j in survivor.store().jobs(state="pending", action="sink"))
