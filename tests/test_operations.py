"""Operations (README "Command line", "Running under gunicorn", "Operating it"): /metrics across every
gunicorn worker and delivery worker, /healthz and /readyz, one JSON log line per event and per
delivery attempt, secrets never in any output, hot reload (SIGHUP and file watch, valid and
broken files), and graceful shutdown on SIGTERM.

Every router here is a real gunicorn (plain `gunicorn router.wsgi:app`, or `router serve`, which
is the gunicorn master itself) on 127.0.0.1; every downstream is a real HTTP server on loopback.
Nothing waits a fixed time: every wait polls a condition under a deadline.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from support import (
    HMAC_SECRET,
    UNITARY_SECRET,
    VALIDATE_LINE,
    VIDEOID_TOKEN,
    Reply,
    RouterServer,
    ScriptedServer,
    ServedRouter,
    SlackStandIn,
    accepted_by,
    alive,
    atomic_write,
    dumps,
    jobs_of,
    json_lines,
    not_accepting,
    open_request,
    per_process_counts,
    read_response,
    run_cli,
    scrape,
    sign_hmac,
    sign_unitary,
    signal_master,
    term_and_wait,
    wait_until,
    wait_workers,
    worker_pids,
)

from router import metrics

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def site() -> ScriptedServer:
    """The downstream every forward action of this module posts to (one path per action)."""
    with ScriptedServer() as server:
        yield server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """Factory for `router serve` processes; each is stopped (by its PID) when the module ends."""
    started: list[ServedRouter] = []

    def start(rules_text: str, *, env: dict[str, str] | None = None, workers: int = 2, name: str = "serve",
              files: dict[str, str] | None = None, extra_args: tuple[str, ...] = ()) -> ServedRouter:
        server = ServedRouter(tmp_path_factory.mktemp(name), rules_text, env=env, workers=workers, files=files,
                              extra_args=extra_args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def probe(server: RouterServer, case: str = "probe") -> list[str]:
    """Post one unsigned event; it must be answered 200; return the rules it matched."""
    response = server.post("/hooks/src", {"case": case}, headers={"Connection": "close"})
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()["matched"]


def routes_consistently(server: RouterServer, expected: list[str], times: int = 6) -> bool:
    """True when `times` fresh requests in a row (over new connections, so any worker) match `expected`."""
    return all(probe(server) == expected for _ in range(times))


def keeps_routing(server: RouterServer, expected: list[str], *, seconds: float, at_least: int = 10) -> int:
    """For `seconds` (and at least `at_least` requests), every request is answered 200 with `expected`."""
    end = time.monotonic() + seconds
    n = 0
    while n < at_least or time.monotonic() < end:
        assert probe(server) == expected, f"request {n} after the change was routed by other rules"
        n += 1
    return n


def log_has(server: RouterServer, msg: str) -> list[dict]:
    return [line for line in json_lines(server.log_text()) if line.get("msg") == msg]


# =========================================================================== 1-3. metrics, health, logs

UNITARY_OK = {"data": {"job_id": "", "is_error": False,
                       "result": {"policy_categories": [{"name": "violence", "risk_level": "LOW"}]}}}


def unitary_payload(job_id: str) -> bytes:
    payload = json.loads(json.dumps(UNITARY_OK))
    payload["data"]["job_id"] = job_id
    return dumps(payload)


def metrics_rules(site: ScriptedServer) -> str:
    s = site.url
    return f"""\
version: 1
settings:
  max_body_bytes: 4096
  retry: {{schedule: [200ms, 200ms], jitter: 0}}
providers:
  src: {{type: none}}
  mod: {{type: unitary, secret: "${{UNITARY_SECRET}}", dedupe: {{key: "{{{{ payload.data.job_id }}}}", window: 1h}}}}
actions:
  ok:      {{type: forward, url: "{s}/m/ok", timeout: 5s}}
  modsink: {{type: forward, url: "{s}/m/mod", timeout: 5s}}
  flaky:   {{type: forward, url: "{s}/m/flaky", timeout: 5s}}
  broken:  {{type: forward, url: "{s}/m/broken", timeout: 5s}}
  exhaust: {{type: forward, url: "{s}/m/exhaust", timeout: 5s}}
  parked:  {{type: forward, url: "{s}/m/parked", timeout: 5s, retry: {{schedule: [1h], jitter: 0}}}}
rules:
  - {{name: r-ok, provider: src, when: {{case: ok}}, actions: [ok]}}
  - {{name: r-fan, provider: src, when: {{case: fan}}, actions: [ok, modsink]}}
  - {{name: r-flaky, provider: src, when: {{case: flaky}}, actions: [flaky]}}
  - {{name: r-broken, provider: src, when: {{case: broken}}, actions: [broken]}}
  - {{name: r-exhaust, provider: src, when: {{case: exhaust}}, actions: [exhaust]}}
  - {{name: r-parked, provider: src, when: {{case: parked}}, actions: [parked]}}
  - {{name: r-mod, provider: mod, when: {{data.is_error: false}}, actions: [modsink]}}
