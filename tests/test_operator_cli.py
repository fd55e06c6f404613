"""The operator's command line (issue 15), through the real `router` command against a real router's store:
one way to give the rules file, store commands without the service's secrets, `events list` filters,
`replay` by id or filter, `keygen`, and control characters never reaching the terminal raw (issue 14).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from support import Reply, RouterServer, ScriptedServer, run_cli, wait_settled, wait_until

SECRET = "operator-unitary-secret-93b1"
ESCAPE = "\x1b]0;pwned\x07"  # an OSC sequence that retitles the terminal


@pytest.fixture(scope="module")
def site() -> ScriptedServer:
    with ScriptedServer() as server:
        yield server


@pytest.fixture(scope="module")
def router(start_router, site: ScriptedServer) -> RouterServer:
    site.script("/fails", then=Reply(400, f"bad request {ESCAPE} from the destination"))
    rules = f"""\
version: 1
settings:
  retry: {{schedule: [200ms], jitter: 0}}
providers:
  src: {{type: none}}
  other: {{type: none}}
  moderation: {{type: unitary, secret: "${{UNITARY_SECRET}}"}}
actions:
  ok: {{type: forward, url: "{site.url}/ok", timeout: 2s}}
  fails: {{type: forward, url: "{site.url}/fails", timeout: 2s}}
rules:
  - {{name: good, provider: [src, other], when: {{kind: good}}, actions: [ok]}}
  - {{name: bad, provider: src, when: {{kind: bad}}, actions: [fails]}}
