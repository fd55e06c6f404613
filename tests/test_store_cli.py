"""The store's command line (README "Command line"): `router events list/show`, `router dead-letters list`,
`router replay` and `router sign`, each run as a real subprocess against the store of a running router.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support import (
    Reply,
    RouterServer,
    ScriptedServer,
    attempts_of,
    jobs_of,
    post_event,
    run_cli,
    wait_settled,
    wait_until,
)

pytestmark = pytest.mark.backends("sqlite", "postgresql")

UNITARY_SECRET = "cli-unitary-secret-4c1d"

UNITARY_PAYLOAD = {
    "data": {"job_id": "job-cli-1", "is_error": False,
             "result": {"policy_categories": [{"name": "violence", "risk_level": "HIGH"}]}}
}
PANJAYA_PAYLOAD = {"event": "version_generated", "asset_id": "asset-cli-1", "version_id": "v1", "version_locale": "de"}


@pytest.fixture(scope="module")
def site() -> ScriptedServer:
    with ScriptedServer() as server:
        yield server


@pytest.fixture(scope="module")
def router(start_router, site: ScriptedServer, panjaya_public_pem: str) -> RouterServer:
    rules = f"""\
version: 1
settings:
  retry: {{schedule: [200ms], jitter: 0}}
providers:
  src: {{type: none}}
  moderation: {{type: unitary, secret: "{UNITARY_SECRET}"}}
  dubbing:
    type: panjaya
    public_key: {json.dumps(panjaya_public_pem)}
actions:
  media: {{type: forward, url: "{site.url}/media", timeout: 2s}}
  copy: {{type: forward, url: "{site.url}/copy", timeout: 2s}}
  replay-job: {{type: forward, url: "{site.url}/replay-job", timeout: 2s}}
  replay-event: {{type: forward, url: "{site.url}/replay-event", timeout: 2s}}
  replay-history: {{type: forward, url: "{site.url}/replay-history", timeout: 2s}}
rules:
  - {{name: mixed, provider: src, when: {{case: mixed}}, actions: [media, copy]}}
  - {{name: by-job, provider: src, when: {{case: by-job}}, actions: [replay-job]}}
  - {{name: by-event, provider: src, when: {{case: by-event}}, actions: [replay-event]}}
  - {{name: by-history, provider: src, when: {{case: by-history}}, actions: [replay-history]}}
  - {{name: signed-in, provider: [moderation, dubbing], actions: [copy]}}