"""


class Traffic:
    """What the metrics router was sent, and what it answered."""

    def __init__(self) -> None:
        self.events: Counter[tuple[str, str]] = Counter()  # (provider, outcome) -> n
        self.matches: Counter[str] = Counter()
        self.accepted_ids: list[str] = []
        self.duplicate_of: list[str] = []
        self.posts = 0
        self.sent_signatures: list[str] = []


def _post(router: RouterServer, path: str, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    hdrs = {"Content-Type": "application/json", "Connection": "close", **(headers or {})}
    return requests.post(router.url + path, data=body, headers=hdrs, timeout=30)


@pytest.fixture(scope="module")
def metrics_router(start_router, site: ScriptedServer) -> tuple[RouterServer, Traffic]:
    """A plain-gunicorn router with 3 workers, sent a known mix of traffic, with every delivery settled."""
    site.script("/m/flaky", Reply(500, "try again"), then=Reply(200, "ok"))
    site.script("/m/broken", then=Reply(404, "no such thing"))
    site.script("/m/exhaust", then=Reply(503, "down"))
    site.script("/m/parked", then=Reply(500, "down"))
    router = start_router(metrics_rules(site), env={"UNITARY_SECRET": UNITARY_SECRET}, workers=3, name="metrics")
    t = Traffic()

    def accepted(provider: str, path: str, body: bytes, matched: list[str], headers: dict | None = None) -> None:
        r = _post(router, path, body, headers)
        assert r.status_code == 200, (r.status_code, r.text)
        assert r.json()["matched"] == matched and not r.json().get("duplicate"), r.text
        t.events[(provider, "accepted")] += 1
        t.matches.update(matched)
        t.accepted_ids.append(r.json()["event_id"])

    def refused(provider: str, path: str, body: bytes, status: int, outcome: str, headers: dict | None = None) -> None:
        r = _post(router, path, body, headers)
        assert r.status_code == status, (r.status_code, r.text)
        t.events[(provider, outcome)] += 1

    # accepted events, concurrently, so that several gunicorn workers take them
    jobs = [("ok", ["r-ok"])] * 12 + [("fan", ["r-fan"])] * 2 + [("nothing", [])] * 3
    jobs += [("flaky", ["r-flaky"]), ("broken", ["r-broken"]), ("exhaust", ["r-exhaust"]), ("parked", ["r-parked"])]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda j: accepted("src", "/hooks/src", dumps({"case": j[0]}), j[1]), jobs))

        # which worker accepts a connection is the kernel's choice: on a busy machine one worker can win them
        # all. Send more events that match nothing (no deliveries) until a second worker has taken some.
        def spread() -> bool:
            per_pid = per_process_counts(metrics.default_dir(router.store_path), "router_events_received_total")
            if sum(1 for n in per_pid.values() if n) >= 2:
                return True
            list(pool.map(lambda _: accepted("src", "/hooks/src", dumps({"case": "nothing"}), []), range(12)))
            return False

        wait_until(spread, timeout=60, what="a second gunicorn worker to take some of the traffic")

    # signed unitary events: accepted, then duplicates of the first
    for i in range(4):
        body = unitary_payload(f"job-{i}")
        sig = sign_unitary(body, UNITARY_SECRET)
        t.sent_signatures.append(sig)
        accepted("mod", "/hooks/mod", body, ["r-mod"], {"X-Hub-Signature-256": sig})
    first = unitary_payload("job-0")
    for _ in range(3):
        r = _post(router, "/hooks/mod", first, {"X-Hub-Signature-256": sign_unitary(first, UNITARY_SECRET)})
        assert r.status_code == 200 and r.json()["duplicate"] is True, r.text
        t.events[("mod", "duplicate")] += 1
        t.duplicate_of.append(r.json()["event_id"])
    # unauthorized: two wrong signatures, one missing
    wrong = sign_unitary(first, "not-the-secret")
    t.sent_signatures.append(wrong)
    refused("mod", "/hooks/mod", first, 401, "unauthorized", {"X-Hub-Signature-256": wrong})
    refused("mod", "/hooks/mod", unitary_payload("job-9"), 401, "unauthorized",
            {"X-Hub-Signature-256": sign_unitary(first, UNITARY_SECRET)})
    refused("mod", "/hooks/mod", first, 401, "unauthorized")
    # schema-invalid, with a valid signature
    for bad in (dumps({"data": {"is_error": False}}), dumps({"nodata": 1})):
        refused("mod", "/hooks/mod", bad, 422, "schema_invalid", {"X-Hub-Signature-256": sign_unitary(bad, UNITARY_SECRET)})
    # not a JSON object
    refused("src", "/hooks/src", b"this is not json", 400, "invalid")
    refused("src", "/hooks/src", b"[1, 2, 3]", 400, "invalid")
    # too large (the limit is 4096 bytes)
    refused("src", "/hooks/src", dumps({"case": "x" * 5000}), 413, "too_large")
    refused("src", "/hooks/src", b"{" + b" " * 6000 + b"}", 413, "too_large")
    # an unknown provider
    r = _post(router, "/hooks/nobody", b"{}")
    assert r.status_code == 404
    t.events[("(unknown)", "unknown_provider")] += 1
    t.posts = sum(n for (p, _), n in t.events.items() if p != "(unknown)")

    # deliveries settle: everything final except the parked job, which waits an hour after its 500
    def settled() -> bool:
        rows = [(j.action, j.state, j.attempts, j.last_status) for j in router.store().jobs()]
        if len(rows) != 14 + 6 + 4:  # ok, modsink, and flaky/broken/exhaust/parked
            return False
        for action, state, attempts, last_status in rows:
            if action == "parked":
                if not (state == "pending" and attempts == 1 and last_status == 500):
                    return False
            elif state not in ("delivered", "dead"):
                return False
        return True

    wait_until(settled, timeout=30, what="every delivery of the metrics traffic to settle")
    return router, t


EXPECTED_DELIVERIES = {  # (action, outcome) -> attempts, given the scripted downstream
    ("ok", "delivered"): 14, ("modsink", "delivered"): 6,
    ("flaky", "retry"): 1, ("flaky", "delivered"): 1,
    ("broken", "dead"): 1,
    ("exhaust", "retry"): 2, ("exhaust", "dead"): 1,
    ("parked", "retry"): 1,
}
ACTIONS = ("ok", "modsink", "flaky", "broken", "exhaust", "parked")


def test_metrics_add_up_exactly_across_workers_and_scrapes(metrics_router) -> None:
    router, t = metrics_router
    attempts = Counter()
    for (action, _), n in EXPECTED_DELIVERIES.items():
        attempts[action] += n

    # several gunicorn workers took part (their per-process metric files are what a scrape sums)
    per_pid = per_process_counts(metrics.default_dir(router.store_path), "router_events_received_total")
    busy = [pid for pid, n in per_pid.items() if n]
    assert len(busy) >= 2, f"all traffic landed on one worker: {per_pid}"
    assert sum(per_pid.values()) == sum(t.events.values())

    ages = []
    for i in range(6):  # each scrape may be answered by a different worker: all must agree
        m = scrape(router.url)
        assert m.types["router_events_received"] == "counter"
        assert m.types["router_delivery_latency_seconds"] == "histogram"
        assert m.by("router_events_received_total", "provider", "outcome") == dict(t.events), f"scrape {i}"
        assert m.by("router_rule_matches_total", "rule") == {(r,): n for r, n in t.matches.items()}, f"scrape {i}"
        assert m.by("router_deliveries_total", "action", "outcome") == EXPECTED_DELIVERIES, f"scrape {i}"
        assert m.by("router_delivery_attempts_total", "action") == {(a,): n for a, n in attempts.items()}
        for action in ACTIONS:
            count = m.value("router_delivery_latency_seconds_count", action=action)
            assert count == attempts[action], (action, count)
            assert m.value("router_delivery_latency_seconds_bucket", action=action, le="+Inf") == count
            assert m.value("router_delivery_latency_seconds_sum", action=action) > 0
            # every action is listed in the gauges, zero included
            assert m.has("router_queue_depth", action=action), action
            assert m.has("router_dead_letters", action=action), action
        assert m.by("router_queue_depth", "action") == {("parked",): 1}
        assert m.by("router_dead_letters", "action") == {("broken",): 1, ("exhaust",): 1}
        assert m.has("router_rules_reloads_total") and m.value("router_rules_reloads_total") == 0
        assert m.has("router_rules_reload_failures_total") and m.value("router_rules_reload_failures_total") == 0
        age = m.value("router_oldest_pending_job_age_seconds")
        created = router.store().jobs(state="pending")[0].created_ts
        assert 0 < age <= time.time() - created + 1, (age, time.time() - created)
        ages.append(age)
    assert ages == sorted(ages), f"the oldest pending job got younger between scrapes: {ages}"


def test_healthz_and_readyz(metrics_router) -> None:
    router, _ = metrics_router
    for _ in range(4):
        r = requests.get(router.url + "/healthz", timeout=10, headers={"Connection": "close"})
        assert r.status_code == 200 and r.json()["status"] == "ok"
        r = requests.get(router.url + "/readyz", timeout=10, headers={"Connection": "close"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ok"
        assert body["checks"] == {"rules": "loaded", "store": "writable", "delivery": "running"}


def test_one_json_log_line_per_event_and_per_delivery_attempt(metrics_router) -> None:
    router, t = metrics_router
    lines = json_lines(router.stderr_path.read_text("utf-8", errors="replace"))
    for line in lines:
        assert {"ts", "level", "msg"} <= set(line), line

    received = [x for x in lines if x["msg"] in ("event", "event refused")]
    assert len(received) == t.posts, (len(received), t.posts)
    for x in received:
        assert {"provider", "outcome", "status", "latency_ms"} <= set(x), x
        assert isinstance(x["latency_ms"], (int, float)) and x["latency_ms"] >= 0
    seen = Counter((x["provider"], x["outcome"]) for x in received)
    assert seen == Counter({k: v for k, v in t.events.items() if k[0] != "(unknown)"})
    for x in received:
        if x["outcome"] in ("accepted", "duplicate"):
            assert x["status"] == 200 and x["event_id"].startswith("evt_"), x
            assert isinstance(x["matched"], list)
    accepted_lines = Counter(x["event_id"] for x in received if x["outcome"] == "accepted")
    assert accepted_lines == Counter(t.accepted_ids), "not exactly one log line per accepted event"
    assert sorted(x["event_id"] for x in received if x["outcome"] == "duplicate") == sorted(t.duplicate_of)
    statuses = Counter((x["outcome"], x["status"]) for x in received if x["msg"] == "event refused")
    assert statuses == Counter({("unauthorized", 401): 3, ("schema_invalid", 422): 2, ("invalid", 400): 2,
                                ("too_large", 413): 2})

    attempts = [x for x in lines if x["msg"] == "delivery"]
    assert len(attempts) == sum(EXPECTED_DELIVERIES.values())
    for x in attempts:
        assert {"event_id", "rule", "action", "attempt", "outcome", "status", "latency_ms"} <= set(x), x
        assert x["event_id"] in t.accepted_ids
        assert x["outcome"] in ("delivered", "retry", "dead")
        assert isinstance(x["latency_ms"], (int, float)) and x["latency_ms"] >= 0
        if x["outcome"] != "delivered":
            assert x.get("error"), x
    assert Counter((x["action"], x["outcome"]) for x in attempts) == Counter(EXPECTED_DELIVERIES)
    by_status = Counter((x["action"], x["status"]) for x in attempts)
    assert by_status[("broken", 404)] == 1 and by_status[("exhaust", 503)] == 3 and by_status[("flaky", 500)] == 1
    # each job's attempts are numbered 1, 2, 3 ... in its log lines
    per_job = Counter((x["event_id"], x["rule"], x["action"]) for x in attempts)
    for (event_id, rule, action), n in per_job.items():
        numbers = sorted(x["attempt"] for x in attempts
                         if (x["event_id"], x["rule"], x["action"]) == (event_id, rule, action))
        assert numbers == list(range(1, n + 1)), (action, numbers)

    # the client's signatures and the provider secret are not in the logs
    text = router.log_text()
    assert UNITARY_SECRET not in text
    for sig in t.sent_signatures:
        assert sig not in text


# =========================================================================== 3b. no secret in any output

MEDIA_TOKEN = "media-bearer-token-k4j5h6g7"
SIGN_KEY = b"standard-webhooks-key-for-ops-tests"
MEDIA_SIGNING_SECRET = "whsec_" + base64.b64encode(SIGN_KEY).decode()
SLACK_OK_SECRET = "hook-secret-q7w8e9r0t1"
SLACK_GONE_SECRET = "gone-secret-z1x2c3v4b5"

GENERIC_SCHEMA = json.dumps({"type": "object", "required": ["kind"], "properties": {"kind": {"type": "string"}}})

SECRETS_RULES = """\
version: 1
settings:
  retry: {schedule: [200ms], jitter: 0}