"""
    return start_router(rules, env={"UNITARY_SECRET": SECRET}, name="operator-cli")


@pytest.fixture(scope="module")
def history(router: RouterServer) -> dict[str, str]:
    """Four events, oldest first: good (src), bad (src, dead-lettered), good (other), good (src)."""
    ids = {}
    for name, provider, kind in (("first", "src", "good"), ("dead", "src", "bad"), ("other", "other", "good"),
                                 ("last", "src", "good")):
        response = router.post(f"/hooks/{provider}", {"kind": kind, "name": name})
        assert response.status_code == 200, response.text
        ids[name] = response.json()["event_id"]
        wait_settled(router, ids[name])
    return ids


def cli(*args: str | os.PathLike, env: dict[str, str | None] | None = None, **kw):
    # the service's secret is NOT in the environment: store commands must not need it
    return run_cli(*args, env={"UNITARY_SECRET": None, **(env or {})}, **kw)


def listed(result) -> list[dict]:
    assert result.code == 0, result
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


# --------------------------------------------------------------------------- the rules file, one way


def test_rules_file_as_argument_option_or_environment(router: RouterServer, history: dict[str, str]) -> None:
    by_arg = listed(cli("events", "list", router.rules_path, "--json"))
    by_option = listed(cli("events", "list", "--rules", router.rules_path, "--json"))
    by_env = listed(cli("events", "list", "--json", env={"ROUTER_RULES": str(router.rules_path)}))
    assert by_arg == by_option == by_env
    assert {e["event_id"] for e in by_arg} >= set(history.values())


def test_rules_file_given_twice_or_not_at_all_is_a_usage_error(router: RouterServer) -> None:
    twice = cli("events", "list", router.rules_path, "--rules", router.rules_path)
    assert twice.code == 2, twice
    assert "not both" in twice.stderr
    nowhere = cli("dead-letters", "list")
    assert nowhere.code == 2, nowhere
    assert "ROUTER_RULES" in nowhere.stderr


@pytest.mark.parametrize("args", [("validate", "{missing}"), ("events", "list", "{missing}"),
                                  ("replay", "--rules", "{missing}", "7"), ("test", "{missing}", "--provider", "p"),
                                  ("serve", "{missing}")], ids=lambda a: a[0])
def test_a_missing_rules_file_exits_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    missing = tmp_path / "nope.yaml"
    result = cli(*(a.format(missing=missing) for a in args))
    assert result.code == 2, result
    assert "nope.yaml" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.output


def test_help_says_where_the_rules_file_comes_from() -> None:
    for command in (["validate"], ["test"], ["events", "list"], ["replay"], ["backup"], ["dead-letters", "list"]):
        result = cli(*command, "--help")
        assert result.code == 0, result
        assert "ROUTER_RULES" in result.stdout, (command, result.stdout)


def test_store_commands_work_without_the_services_secrets(router: RouterServer, history: dict[str, str],
                                                          tmp_path: Path) -> None:
    # the full check needs the secret ...
    strict = cli("validate", router.rules_path)
    assert strict.code == 1 and "UNITARY_SECRET" in strict.stdout, strict
    # ... the store commands do not
    assert cli("events", "show", router.rules_path, history["first"]).code == 0
    assert cli("dead-letters", "list", router.rules_path).code == 0
    result = cli("backup", router.rules_path, tmp_path / "copy.db")
    assert result.code == 0 and (tmp_path / "copy.db").stat().st_size > 0, result


# --------------------------------------------------------------------------- events list


def test_events_list_is_newest_first_and_limited(router: RouterServer, history: dict[str, str]) -> None:
    rows = listed(cli("events", "list", router.rules_path, "--json"))
    ours = [r["event_id"] for r in rows if r["event_id"] in history.values()]
    assert ours == [history[n] for n in ("last", "other", "dead", "first")]
    assert [r["event_id"] for r in listed(cli("events", "list", router.rules_path, "--json", "--limit", "2"))] == \
        [history["last"], history["other"]]


@pytest.mark.parametrize("flags, expected", [
    (("--provider", "other"), ["other"]),
    (("--rule", "bad"), ["dead"]),
    (("--state", "dead"), ["dead"]),
    (("--state", "delivered", "--provider", "src"), ["last", "first"]),
    (("--since", "1h"), ["last", "other", "dead", "first"]),
    (("--until", "1h"), []),
], ids=["provider", "rule", "state", "state+provider", "since-duration", "until-duration"])
def test_events_list_filters(router: RouterServer, history: dict[str, str], flags: tuple[str, ...],
                             expected: list[str]) -> None:
    rows = listed(cli("events", "list", router.rules_path, "--json", *flags))
    assert [r["event_id"] for r in rows if r["event_id"] in history.values()] == [history[n] for n in expected]


def test_events_list_since_and_until_take_iso_times(router: RouterServer, history: dict[str, str]) -> None:
    middle = next(r for r in listed(cli("events", "list", router.rules_path, "--json"))
                  if r["event_id"] == history["dead"])["received_at"]
    since = listed(cli("events", "list", router.rules_path, "--json", "--since", middle))
    until = listed(cli("events", "list", router.rules_path, "--json", "--until", middle))
    assert history["dead"] in {r["event_id"] for r in since}
    assert history["first"] in {r["event_id"] for r in until} and history["dead"] not in {r["event_id"] for r in until}
    bad = cli("events", "list", router.rules_path, "--since", "last tuesday")
    assert bad.code == 2 and "duration" in bad.stderr, bad


# --------------------------------------------------------------------------- replay


def test_replay_of_a_delivered_job_says_it_is_not_dead(router: RouterServer, history: dict[str, str]) -> None:
    [job] = router.store().jobs(event_id=history["first"])
    result = cli("replay", router.rules_path, str(job.id))
    assert result.code == 1, result
    assert f"job {job.id} is delivered, not dead" in result.stderr
    by_event = cli("replay", router.rules_path, history["first"])
    assert by_event.code == 1 and "has no dead deliveries (1 delivered)" in by_event.stderr, by_event
    unknown = cli("replay", router.rules_path, "evt_nosuchthing")
    assert unknown.code == 1 and "no job or event evt_nosuchthing" in unknown.stderr, unknown


def test_replay_by_filter_counts_first_and_needs_yes_without_a_terminal(router: RouterServer,
                                                                          history: dict[str, str],
                                                                          site: ScriptedServer) -> None:
    [job] = router.store().jobs(event_id=history["dead"])
    assert job.state == "dead"
    refused = cli("replay", router.rules_path, "--action", "fails", input="y\n")
    assert refused.code == 2, refused
    assert "1 dead-lettered delivery match (action fails)" in refused.stdout
    assert "--yes" in refused.stderr
    assert router.store().jobs(event_id=history["dead"])[0].state == "dead"  # nothing re-queued

    nothing = cli("replay", router.rules_path, "--action", "ok", "--yes")
    assert nothing.code == 1 and "no dead-lettered delivery matches" in nothing.stderr, nothing

    before = len(site.to("/fails"))
    done = cli("replay", router.rules_path, "--action", "fails", "--since", "1h", "--yes")
    assert done.code == 0, done
    assert "re-queued 1 delivery" in done.stdout
    site.wait_for(before + 1, path="/fails")  # it was really tried again
    wait_until(lambda: router.store().jobs(event_id=history["dead"])[0].state == "dead", what="dead again")


def test_replay_needs_an_id_or_a_filter_and_not_both(router: RouterServer) -> None:
    assert cli("replay", router.rules_path).code == 2
    both = cli("replay", router.rules_path, "12", "--all-dead")
    assert both.code == 2 and "not both" in both.stderr, both


# --------------------------------------------------------------------------- keygen


def test_keygen_writes_a_pair_that_signs_what_a_panjaya_provider_accepts(start_router, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    made = cli("keygen", keys, "--name", "local")
    assert made.code == 0, made
    private, public = keys / "local.key.pem", keys / "local.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    serialization.load_pem_private_key(private.read_bytes(), password=None)
    again = cli("keygen", keys, "--name", "local")
    assert again.code == 1 and "not overwriting" in again.stderr, again

    server = start_router(f"""\
