"""Faults around the router: destinations that hang, reset or redirect, a store that is locked or on a
full disk, and rules files mangled by a fuzzer.

Destinations are real sockets on 127.0.0.1. The store is locked from this process with SQLite's own
`BEGIN EXCLUSIVE`; the full disk is a tiny tmpfs mounted for the test (skipped where mounting is not
allowed). Every wait polls with a deadline.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import (
    PROJECT_ROOT,
    PathServer,
    Reply,
    Resetter,
    RouterServer,
    WorkersSurvive,
    assert_clean_log,
    attempts_of,
    events_count,
    healthz,
    jobs_count,
    log_size,
    store_open_by,
    wait_settled,
    wait_until,
    worker_pids,
)

REDIRECTS = (301, 302, 303, 307, 308)
PERMANENT = (404, 410)


# --------------------------------------------------------------------------- destinations that misbehave


@pytest.fixture(scope="module")
def elsewhere():
    """Another origin that a redirect points at: it must never be reached."""
    with PathServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def destination(elsewhere):
    replies = {"/hang": Reply(200, "late", delay=5.0)}
    for status in REDIRECTS:
        replies[f"/redirect-{status}"] = Reply(status, "moved", headers={"Location": elsewhere.url + "/stolen"})
    for status in PERMANENT:
        replies[f"/status-{status}"] = Reply(status, "nope")
    with PathServer(replies) as srv:
        yield srv


@pytest.fixture(scope="module")
def resetter():
    with Resetter(rst=True) as r:
        yield r


@pytest.fixture(scope="module")
def closer():
    with Resetter(rst=False) as r:
        yield r


@pytest.fixture(scope="module")
def server(start_router, destination, resetter, closer) -> RouterServer:
    targets = {
        "hang": (destination.url + "/hang", "500ms"),
        "reset": (resetter.url + "/reset", "2s"),
        "close": (closer.url + "/close", "2s"),
        **{f"redirect-{s}": (destination.url + f"/redirect-{s}", "2s") for s in REDIRECTS},
        **{f"status-{s}": (destination.url + f"/status-{s}", "2s") for s in PERMANENT},
    }
    actions = "\n".join(f"  {name}: {{type: forward, url: \"{url}\", timeout: {timeout}}}"
                        for name, (url, timeout) in targets.items())
    rules = "\n".join(f"  - name: {name}\n    when: {{target: {name}}}\n    actions: [{name}]" for name in targets)
    return start_router(f"""\
version: 1
settings:
  durability: process
  retry: {{schedule: [200ms, 200ms], jitter: 0}}
providers:
  src: {{type: none}}
actions:
{actions}
rules:
{rules}
""", name="faults")


def post_target(server: RouterServer, target: str) -> str:
    r = requests.post(server.url + "/hooks/src", json={"target": target, "n": uuid.uuid4().hex}, timeout=20)
    assert r.status_code == 200, r.text
    assert r.json()["deliveries"] == 1, r.json()
    return r.json()["event_id"]


def test_hanging_destination_times_out_and_is_retried(server, destination):
    event_id = post_target(server, "hang")
    [job] = wait_settled(server, event_id, timeout=30)
    attempts = attempts_of(server, job["id"])
    assert job["state"] == "dead" and job["attempts"] == 3, (job, attempts)  # 1 + the schedule's 2 retries
    assert all(a["retryable"] == 1 and "timed out" in (a["error"] or "") for a in attempts), attempts
    assert job["last_error"].startswith("gave up after 3 attempts"), job
    assert len(destination.to("/hang", event_id)) == 3


@pytest.mark.parametrize("target", ["reset", "close"])
def test_connection_dropped_without_an_answer_is_retried(server, resetter, closer, target):
    listener = resetter if target == "reset" else closer
    accepted = listener.accepted
    event_id = post_target(server, target)
    [job] = wait_settled(server, event_id, timeout=30)
    attempts = attempts_of(server, job["id"])
    assert job["state"] == "dead" and job["attempts"] == 3, (job, attempts)
    assert all(a["retryable"] == 1 and a["status"] is None and a["error"] for a in attempts), attempts
    assert listener.accepted - accepted >= 3


@pytest.mark.parametrize("status", REDIRECTS)
def test_redirect_to_another_host_is_not_followed_and_dead_letters_at_once(server, destination, elsewhere, status):
    event_id = post_target(server, f"redirect-{status}")
    [job] = wait_settled(server, event_id)
    attempts = attempts_of(server, job["id"])
    assert job["state"] == "dead" and job["attempts"] == 1, (job, attempts)
    assert job["last_status"] == status and "redirect" in job["last_error"], job
    assert attempts[0]["retryable"] == 0
    assert len(destination.to(f"/redirect-{status}", event_id)) == 1
    assert elsewhere.requests == [], "the redirect was followed to another host"


@pytest.mark.parametrize("status", PERMANENT)
def test_permanent_client_error_dead_letters_after_one_attempt(server, destination, status):
    event_id = post_target(server, f"status-{status}")
    [job] = wait_settled(server, event_id)
    assert job["state"] == "dead" and job["attempts"] == 1, job
    assert job["last_status"] == status, job
    assert attempts_of(server, job["id"])[0]["retryable"] == 0
    assert len(destination.to(f"/status-{status}", event_id)) == 1


def test_faulty_destinations_left_no_traceback(server):
    assert_clean_log(server)


# --------------------------------------------------------------------------- the store: locked, and on a full disk

STORE_RULES = """\
version: 1
settings:
  store: db/router.db
  files_root: files
  durability: process