providers:
  moderation: {type: unitary, secret: "${UNITARY_SECRET}"}
  generic:
    type: hmac
    secret: "${HMAC_SECRET}"
    header: X-Generic-Signature
    prefix: "sha256="
    schema: schemas/generic.json
  videoid: {type: namirial-oneshot, token: "${VIDEOID_TOKEN}", paths: [/videoid]}
actions:
  slack-ok: {type: slack, webhook_url: "${SLACK_WEBHOOK_URL}", text: "risk in {{ payload.data.job_id }}", rate: 50}
  slack-gone: {type: slack, webhook_url: "${SLACK_GONE_URL}", text: "risk in {{ payload.data.job_id }}", rate: 50}
  media:
    type: forward
    url: "SITE/s/media"
    headers: {Authorization: "Bearer ${MEDIA_TOKEN}"}
    sign: {secret: "${MEDIA_SIGNING_SECRET}"}
  media-fail:
    type: forward
    url: "SITE/s/media-fail"
    headers: {Authorization: "Bearer ${MEDIA_TOKEN}"}
    sign: {secret: "${MEDIA_SIGNING_SECRET}"}
rules:
  - {name: mod-all, provider: moderation, actions: [slack-ok, slack-gone]}
  - {name: generic-all, provider: generic, actions: [media, media-fail]}
  - {name: videoid-all, provider: videoid, actions: [media]}