version: 1
providers:
  dubbing: {{type: panjaya, public_key_file: "{public}"}}
rules: []
""", name="keygen")
    payload = tmp_path / "event.json"
    payload.write_text(json.dumps({"event": "asset_failed", "asset_id": "a-1"}))
    signed = cli("sign", server.rules_path, "--provider", "dubbing", "--private-key", private, payload)
    assert signed.code == 0, signed
    headers = dict(line.split(": ", 1) for line in signed.stdout.splitlines())
    response = server.post("/hooks/dubbing", payload.read_bytes(), headers=headers)
    assert response.status_code == 200, response.text
    forged = server.post("/hooks/dubbing", payload.read_bytes() + b" ", headers=headers)
    assert forged.status_code == 401


# --------------------------------------------------------------------------- terminal escapes


def test_no_control_character_reaches_the_terminal_raw(router: RouterServer, history: dict[str, str]) -> None:
    outputs = {
        "dead-letters list": cli("dead-letters", "list", router.rules_path),
        "dead-letters list --json": cli("dead-letters", "list", router.rules_path, "--json"),
        "events show": cli("events", "show", router.rules_path, history["dead"]),
        "events list": cli("events", "list", router.rules_path),
        "error message": cli("events", "show", router.rules_path, f"evt_{ESCAPE}"),
        "click's own error": cli("events", "list", router.rules_path, "--state", ESCAPE),
    }
    for name, result in outputs.items():
        for stream in (result.stdout, result.stderr):
            assert "\x1b" not in stream and "\x07" not in stream, (name, result)
    assert "\\x1b]0;pwned\\x07" in outputs["dead-letters list"].stdout  # shown, escaped
    dead = listed(outputs["dead-letters list --json"])
    assert any(ESCAPE in d["reason"] for d in dead)  # the JSON still decodes to the real text
    assert "\\x1b" in outputs["error message"].stderr and "\\x1b" in outputs["click's own error"].stderr


def test_store_commands_survive_a_broken_rule_but_not_a_broken_store_setting(router: RouterServer,
                                                                             history: dict[str, str],
                                                                             tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(router.rules_path.read_text().replace("actions: [ok]", "actions: [no-such-action]")
                      .replace("settings:\n", f"settings:\n  store: {router.store_path}\n", 1))
    assert cli("validate", broken).code == 1
    rows = listed(cli("events", "list", broken, "--json", "--provider", "other"))
    assert [r["event_id"] for r in rows] == [history["other"]]

    unset = tmp_path / "unset.yaml"
    unset.write_text("version: 1\nsettings:\n  store: ${NO_SUCH_STORE_VAR}\nproviders: {}\nrules: []\n")
    result = cli("events", "list", unset)
    assert result.code == 1, result
    assert "unset.yaml:3:10: settings.store: environment variable 'NO_SUCH_STORE_VAR' is not set" in result.stderr