providers:
  src: {type: none}
actions:
  archive: {type: file, path: "events.jsonl"}
rules:
  - name: all
    actions: [archive]
"""


def mount_tmpfs(folder: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
                            capture_output=True, text=True, timeout=20)
    return result.returncode == 0


@pytest.fixture(scope="module")
def store_server(tmp_path_factory):
    """A router whose store (and metrics folder, which lives beside it) is on a 4 MiB tmpfs when the
    sandbox allows mounting one, else on the ordinary disk (`.tmpfs` says which)."""
    workdir = tmp_path_factory.mktemp("faults-store")
    (workdir / "db").mkdir()
    mounted = mount_tmpfs(workdir / "db", "4m")
    server = RouterServer(workdir, STORE_RULES, store="db/router.db")
    server.tmpfs = mounted  # type: ignore[attr-defined]
    try:
        server.start()
        wait_until(lambda: all(store_open_by(p, server.store_path) for p in worker_pids(server)),
                   timeout=30, what="every worker to finish booting (store open)")
        yield server
    finally:
        server.stop()
        if mounted:
            subprocess.run(["umount", str(workdir / "db")], capture_output=True, timeout=20)


def post_json(server: RouterServer, payload: dict, timeout: float = 60) -> requests.Response:
    return requests.post(server.url + "/hooks/src", data=json.dumps(payload).encode(),
                         headers={"Content-Type": "application/json"}, timeout=timeout)


def stored_with_marker(server: RouterServer, marker: str) -> tuple[int, int]:
    """(events, jobs) in the store whose body carries the marker."""
    store = server.store()
    carrying = [i for i in server.event_ids() if (e := store.event(i)) is not None and marker.encode() in e.body]
    return len(carrying), sum(len(store.jobs(event_id=i)) for i in carrying)


def test_locked_store_answers_503_then_recovers_by_itself(store_server):
    server = store_server
    start = log_size(server)
    assert post_json(server, {"warm": "up"}).status_code == 200
    with WorkersSurvive(server):
        before = (events_count(server), jobs_count(server))
        holder = sqlite3.connect(str(server.store_path), isolation_level=None, timeout=10)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            marker = f"locked-{uuid.uuid4().hex}"
            r = post_json(server, {"marker": marker})  # the router waits its 5 s busy timeout, then gives up
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "store_unavailable" and r.headers.get("Retry-After"), r.text
            assert healthz(server) == 200
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert stored_with_marker(server, marker) == (0, 0), "a 503 left part of the event behind"
        assert (events_count(server), jobs_count(server)) == before

        def accepted() -> bool:
            return post_json(server, {"after": uuid.uuid4().hex}, timeout=30).status_code == 200

        wait_until(accepted, timeout=30, interval=0.2, what="the router to accept events again")
        assert wait_until(lambda: requests.get(server.url + "/readyz", timeout=10).status_code == 200,
                          timeout=30, what="/readyz to recover")
    assert_clean_log(server, since=start)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = b"\xa5" * 65536
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
    return filler


def test_full_disk_answers_503_then_recovers_when_space_returns(store_server):
    server = store_server
    if not server.tmpfs:
        pytest.skip("cannot mount a tmpfs here (needs root and a mount-capable sandbox): no full disk to test")
    start = log_size(server)
    assert post_json(server, {"warm": "up"}).status_code == 200
    with WorkersSurvive(server):
        before = (events_count(server), jobs_count(server))
        filler = fill(server.store_path.parent)
        try:
            for size in (10, 300_000):  # small, and bigger than any WAL space SQLite kept
                marker = f"full-{size}-{uuid.uuid4().hex}"
                r = post_json(server, {"marker": marker, "pad": "x" * size})
                assert r.status_code in (200, 503), r.text
                if r.status_code == 503:
                    assert r.json()["error"] == "store_unavailable"
                    assert stored_with_marker(server, marker) == (0, 0)
            assert r.status_code == 503, "a 300 KB event was accepted on a full disk"
            assert healthz(server) == 200
            ready = requests.get(server.url + "/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["checks"]["store"].startswith("disk full"), ready.text
        finally:
            filler.unlink()
        wait_until(lambda: post_json(server, {"after": uuid.uuid4().hex}, timeout=30).status_code == 200,
                   timeout=30, interval=0.2, what="the router to accept events once space is back")
        assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
        assert events_count(server) >= before[0] + 1
    assert_clean_log(server, since=start)


def test_a_worker_restarted_while_the_store_is_locked_does_not_take_the_service_down(start_router):
    """gunicorn replaces workers all the time (a crash, an OOM kill, max_requests, HUP). If that
    happens while something holds the store's write lock - a backup, an operator's sqlite3 shell -
    the new worker must still come up (health 200, ingest 503) and recover when the lock goes.

    Today a worker that boots under the lock fails in `Store.__init__` (init_schema's BEGIN
    IMMEDIATE gives up after the 5 s busy timeout; wsgi.py calls `start_delivery()` at import, which
    builds the Store unguarded), exits with gunicorn's boot-error code 3, and the gunicorn master
    then halts the whole server ("Worker failed to boot"): a transient lock becomes an outage."""
    server = start_router(STORE_RULES.replace("db/router.db", "var/router.db"), name="faults-boot")
    wait_until(lambda: all(store_open_by(p, server.store_path) for p in worker_pids(server)),
               timeout=30, what="every worker to finish booting")
    assert post_json(server, {"warm": "up"}).status_code == 200
    holder = sqlite3.connect(str(server.store_path), isolation_level=None, timeout=10)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        old = worker_pids(server)
        for pid in old:  # our own gunicorn's workers, by PID: the master replaces them
            os.kill(pid, signal.SIGKILL)

        def replacement_serving_or_master_gone() -> str:
            if server.proc is None or server.proc.poll() is not None:
                return "master exited"
            current = worker_pids(server)
            if current and not set(current) & set(old):
                try:
                    if requests.get(server.url + "/healthz", timeout=2).status_code == 200:
                        return "serving"
                except requests.RequestException:
                    pass
            return ""

        outcome = wait_until(replacement_serving_or_master_gone, timeout=40, interval=0.2,
                             what="a replacement worker to serve while the store is locked")
        assert outcome == "serving", "the gunicorn master exited:\n" + server.log_text()[-2500:]
        r = post_json(server, {"while": "locked"})
        assert r.status_code == 503, r.text
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_until(lambda: post_json(server, {"after": uuid.uuid4().hex}, timeout=30).status_code == 200,
               timeout=30, interval=0.2, what="the router to accept events after the lock is gone")


# --------------------------------------------------------------------------- rules files mangled by a fuzzer

EXAMPLE = (PROJECT_ROOT / "rules.example.yaml").read_text("utf-8")


def apply(text: str, ops: list[tuple]) -> str:
    for op in ops:
        lines = text.splitlines(keepends=True) or [""]
        kind, a, b = op
        if kind == "delete-line":
            del lines[a % len(lines)]
        elif kind == "duplicate-line":
            i = a % len(lines)
            lines.insert(i, lines[i])
        elif kind == "swap-lines":
            i, j = a % len(lines), b % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "indent":
            i = a % len(lines)
            lines[i] = b + lines[i]
        elif kind == "dedent":
            i = a % len(lines)
            lines[i] = lines[i].lstrip(" ")
        text = "".join(lines)
        if kind == "swap-chars" and len(text) > 1:
            i = a % (len(text) - 1)
            text = text[:i] + text[i + 1] + text[i] + text[i + 2:]
        elif kind == "insert":
            i = a % (len(text) + 1)
            text = text[:i] + b + text[i:]
        elif kind == "delete-chars":
            i = a % (len(text) + 1)
            text = text[:i] + text[i + b:]
        elif kind == "truncate":
            text = text[: a % (len(text) + 1)]
    return text


positions = st.integers(min_value=0, max_value=10**6)
MUTATIONS = st.one_of(
    st.tuples(st.sampled_from(["delete-line", "duplicate-line", "dedent", "swap-chars", "truncate"]), positions,
              st.none()),
    st.tuples(st.just("swap-lines"), positions, positions),
    st.tuples(st.just("indent"), positions, st.sampled_from([" ", "  ", "    ", "\t", "- "])),
    st.tuples(st.just("insert"), positions, st.text(min_size=1, max_size=8)
              | st.sampled_from(["{", "}", "[", "]", ":", "- ", "&a ", "*a", "!!", "{{", "}}", "${X}", "${",
                                 "'", '"', "#", "|", ">", "\n", "\t", "%", "@", "`", "\x00", "\ufeff", "\u2028"])),
    st.tuples(st.just("delete-chars"), positions, st.integers(min_value=1, max_value=40)),
)


def validate_in_process(rules_file: Path) -> tuple[int, str, BaseException | None]:
    from router.cli import cli

    result = CliRunner().invoke(cli, ["validate", str(rules_file)], catch_exceptions=True)
    return result.exit_code, result.output, result.exception


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-rules")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(MUTATIONS, min_size=1, max_size=4))
def test_mutated_example_rules_validate_to_0_or_1_never_a_traceback(fuzz_dir, ops):
    rules_file = fuzz_dir / "rules.yaml"
    rules_file.write_text(apply(EXAMPLE, ops), encoding="utf-8", errors="surrogatepass")
    code, output, exc = validate_in_process(rules_file)
    assert exc is None or isinstance(exc, SystemExit), f"{type(exc).__name__}: {exc}\n{output}"
    assert code in (0, 1), output
    assert "Traceback" not in output
    assert output.strip(), "validate printed nothing"


def test_the_unmutated_example_is_valid(fuzz_dir):
    rules_file = fuzz_dir / "pristine.yaml"
    rules_file.write_text(EXAMPLE, encoding="utf-8")
    code, output, exc = validate_in_process(rules_file)
    assert (code, exc) == (0, None), output


HOSTILE_RULES = {
    "nul-byte": "version: 1\x00\n",
    "control-character": EXAMPLE.replace("version: 1", "version: 1\x07", 1),
    "recursive-alias-mapping": "version: 1\nproviders: &p {a: *p}\n",
    "recursive-alias-rules": "version: 1\nproviders: {p: {type: none}}\nactions: {a: {type: file, path: x}}\n"
                             "rules: &r [*r]\n",
    "recursive-alias-condition": "version: 1\nproviders: {p: {type: none}}\nactions: {a: {type: file, path: x}}\n"
                                 "rules:\n  - name: r\n    actions: [a]\n    when: &w {any: [*w]}\n",
    "nesting-5000-deep": "version: 1\nproviders: " + "[" * 5000 + "]" * 5000 + "\n",
    "integer-too-long": "version: " + "9" * 5000 + "\n",
    "python-tag": "!!python/object/apply:os.system ['echo pwned']\n",
    "not-utf8": None,
}


@pytest.mark.parametrize("case", list(HOSTILE_RULES))
def test_hostile_rules_file_is_reported_as_a_problem(fuzz_dir, case):
    """Exit 1 with FILE:LINE:COL problems - not an exception escaping the command (which the real
    entry point would print as "router: internal error: ...", its own word for a bug)."""
    rules_file = fuzz_dir / f"{case}.yaml"
    text = HOSTILE_RULES[case]
    if text is None:
        rules_file.write_bytes(EXAMPLE.encode().replace(b"Panjaya", b"Panj\xe4ya"))
    else:
        rules_file.write_text(text, encoding="utf-8")
    code, output, exc = validate_in_process(rules_file)
    assert exc is None or isinstance(exc, SystemExit), f"{type(exc).__name__}: {str(exc)[:300]}"
    assert code == 1, output
    assert f"{rules_file}:" in output, output


def test_real_entry_point_never_prints_a_traceback_for_a_hostile_rules_file(fuzz_dir):
    from support import run_cli

    rules_file = fuzz_dir / "recursive-cli.yaml"
    rules_file.write_text(HOSTILE_RULES["recursive-alias-mapping"])
    result = run_cli("validate", rules_file)
    assert result.code == 1, result
    assert "Traceback" not in result.output, result


def test_fuzzer_is_reproducible():
    """The mutation helper itself: deterministic, and the identity when asked to change nothing."""
    ops = [("insert", 5, "x"), ("delete-line", 3, None)]
    assert apply(EXAMPLE, ops) == apply(EXAMPLE, ops)
    assert apply(EXAMPLE, [("delete-chars", 0, 0)]) == EXAMPLE