"""

# A broken variant whose every mistake sits in, or quotes, a secret-bearing value.
SECRETS_RULES_BROKEN = """\
version: 1
providers:
  moderation: {type: unitary, secret: "${UNITARY_SECRET}", sekret: "${UNITARY_SECRET}"}
  generic:
    type: hmac
    secret: "${HMAC_SECRET}"
    encoding: "${HMAC_SECRET}"
    schema: schemas/generic.json
  videoid: {type: namirial-oneshot, token: "${VIDEOID_TOKEN}", allow_from: ["${VIDEOID_TOKEN}"]}
actions:
  slack-ok: {type: slack, webhook_url: "ftp:${SLACK_WEBHOOK_URL}", text: "{{ payload.x ${MEDIA_TOKEN} }}"}
  media:
    type: forward
    url: "not a url ${MEDIA_TOKEN}"
    headers: {Authorization: "Bearer ${MEDIA_TOKEN}"}
    sign: {secret: "${MEDIA_SIGNING_SECRET}!!"}
  literal:
    type: forward
    url: "SITE/s/${MEDIA_TOKEN}"
    headers: {X-Api-Key: "${HMAC_SECRET}", Authorization: "Token ${UNITARY_SECRET} ${MISSING_VARIABLE}"}
rules:
  - {name: mod-all, provider: moderation, when: {data.job_id: {regex: "(${VIDEOID_TOKEN}"}}, actions: [slack-ok]}
"""

# Literal secrets in a file with a YAML syntax error on their line.
SECRETS_RULES_BAD_YAML = """\
version: 1
providers:
  moderation: {type: unitary, secret: "LITERAL_UNITARY"
  videoid: {type: namirial-oneshot, token: LITERAL_TOKEN}}
