"""The `slack` action against a stand-in that keeps Slack's incoming-webhook contract (README "Actions").

200 `ok` is success; 429 is retried after Retry-After; other 4xx are permanent and dead-lettered at
once; deliveries to one webhook are paced by the action's `rate`, across both gunicorn workers.
"""

from __future__ import annotations

import json
import uuid

import pytest
from support import (
    FAST_RETRY,
    Reply,
    RouterServer,
    SlackStandIn,
    attempts_of,
    post_event,
    run_cli,
    wait_one_settled,
    wait_until,
)

# webhook path on the stand-in -> what Slack answers there, forever
GONE = {
    "deleted": (404, "channel_not_found"),
    "archived": (410, "channel_is_archived"),
    "revoked": (403, "invalid_token"),
    "broken": (400, "invalid_payload"),
}
BURST = 5


@pytest.fixture(scope="module")
def slack() -> SlackStandIn:
    # Slack's own limiter: a message sooner than 0.35 s after the previous one to the same webhook is
    # refused with 429. `rate: 2` means 0.5 s apart, so a router that paces never trips it (the margin
    # absorbs scheduling noise between the claim and the request on a loaded machine).
    with SlackStandIn(min_interval=0.35) as server:
        yield server


@pytest.fixture(scope="module")
def router(start_router, slack: SlackStandIn) -> RouterServer:
    actions = {
        "notify": {
            "webhook_url": slack.url + slack.hook("notify"),
            "text": "Dubbing {{ payload.event }} for {{ payload.asset_id }} ({{ payload.locale }}) by {{ rule }}",
        },
        "with-blocks": {
            "webhook_url": slack.url + slack.hook("blocks"),
            "text": "fallback {{ payload.asset_id }}",
            "blocks": [{"type": "section",
                        "text": {"type": "mrkdwn", "text": "*{{ payload.event }}* `{{ payload.asset_id }}`"}}],
        },
        "limited": {"webhook_url": slack.url + slack.hook("limited"), "text": "limited {{ payload.n }}"},
        "flaky": {"webhook_url": slack.url + slack.hook("flaky"), "text": "flaky {{ payload.n }}"},
        "paced": {"webhook_url": slack.url + slack.hook("paced"), "text": "burst {{ payload.n }}", "rate": 2},
        **{name: {"webhook_url": f"{slack.url}/services/T000/B000/{name}", "text": "gone {{ payload.n }}"}
           for name in GONE},
    }
    lines = ["version: 1", "settings:", f"  retry: {FAST_RETRY}", "providers:", "  src: {type: none}", "actions:"]
    for name, options in actions.items():
        lines.append(f"  {name}: {json.dumps({'type': 'slack', 'timeout': '3s', **options})}")
    lines.append("rules:")
    for name in actions:
        lines.append(f"  - {{name: rule-{name}, when: {{case: {json.dumps(name)}}}, actions: [{name}]}}")
    return start_router("\n".join(lines) + "\n", workers=2, name="slack")


def test_text_template_arrives_as_slack_message(router: RouterServer, slack: SlackStandIn) -> None:
    asset = f"asset-{uuid.uuid4().hex[:8]}"
    event_id = post_event(router, {"case": "notify", "event": "asset_failed", "asset_id": asset, "locale": "fr-FR"})

    job = wait_one_settled(router, event_id)
    assert (job["state"], job["attempts"], job["last_status"]) == ("delivered", 1, 200)
    [rec] = [r for r in slack.to("/services/T000/B000/notify") if asset in r.body.decode()]
    assert rec.method == "POST"
    assert rec.headers["content-type"].startswith("application/json")
    assert json.loads(rec.body) == {"text": f"Dubbing asset_failed for {asset} (fr-FR) by rule-notify"}


def test_blocks_render_to_a_json_list(router: RouterServer, slack: SlackStandIn) -> None:
    asset = f"asset-{uuid.uuid4().hex[:8]}"
    event_id = post_event(router, {"case": "with-blocks", "event": "version_failed", "asset_id": asset})

    job = wait_one_settled(router, event_id)
    assert job["state"] == "delivered"
    [rec] = [r for r in slack.to("/services/T000/B000/blocks") if asset in r.body.decode()]
    assert json.loads(rec.body) == {
        "text": f"fallback {asset}",
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"*version_failed* `{asset}`"}}],
    }


def test_429_is_retried_after_retry_after(router: RouterServer, slack: SlackStandIn) -> None:
    path = "/services/T000/B000/limited"
    slack.script(path, Reply(429, "rate_limited", headers={"Content-Type": "text/plain", "Retry-After": "1"}))
    event_id = post_event(router, {"case": "limited", "n": 1})

    job = wait_one_settled(router, event_id)
    assert (job["state"], job["attempts"]) == ("delivered", 2)
    first, second = slack.to(path)[-2:]
    # Retry-After: 1 overrides the 200 ms schedule
    assert second.at - first.at >= 0.95, second.at - first.at
    history = attempts_of(router, job["id"])
    assert [(a["status"], a["retryable"]) for a in history] == [(429, 1), (200, 0)]


def test_server_error_is_retried(router: RouterServer, slack: SlackStandIn) -> None:
    slack.script("/services/T000/B000/flaky", Reply(503, "service_unavailable"))
    event_id = post_event(router, {"case": "flaky", "n": 1})

    job = wait_one_settled(router, event_id)
    assert (job["state"], job["attempts"]) == ("delivered", 2)


@pytest.mark.parametrize("name", sorted(GONE))
def test_permanent_slack_error_is_dead_lettered_after_one_attempt(router: RouterServer, slack: SlackStandIn,
                                                                   name: str) -> None:
    status, reason = GONE[name]
    n = uuid.uuid4().hex
    event_id = post_event(router, {"case": name, "n": n})

    job = wait_one_settled(router, event_id)
    assert (job["state"], job["attempts"], job["last_status"]) == ("dead", 1, status)
    assert reason in job["last_error"]
    assert len([r for r in slack.to(f"/services/T000/B000/{name}") if n in r.body.decode()]) == 1

    listed = run_cli("dead-letters", "list", "--rules", router.rules_path, "--json")
    assert listed.code == 0, listed
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    [row] = [r for r in rows if r["event_id"] == event_id]
    assert (row["action"], row["rule"], row["attempts"], row["status"]) == (name, f"rule-{name}", 1, status)
    assert reason in row["reason"]
    assert "/services/T000" not in listed.output  # the webhook URL is a secret

    table = run_cli("dead-letters", "list", "--rules", router.rules_path, "--action", name)
    assert table.code == 0, table
    assert event_id in table.stdout and reason in table.stdout


def test_burst_is_paced_by_rate_and_never_trips_slacks_limiter(router: RouterServer, slack: SlackStandIn) -> None:
    path = "/services/T000/B000/paced"
    tag = uuid.uuid4().hex
    event_ids = [post_event(router, {"case": "paced", "n": f"{tag}-{i}"}) for i in range(BURST)]

    for event_id in event_ids:
        job = wait_one_settled(router, event_id, timeout=20)
        assert (job["state"], job["attempts"]) == ("delivered", 1), job
    got = wait_until(lambda: [r for r in slack.to(path) if tag in r.body.decode()] or None, what="the burst")
    assert len(got) == BURST
    assert slack.rate_limited == []
    times = sorted(r.at for r in got)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.35, gaps
    assert times[-1] - times[0] >= 1.6, gaps