"""
    return start_router(rules, workers=2, name="store-cli")


@pytest.fixture(scope="module")
def mixed_event(router: RouterServer, site: ScriptedServer) -> str:
    """An event with one delivery dead-lettered after two 503s and one delivered."""
    site.script("/media", then=Reply(503, "media is down"))
    event_id = post_event(router, {"case": "mixed", "asset": "a-1"})
    jobs = wait_settled(router, event_id)
    assert {j["action"]: j["state"] for j in jobs} == {"media": "dead", "copy": "delivered"}
    return event_id


def make_dead(router: RouterServer, site: ScriptedServer, case: str) -> dict:
    site.script(f"/{case.replace('by-', 'replay-')}", then=Reply(500, "not yet"))
    event_id = post_event(router, {"case": case})
    [job] = wait_settled(router, event_id)
    assert job["state"] == "dead"
    return {**job, "event_id": event_id}


# --------------------------------------------------------------------------- events


def test_events_list_shows_the_event_and_its_delivery_states(router: RouterServer, mixed_event: str) -> None:
    table = run_cli("events", "list", "--rules", router.rules_path, env=router.cli_env)
    assert table.code == 0, table
    [line] = [ln for ln in table.stdout.splitlines() if mixed_event in ln]
    assert "src" in line and "mixed" in line
    assert "dead=1" in line and "delivered=1" in line

    as_json = run_cli("events", "list", "--json", env={**router.cli_env, "ROUTER_RULES": str(router.rules_path)})  # rules from env
    assert as_json.code == 0, as_json
    rows = {r["event_id"]: r for r in map(json.loads, as_json.stdout.splitlines())}
    row = rows[mixed_event]
    assert (row["provider"], row["matched"], row["deliveries"]) == ("src", ["mixed"], {"dead": 1, "delivered": 1})


def test_events_show_has_payload_and_every_delivery_with_its_attempts(router: RouterServer, mixed_event: str) -> None:
    shown = run_cli("events", "show", "--rules", router.rules_path, mixed_event, env=router.cli_env)
    assert shown.code == 0, shown
    event = json.loads(shown.stdout)
    assert (event["event_id"], event["provider"], event["matched"]) == (mixed_event, "src", ["mixed"])
    assert event["payload"] == {"case": "mixed", "asset": "a-1"}
    deliveries = {d["action"]: d for d in event["deliveries"]}
    assert set(deliveries) == {"media", "copy"}

    media = deliveries["media"]
    assert (media["rule"], media["state"], media["attempts"], media["last_status"]) == ("mixed", "dead", 2, 503)
    assert [(h["n"], h["status"]) for h in media["history"]] == [(1, 503), (2, 503)]
    assert all("HTTP 503" in h["error"] for h in media["history"])
    assert [h["response"] for h in media["history"]] == ["media is down", "media is down"]  # the answer's first bytes
    assert "gave up after 2 attempts" in media["last_error"]

    copy = deliveries["copy"]
    assert (copy["state"], copy["attempts"]) == ("delivered", 1)
    assert [(h["n"], h["status"], h["error"], h["response"]) for h in copy["history"]] == [(1, 200, None, "ok")]


@pytest.mark.parametrize("ident", ["evt_000000000000deadbeefdeadbeef", "no-such-event"])
def test_events_show_unknown_event_exits_1(router: RouterServer, mixed_event: str, ident: str) -> None:
    shown = run_cli("events", "show", "--rules", router.rules_path, ident, env=router.cli_env)
    assert shown.code == 1, shown
    assert ident in shown.stderr
    assert "Traceback" not in shown.output


# --------------------------------------------------------------------------- dead letters and replay


def test_dead_letters_list_shows_the_reason(router: RouterServer, mixed_event: str) -> None:
    [media_job] = [j for j in jobs_of(router, mixed_event) if j["action"] == "media"]

    table = run_cli("dead-letters", "list", "--rules", router.rules_path, env=router.cli_env)
    assert table.code == 0, table
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["JOB_ID", "EVENT_ID", "RULE", "ACTION", "ATTEMPTS", "STATUS", "DEAD_AT", "REASON"]
    [line] = [ln for ln in lines if mixed_event in ln]
    assert line.split()[:6] == [str(media_job["id"]), mixed_event, "mixed", "media", "2", "503"]
    assert "gave up after 2 attempts: HTTP 503: media is down" in line

    as_json = run_cli("dead-letters", "list", "--rules", router.rules_path, "--json", env=router.cli_env)
    assert as_json.code == 0, as_json
    [row] = [r for r in map(json.loads, as_json.stdout.splitlines()) if r["event_id"] == mixed_event]
    assert row["job_id"] == media_job["id"]
    assert row["reason"] == "gave up after 2 attempts: HTTP 503: media is down"
    assert [h["status"] for h in row["history"]] == [503, 503]
    # the delivered job of the same event is not a dead letter
    assert all(r["action"] != "copy" for r in map(json.loads, as_json.stdout.splitlines()))


def test_replay_by_job_id_requeues_and_delivers_once_fixed(router: RouterServer, site: ScriptedServer) -> None:
    job = make_dead(router, site, "by-job")
    site.script("/replay-job", then=Reply(200, "ok"))

    replayed = run_cli("replay", "--rules", router.rules_path, str(job["id"]), env=router.cli_env)
    assert replayed.code == 0, replayed
    assert "re-queued 1 delivery" in replayed.stdout

    delivered = wait_until(
        lambda: [j for j in jobs_of(router, job["event_id"]) if j["state"] == "delivered"],
        what="the replayed job to be delivered")
    assert delivered[0]["id"] == job["id"]
    ok = [r for r in site.to("/replay-job") if r.headers.get("x-router-event-id") == job["event_id"]]
    # attempts keep counting across a replay (the history keeps every one): two failures, then this
    assert [r.headers["x-router-attempt"] for r in ok][-1] == "3"
    assert [a["n"] for a in attempts_of(router, job["id"])] == [1, 2, 3]

    dead = run_cli("dead-letters", "list", "--rules", router.rules_path, "--json", env=router.cli_env)
    assert all(json.loads(r)["job_id"] != job["id"] for r in dead.stdout.splitlines())
    again = run_cli("replay", "--rules", router.rules_path, str(job["id"]), env=router.cli_env)  # no longer a dead letter
    assert again.code == 1, again


def test_replay_by_event_id_requeues_its_dead_jobs(router: RouterServer, site: ScriptedServer) -> None:
    job = make_dead(router, site, "by-event")
    site.script("/replay-event", then=Reply(200, "ok"))

    replayed = run_cli("replay", "--rules", router.rules_path, job["event_id"], env=router.cli_env)
    assert replayed.code == 0, replayed
    assert "re-queued 1 delivery" in replayed.stdout
    wait_until(lambda: jobs_of(router, job["event_id"])[0]["state"] == "delivered",
               what="the replayed event to be delivered")


def test_replay_keeps_the_history_of_earlier_attempts(router: RouterServer, site: ScriptedServer) -> None:
    # a dead letter keeps every attempt's outcome; re-queueing it must not overwrite them
    job = make_dead(router, site, "by-history")
    site.script("/replay-history", then=Reply(200, "ok"))
    assert run_cli("replay", "--rules", router.rules_path, str(job["id"]), env=router.cli_env).code == 0
    wait_until(lambda: jobs_of(router, job["event_id"])[0]["state"] == "delivered",
               what="the replayed job to be delivered")

    shown = json.loads(run_cli("events", "show", "--rules", router.rules_path, job["event_id"], env=router.cli_env).stdout)
    [delivery] = shown["deliveries"]
    history = delivery["history"]
    assert [h["status"] for h in history] == [500, 500, 200], history
    assert [h["at"] for h in history] == sorted(h["at"] for h in history), history


@pytest.mark.parametrize("ident", ["987654321", "evt_000000000000feedfacefeedface"])
def test_replay_unknown_id_exits_1(router: RouterServer, ident: str) -> None:
    replayed = run_cli("replay", "--rules", router.rules_path, ident, env=router.cli_env)
    assert replayed.code == 1, replayed
    assert ident in replayed.stderr
    assert "Traceback" not in replayed.output


# --------------------------------------------------------------------------- sign


def signed_headers(output: str) -> dict[str, str]:
    headers = {}
    for line in output.splitlines():
        name, _, value = line.partition(": ")
        headers[name] = value
    return headers


def test_sign_prints_headers_the_router_accepts_for_unitary(router: RouterServer, tmp_path: Path) -> None:
    body = json.dumps(UNITARY_PAYLOAD, indent=1).encode()
    payload_file = tmp_path / "unitary.json"
    payload_file.write_bytes(body)

    signed = run_cli("sign", "--rules", router.rules_path, "--provider", "moderation", payload_file)
    assert signed.code == 0, signed
    headers = signed_headers(signed.stdout)
    assert set(headers) == {"Content-Type", "X-Hub-Signature-256"}
    assert UNITARY_SECRET not in signed.output

    accepted = router.post("/hooks/moderation", body, headers=headers)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["matched"] == ["signed-in"]
    assert router.event_body(accepted.json()["event_id"]) == body

    tampered = router.post("/hooks/moderation", body.replace(b"HIGH", b"LOW "), headers=headers)
    assert tampered.status_code == 401


def test_sign_with_private_key_for_panjaya(router: RouterServer, tmp_path: Path,
                                           panjaya_key: ec.EllipticCurvePrivateKey) -> None:
    key_file = tmp_path / "panjaya.pem"
    key_file.write_bytes(panjaya_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    body = json.dumps(PANJAYA_PAYLOAD).encode()
    payload_file = tmp_path / "panjaya.json"
    payload_file.write_bytes(body)

    signed = run_cli("sign", "--rules", router.rules_path, "--provider", "dubbing", "--private-key", key_file,
                     payload_file)
    assert signed.code == 0, signed
    headers = signed_headers(signed.stdout)
    assert "X-Signature" in headers
    assert "PRIVATE KEY" not in signed.output

    accepted = router.post("/hooks/dubbing", body, headers=headers)
    assert accepted.status_code == 200, accepted.text
    assert router.event_body(accepted.json()["event_id"]) == body

    unsigned = run_cli("sign", "--rules", router.rules_path, "--provider", "dubbing", payload_file)
    assert unsigned.code == 1, unsigned
    assert "--private-key" in unsigned.stderr