rules: []
"""


def test_no_secret_appears_in_any_log_or_output(served, site: ScriptedServer, tmp_path: Path) -> None:
    site.script("/s/media", then=Reply(200, "ok"))
    site.script("/s/media-fail", then=Reply(500, "down"))
    with SlackStandIn() as slack:
        slack_ok = slack.url + slack.hook(SLACK_OK_SECRET)
        slack_gone = slack.url + f"/services/T000/B000/{SLACK_GONE_SECRET}"  # not a known hook: 404 no_service
        env = {"UNITARY_SECRET": UNITARY_SECRET, "HMAC_SECRET": HMAC_SECRET, "VIDEOID_TOKEN": VIDEOID_TOKEN,
               "SLACK_WEBHOOK_URL": slack_ok, "SLACK_GONE_URL": slack_gone, "MEDIA_TOKEN": MEDIA_TOKEN,
               "MEDIA_SIGNING_SECRET": MEDIA_SIGNING_SECRET}
        secrets = {
            "unitary secret": UNITARY_SECRET, "hmac secret": HMAC_SECRET, "namirial token": VIDEOID_TOKEN,
            "slack webhook url": slack_ok, "slack webhook path": SLACK_OK_SECRET,
            "slack (gone) webhook url": slack_gone, "slack (gone) webhook path": SLACK_GONE_SECRET,
            "forward Authorization token": MEDIA_TOKEN, "Standard Webhooks secret": MEDIA_SIGNING_SECRET,
            "Standard Webhooks key (base64)": MEDIA_SIGNING_SECRET[len("whsec_"):],
        }
        rules = SECRETS_RULES.replace("SITE", site.url)
        router = served(rules, env=env, name="secrets", files={"schemas/generic.json": GENERIC_SCHEMA})
        signatures: list[str] = []
        accepted: list[str] = []

        def send(path: str, body: bytes, status: int, headers: dict | None = None, params: dict | None = None) -> None:
            r = requests.post(router.url + path, data=body, params=params, timeout=15,
                              headers={"Content-Type": "application/json", **(headers or {})})
            assert r.status_code == status, (path, r.status_code, r.text)
            for value in secrets.values():
                assert value not in r.text
            if status == 200:
                accepted.append(r.json()["event_id"])

        # unitary: good, wrong and missing signatures
        for i in range(2):
            body = unitary_payload(f"secret-job-{i}")
            sig = sign_unitary(body, UNITARY_SECRET)
            signatures.append(sig)
            send("/hooks/moderation", body, 200, {"X-Hub-Signature-256": sig})
        body = unitary_payload("secret-job-x")
        for wrong in (sign_unitary(body, UNITARY_SECRET + "x"), sign_unitary(b"other", UNITARY_SECRET)):
            signatures.append(wrong)
            send("/hooks/moderation", body, 401, {"X-Hub-Signature-256": wrong})
        send("/hooks/moderation", body, 401)
        # generic hmac: good and wrong
        for i in range(2):
            body = dumps({"kind": f"thing-{i}"})
            sig = sign_hmac(body, HMAC_SECRET, prefix="sha256=")
            signatures.append(sig)
            send("/hooks/generic", body, 200, {"X-Generic-Signature": sig})
        wrong = sign_hmac(body, "guess", prefix="sha256=")
        signatures.append(wrong)
        send("/hooks/generic", body, 401, {"X-Generic-Signature": wrong})
        # namirial: the token in the query string (as their callback URL carries it) and in the header
        videoid = dumps({"event_type": "status", "sent_at": "20260101120000", "request": {"status": "ENROLLREADY", "pk": 7}})
        send("/videoid", videoid, 200, params={"token": VIDEOID_TOKEN})
        send("/hooks/videoid", videoid, 200, {"X-Router-Token": VIDEOID_TOKEN})
        send("/hooks/videoid", videoid, 401, params={"token": "wrong-token"})
        send("/hooks/videoid", videoid, 401)

        # every delivery settles: slack-ok delivered, slack-gone dead (404), media delivered, media-fail dead
        def settled() -> bool:
            rows = [(j.action, j.state) for j in router.store().jobs()]
            return len(rows) == 10 and all(s in ("delivered", "dead") for _, s in rows)

        wait_until(settled, timeout=30, what="the secrets run's deliveries to settle")
        states = Counter((j.action, j.state) for j in router.store().jobs())
        assert states == Counter({("slack-ok", "delivered"): 2, ("slack-gone", "dead"): 2,
                                  ("media", "delivered"): 4, ("media-fail", "dead"): 2})
        # the secrets were really used
        assert len(slack.to(f"/services/T000/B000/{SLACK_OK_SECRET}")) == 2
        assert len(slack.to(f"/services/T000/B000/{SLACK_GONE_SECRET}")) == 2
        media = site.to("/s/media")
        assert media and all(r.headers["authorization"] == f"Bearer {MEDIA_TOKEN}" for r in media)
        assert all(r.headers["webhook-signature"].startswith("v1,") for r in media)

    # the command line, on the same rules and store
    outputs: dict[str, str] = {}
    cli_env = {**env, "ROUTER_RULES": None}
    broken = tmp_path / "broken.yaml"
    broken.write_text(SECRETS_RULES_BROKEN.replace("SITE", site.url), encoding="utf-8")
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "generic.json").write_text(GENERIC_SCHEMA)
    payload = tmp_path / "unitary.json"
    payload.write_bytes(unitary_payload("dry-run"))
    generic = tmp_path / "generic.json"
    generic.write_bytes(dumps({"kind": "dry"}))
    r = router.rules_path
    bad_yaml = tmp_path / "bad-yaml.yaml"
    bad_yaml.write_text(SECRETS_RULES_BAD_YAML, encoding="utf-8")
    commands = {
        "validate broken": ("validate", broken),
        "validate bad yaml": ("validate", bad_yaml),
        "test moderation": ("test", r, "--provider", "moderation", payload, "--expect", "mod-all",
                            "--header", f"X-Hub-Signature-256: {signatures[0]}"),
        "test generic": ("test", r, "--provider", "generic", generic, "--expect", "generic-all"),
        "test generic --json": ("test", r, "--provider", "generic", generic, "--expect", "generic-all", "--json"),
        "events list": ("events", "list", "--rules", r),
        "dead-letters list": ("dead-letters", "list", "--rules", r),
        "dead-letters list --json": ("dead-letters", "list", "--rules", r, "--json"),
    }
    for event_id in accepted[::2]:  # one event of each provider
        commands[f"events show {event_id}"] = ("events", "show", "--rules", r, event_id)
    with ThreadPoolExecutor(6) as pool:  # independent processes: run them side by side
        results = dict(zip(commands, pool.map(lambda args: run_cli(*args, env=cli_env), commands.values())))
    for name, res in results.items():
        outputs[name] = res.output
        assert res.code == (1 if name.startswith("validate") else 0), (name, res)
    problems = [line for line in results["validate broken"].stdout.splitlines() if VALIDATE_LINE.match(line)]
    assert len(problems) >= 6, results["validate broken"]
    assert VALIDATE_LINE.match(results["validate bad yaml"].stdout.splitlines()[0]), results["validate bad yaml"]
    assert "LITERAL_UNITARY" not in outputs["validate bad yaml"] and "LITERAL_TOKEN" not in outputs["validate bad yaml"]
    for name in ("test generic", "test generic --json"):
        assert "Authorization" in results[name].output, results[name]  # the header is shown, its value is not
    for event_id in accepted[::2]:
        assert event_id in results[f"events show {event_id}"].stdout
    dead = [json.loads(line) for line in outputs["dead-letters list --json"].splitlines() if line.strip()]
    assert Counter(d["action"] for d in dead) == Counter({"slack-gone": 2, "media-fail": 2})
    assert all(d["reason"] for d in dead)

    router.stop()  # flush every log line
    outputs["router serve stdout (access log)"] = router.stdout_path.read_text("utf-8", errors="replace")
    outputs["router serve stderr"] = router.stderr_path.read_text("utf-8", errors="replace")
    assert json_lines(outputs["router serve stderr"]), "no JSON log line at all"

    leaks = [f"{what} in {where}" for where, text in outputs.items() for what, value in secrets.items()
             if value in text]
    leaks += [f"client signature {sig[:12]}... in {where}" for where, text in outputs.items() for sig in signatures
              if sig in text and not where.startswith("test ")]  # `router test` was handed one on purpose
    assert not leaks, "secrets found in output:\n" + "\n".join(leaks)


# =========================================================================== 4. hot reload


def reload_rules(site: ScriptedServer, tag: str, *, rule: str, with_gone: bool = True, broken: bool = False) -> str:
    """Rules whose probe rule is named `rule`; `pend` events make one job for `stay` and one for `gone`
    (both downstreams answer 500 until told otherwise; `gone` retries only after an hour).
    `with_gone=False` is the next version, without the `gone` action; `broken=True` does not validate."""
    s = site.url
    gone_action = f'  gone: {{type: forward, url: "{s}/{tag}/gone", timeout: 5s, retry: {{schedule: [1h], jitter: 0}}}}\n'
    text = f"""\
version: 1
settings:
  retry: {{schedule: [{", ".join(["300ms"] * 40)}], jitter: 0}}
providers:
  src: {{type: none}}
actions:
  sink: {{type: {"forwrd" if broken else "forward"}, url: "{s}/{tag}/sink", timeout: 5s}}
  stay: {{type: forward, url: "{s}/{tag}/stay", timeout: 5s}}
{gone_action if with_gone else ""}rules:
  - {{name: {rule}, provider: src, when: {{case: probe}}, actions: [sink]}}
  - {{name: pend, provider: src, when: {{case: pend}}, actions: [{"stay, gone" if with_gone else "stay"}]}}
"""
    if broken:
        text += "  - {name: bad-regex, when: {event: {regx: '('}}, actions: [nowhere]}\n"
    return text


def park_jobs(router: RouterServer, site: ScriptedServer, tag: str) -> dict[str, int]:
    """Post a `pend` event and wait until both its jobs have failed once and wait for a retry; return
    action -> job id."""
    site.script(f"/{tag}/stay", then=Reply(500, "not yet"))
    site.script(f"/{tag}/gone", then=Reply(500, "not yet"))
    response = router.post("/hooks/src", {"case": "pend"})
    assert response.status_code == 200 and response.json()["deliveries"] == 2, response.text
    event_id = response.json()["event_id"]

    def parked() -> dict[str, int] | None:
        jobs = jobs_of(router, event_id)
        by = {j["action"]: j for j in jobs}
        if by.get("gone", {}).get("last_status") == 500 and by.get("stay", {}).get("last_status") == 500 \
                and all(j["state"] == "pending" for j in jobs):
            return {a: j["id"] for a, j in by.items()}
        return None

    return wait_until(parked, timeout=20, what="the pend event's jobs to fail once and wait")


def dead_letters(router: RouterServer) -> list[dict]:
    res = run_cli("dead-letters", "list", "--rules", router.rules_path, "--json")
    assert res.code == 0, res
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def job_state(router: RouterServer, job_id: int) -> str | None:
    return next((j.state for j in router.store().jobs() if j.id == job_id), None)


def assert_removed_action_dead_lettered(router: RouterServer, site: ScriptedServer, tag: str, jobs: dict[str, int],
                                        *, timeout: float = 8.0) -> None:
    """After a reload that removed `gone`: its job is a dead letter saying why; `stay` is still delivered."""
    site.script(f"/{tag}/stay", then=Reply(200, "ok"))

    def gone_dead() -> dict | None:
        if job_state(router, jobs["gone"]) != "dead":
            return None
        return next((d for d in dead_letters(router) if d["job_id"] == jobs["gone"]), None)

    try:
        dead = wait_until(gone_dead, timeout=timeout, interval=0.2,
                          what="the job of the removed action to be dead-lettered")
    except AssertionError:
        store = router.store()
        row = [(j.state, j.attempts, j.lease_owner, j.next_ts - store.clock(), j.last_error)
               for j in store.jobs() if j.id == jobs["gone"]]
        raise AssertionError(f"the job of the removed action 'gone' was not dead-lettered within {timeout}s after "
                             f"the reload; (state, attempts, lease_owner, seconds until next attempt, last_error) "
                             f"= {row}") from None
    finally:
        stay = wait_until(lambda: job_state(router, jobs["stay"]) == "delivered", timeout=20,
                          what="the job of the kept action to be delivered")
        assert stay
        assert site.to(f"/{tag}/stay")[-1].headers["x-router-rule"] == "pend"
    assert dead["action"] == "gone"
    reason = dead["reason"] or ""
    assert "action removed from the rules file" in reason or "no longer exists" in reason, dead
    assert not site.to(f"/{tag}/gone")[1:], "the removed action was attempted again after the reload"


def test_sighup_under_router_serve_applies_valid_rules_and_refuses_broken_ones(served, site: ScriptedServer) -> None:
    tag = "hup"
    router = served(reload_rules(site, tag, rule="first"), env={"ROUTER_WATCH": "off"}, workers=2, name="hup")
    assert routes_consistently(router, ["first"])
    old_workers = set(worker_pids(router))
    before = scrape(router.url)

    # a valid new version, then HUP: new rules everywhere
    atomic_write(router.rules_path, reload_rules(site, tag, rule="second", with_gone=False))
    signal_master(router, signal.SIGHUP)
    wait_until(lambda: routes_consistently(router, ["second"]), timeout=30, interval=0.2,
               what="the new rules to serve on every worker")
    new_workers = set(wait_workers(router, 2, exclude=old_workers))
    assert alive(router.pid)
    assert log_has(router, "rules reloaded; restarting workers")

    # a broken version, then HUP: refused with validate's messages; the old rules keep serving
    atomic_write(router.rules_path, reload_rules(site, tag, rule="third", with_gone=False, broken=True))
    signal_master(router, signal.SIGHUP)
    refused = wait_until(lambda: log_has(router, "rules reload refused; the old rules keep serving"), timeout=20,
                         what="the refused reload to be logged")
    keeps_routing(router, ["second"], seconds=2)
    assert alive(router.pid) and set(worker_pids(router)) == new_workers, "the workers were restarted"
    problems = refused[-1]["problems"]
    assert problems and all(VALIDATE_LINE.match(p) for p in problems), problems
    assert any("actions.sink.type" in p and "did you mean 'forward'" in p for p in problems), problems
    assert all(p.startswith(str(router.rules_path) + ":") for p in problems), problems

    # metrics: one successful reload, one refused
    after = scrape(router.url)
    reloads = after.value("router_rules_reloads_total") - before.value("router_rules_reloads_total")
    failures = after.value("router_rules_reload_failures_total") - before.value("router_rules_reload_failures_total")
    problems_seen = []
    if reloads < 1:
        problems_seen.append(f"router_rules_reloads_total did not increase after a successful SIGHUP reload "
                             f"({before.value('router_rules_reloads_total')} -> {after.value('router_rules_reloads_total')})")
    if failures < 1:
        problems_seen.append(f"router_rules_reload_failures_total did not increase after a refused SIGHUP reload "
                             f"({before.value('router_rules_reload_failures_total')} -> "
                             f"{after.value('router_rules_reload_failures_total')})")
    assert not problems_seen, "; ".join(problems_seen)


def test_sighup_reload_dead_letters_jobs_of_removed_actions(served, site: ScriptedServer) -> None:
    tag = "hupdl"
    router = served(reload_rules(site, tag, rule="first"), env={"ROUTER_WATCH": "off"}, workers=2, name="hupdl")
    jobs = park_jobs(router, site, tag)
    atomic_write(router.rules_path, reload_rules(site, tag, rule="second", with_gone=False))
    signal_master(router, signal.SIGHUP)
    wait_until(lambda: routes_consistently(router, ["second"]), timeout=30, interval=0.2,
               what="the new rules to serve on every worker")
    assert_removed_action_dead_lettered(router, site, tag, jobs)


def test_file_watch_reloads_valid_rules_and_keeps_old_ones_when_broken(served, site: ScriptedServer) -> None:
    tag = "watch"
    router = served(reload_rules(site, tag, rule="first"), workers=2, name="watch")
    assert routes_consistently(router, ["first"])
    jobs = park_jobs(router, site, tag)
    workers = set(worker_pids(router))

    # change the file, no signal: each worker notices within its 2 s poll
    atomic_write(router.rules_path, reload_rules(site, tag, rule="second", with_gone=False))
    wait_until(lambda: routes_consistently(router, ["second"]), timeout=30, interval=0.2,
               what="the watched file's new rules to serve on every worker")
    assert set(worker_pids(router)) == workers, "a file-watch reload is in place; no worker restarts"
    assert_removed_action_dead_lettered(router, site, tag, jobs)
    m = wait_until(lambda: (s := scrape(router.url)).value("router_rules_reloads_total") >= 1 and s,
                   timeout=10, what="router_rules_reloads_total to count the reload")
    assert m.value("router_rules_reload_failures_total") == 0

    # break the file: refused, logged with validate's messages, counted; the old rules keep serving
    atomic_write(router.rules_path, reload_rules(site, tag, rule="third", with_gone=False, broken=True))
    failed = wait_until(lambda: len(log_has(router, "rules reload failed; the old rules keep serving")) >= 2 and
                        log_has(router, "rules reload failed; the old rules keep serving"), timeout=20,
                        what="both workers to log the failed reload")
    keeps_routing(router, ["second"], seconds=2)
    problems = failed[-1]["problems"]
    assert problems and all(VALIDATE_LINE.match(p) for p in problems), problems
    wait_until(lambda: scrape(router.url).value("router_rules_reload_failures_total") >= 1, timeout=10,
               what="router_rules_reload_failures_total to count the refused file")
    assert alive(router.pid) and set(worker_pids(router)) == workers


def test_plain_gunicorn_sighup_with_broken_file_serves_last_good_rules(start_router, site: ScriptedServer) -> None:
    tag = "plain"
    router = start_router(reload_rules(site, tag, rule="first"), workers=2, name="plainhup")
    assert routes_consistently(router, ["first"])
    old_workers = set(worker_pids(router))
    atomic_write(router.rules_path, reload_rules(site, tag, rule="third", with_gone=False, broken=True))
    signal_master(router, signal.SIGHUP)
    wait_workers(router, 2, exclude=old_workers, timeout=30)
    assert router.proc is not None and router.proc.poll() is None, "the gunicorn master died"
    keeps_routing(router, ["first"], seconds=2)

    def stale_everywhere() -> list[dict] | None:
        answers = [requests.get(router.url + "/readyz", timeout=10, headers={"Connection": "close"})
                   for _ in range(6)]
        bodies = [a.json() for a in answers]
        return bodies if all(b["checks"]["rules"].startswith("stale: ") for b in bodies) else None

    bodies = wait_until(stale_everywhere, timeout=20, interval=0.2, what="/readyz to report stale rules")
    assert all(b["checks"]["store"] == "writable" for b in bodies), bodies
    logged = log_has(router, "rules file invalid; serving the last rules that loaded")
    assert logged and all(VALIDATE_LINE.match(p) for p in logged[-1]["problems"]), logged
    assert scrape(router.url).value("router_rules_reload_failures_total") >= 1
    assert router.proc.poll() is None


# =========================================================================== 5. graceful shutdown


def test_sigterm_lets_an_inflight_request_finish(served, site: ScriptedServer) -> None:
    rules = f"""\
version: 1
providers:
  src: {{type: none}}
actions:
  sink: {{type: forward, url: "{site.url}/term/sink"}}
rules:
  - {{name: all, provider: src, actions: [sink]}}
"""
    router = served(rules, workers=2, name="term", env={"ROUTER_BODY_TIMEOUT": "60"})
    body = dumps({"case": "inflight", "padding": "x" * 2000})
    sock = open_request(router.url, "/hooks/src", body[:1000], len(body))
    try:
        workers = worker_pids(router)
        wait_until(lambda: accepted_by(sock, workers), timeout=10, what="a worker to accept the slow request")
        os.kill(router.pid, signal.SIGTERM)
        # every worker has stopped accepting: TERM has reached them, while our request is half sent
        wait_until(lambda: "Handling signal: term" in router.log_text(), timeout=10, what="the master to take TERM")
        wait_until(lambda: not_accepting(router.url), timeout=20, what="the workers to stop accepting")
        sock.sendall(body[1000:])
        status, _, answer = read_response(sock)
    finally:
        sock.close()
    assert status == 200, (status, answer)
    event_id = json.loads(answer)["event_id"]
    assert router.proc is not None
    code = router.proc.wait(timeout=40)
    router.proc = None
    assert code == 0, code
    assert router.event_body(event_id) == body, "the answered event is not in the store"


def test_sigterm_hands_back_claimed_jobs_and_a_restart_delivers_them_at_once(served, site: ScriptedServer) -> None:
    """Jobs are never left leased by a stopped router: after TERM of the master (and of one worker), no job
    holds a lease, and a restarted router delivers what is left at once, not after the 25 s lease."""
    site.script("/drain/slow", then=Reply(200, "ok", delay=0.5))
    rules = f"""\
version: 1
settings:
  delivery_concurrency: 2
providers:
  src: {{type: none}}
actions:
  slow: {{type: forward, url: "{site.url}/drain/slow", timeout: 10s}}
rules:
  - {{name: all, provider: src, actions: [slow]}}
"""
    router = served(rules, workers=2, name="drain")
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda i: router.post("/hooks/src", {"n": i}).json()["event_id"], range(30)))
    site.wait_for(3, path="/drain/slow", timeout=20)

    # TERM one worker: it finishes what it started and hands back the rest; the master replaces it
    victim = worker_pids(router)[0]
    os.kill(victim, signal.SIGTERM)
    wait_until(lambda: not alive(victim), timeout=20, what="the worker to exit")
    held = [(j.id, j.state) for j in router.store().jobs() if f":{victim}:" in (j.lease_owner or "")]
    assert held == [], f"jobs still leased by the stopped worker {victim}: {held}"

    # TERM the master while deliveries are in flight
    delivered_before = len(site.to("/drain/slow"))
    code = term_and_wait(router, timeout=60)
    assert code == 0, code
    leased = [(j.id, j.state, j.lease_owner) for j in router.store().jobs() if j.lease_owner is not None]
    assert leased == [], f"jobs left with a lease after a graceful stop: {leased}"
    pending = len(router.store().jobs(state="pending"))
    assert pending > 0, "everything was delivered before TERM: the test proves nothing; slow the downstream"
    assert len(site.to("/drain/slow")) >= delivered_before

    # restart on the same store, against a fast downstream: everything left goes out at once
    site.script("/drain/slow", then=Reply(200, "ok"))
    started = time.monotonic()
    router.start()
    wait_until(lambda: all(j.state == "delivered" for j in router.store().jobs()),
               timeout=12, what="the restarted router to deliver every job left (well before a 25 s lease)")
    assert time.monotonic() - started < 15
    got = {r.headers["x-router-event-id"] for r in site.to("/drain/slow")}
    assert got == set(ids)
