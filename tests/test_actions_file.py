"""The `file` action (README "Actions"): what a line holds, that nothing is written outside
`files_root` whatever the payload says, and that lines from concurrent workers never interleave.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support import FAST_RETRY, RouterServer, attempts_of, post_event, wait_one_settled, wait_until

CONCURRENT = 100

RULES = f"""\
version: 1
settings:
  retry: {FAST_RETRY}
providers:
  src: {{type: none}}
actions:
  archive:
    type: file
    path: "{{{{ provider }}}}/{{{{ received_at[:10] }}}}.jsonl"
  raw-copy:
    type: file
    format: raw
    path: "raw/{{{{ payload.tag }}}}.txt"
  by-name:
    type: file
    path: "{{{{ payload.name }}}}.jsonl"
  under-dir:
    type: file
    path: "{{{{ payload.dir }}}}/out.jsonl"
  pile:
    type: file
    path: concurrent/pile.jsonl
rules:
  - {{name: archive-all, when: {{case: archive}}, actions: [archive]}}
  - {{name: raw, when: {{case: raw}}, actions: [raw-copy]}}
  - {{name: named, when: {{case: named}}, actions: [by-name]}}
  - {{name: dir, when: {{case: dir}}, actions: [under-dir]}}
  - {{name: pile, when: {{case: pile}}, actions: [pile]}}
"""


@pytest.fixture(scope="module")
def router(start_router) -> RouterServer:
    return start_router(RULES, workers=3, name="files")


@pytest.fixture(scope="module")
def files_root(router: RouterServer) -> Path:
    root = router.workdir / "var" / "files"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="module")
def outside(router: RouterServer) -> Path:
    """A folder beside files_root (inside the server's work dir) that no action may write to."""
    path = router.workdir / "outside"
    path.mkdir(exist_ok=True)
    return path


def all_files(top: Path) -> set[Path]:
    return {p for p in top.rglob("*") if p.is_file() or p.is_symlink()}


def test_jsonl_line_holds_the_event(router: RouterServer, files_root: Path) -> None:
    payload = {"case": "archive", "text": "caf\u00e9 \u2713\nsecond line", "n": [1, 2.5, None]}
    response = router.post("/hooks/src", payload)
    assert response.status_code == 200
    event_id = response.json()["event_id"]

    job = wait_one_settled(router, event_id)
    assert job["state"] == "delivered", job
    stored = router.store().event(event_id)
    assert stored is not None
    received_at = stored.received_at
    target = files_root / "src" / f"{received_at[:10]}.jsonl"
    records = [json.loads(line) for line in target.read_text("utf-8").splitlines()]
    [record] = [r for r in records if r["event_id"] == event_id]
    assert record == {"event_id": event_id, "provider": "src", "received_at": received_at,
                      "rule": "archive-all", "payload": payload}
    assert target.read_bytes().endswith(b"\n")


def test_raw_format_writes_the_body_as_received_one_per_line(router: RouterServer, files_root: Path) -> None:
    tag = uuid.uuid4().hex
    bodies = [
        f'{{"case":"raw",  "tag":"{tag}", "x": "\u00e9"}}'.encode(),
        # line breaks between tokens become spaces, so each event stays on one line; the JSON value
        # and the length are unchanged
        f'{{ "tag" : "{tag}",\r\n\t"case" : "raw" }}\n'.encode(),
    ]
    for body in bodies:
        event_id = post_event_raw(router, body)
        assert wait_one_settled(router, event_id)["state"] == "delivered"
    lines = (files_root / "raw" / f"{tag}.txt").read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert lines[:-1] == [bodies[0], bodies[1].replace(b"\r", b" ").replace(b"\n", b" ")]
    assert [json.loads(line) for line in lines[:-1]] == [json.loads(b) for b in bodies]


def post_event_raw(router: RouterServer, body: bytes) -> str:
    response = router.post("/hooks/src", body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("name", "../../escape", "'..'"),
        ("name", "nested/../../../escape", "'..'"),
        ("dir", "..", "'..'"),
        ("dir", "ok/../..", "'..'"),
        ("name", "/tmp/router-absolute-escape", "absolute"),
        ("dir", "//tmp", "absolute"),
        ("name", "nul\u0000byte", "NUL"),
    ],
    ids=["dotdot", "nested-dotdot", "bare-dotdot", "dir-dotdot", "absolute", "double-slash", "nul"],
)
def test_path_leaving_files_root_is_refused_and_nothing_is_written(
        router: RouterServer, files_root: Path, outside: Path, field: str, value: str, reason: str) -> None:
    before = all_files(router.workdir.parent)
    event_id = post_event(router, {"case": "named" if field == "name" else "dir", field: value})

    job = wait_one_settled(router, event_id)
    assert (job["state"], job["attempts"]) == ("dead", 1), job
    assert reason in job["last_error"]
    assert [a["retryable"] for a in attempts_of(router, job["id"])] == [0]
    # no line landed anywhere outside files_root (the store, logs and metrics files are the server's own)
    new = {p for p in all_files(router.workdir.parent) - before
           if not p.is_relative_to(files_root) and (p.suffix == ".jsonl" or "escape" in p.name)}
    assert new == set(), new
    assert not Path("/tmp/router-absolute-escape.jsonl").exists()
    assert not (router.workdir / "escape.jsonl").exists()
    assert not (router.workdir.parent / "escape.jsonl").exists()


def test_symlinked_directory_inside_files_root_is_refused(router: RouterServer, files_root: Path,
                                                          outside: Path) -> None:
    link = files_root / "planted-dir"
    link.symlink_to(outside, target_is_directory=True)
    event_id = post_event(router, {"case": "dir", "dir": "planted-dir"})

    job = wait_one_settled(router, event_id)
    assert (job["state"], job["attempts"]) == ("dead", 1), job
    assert "symlink" in job["last_error"]
    assert list(outside.iterdir()) == []


def test_symlinked_file_inside_files_root_is_refused(router: RouterServer, files_root: Path, outside: Path) -> None:
    victim = outside / "victim.jsonl"
    victim.write_text("precious\n")
    (files_root / "planted-file.jsonl").symlink_to(victim)
    event_id = post_event(router, {"case": "named", "name": "planted-file"})

    job = wait_one_settled(router, event_id)
    assert (job["state"], job["attempts"]) == ("dead", 1), job
    assert "symlink" in job["last_error"]
    assert victim.read_text() == "precious\n"


def test_symlink_deeper_on_the_way_is_refused(router: RouterServer, files_root: Path, outside: Path) -> None:
    (files_root / "real").mkdir(exist_ok=True)
    (files_root / "real" / "hop").symlink_to(outside, target_is_directory=True)
    event_id = post_event(router, {"case": "dir", "dir": "real/hop"})

    job = wait_one_settled(router, event_id)
    assert job["state"] == "dead", job
    assert not (outside / "out.jsonl").exists()


def pad(i: int) -> str:
    return f"{i:03d}" * (50 + (i % 7) * 2000)


def test_concurrent_events_give_whole_lines(router: RouterServer, files_root: Path) -> None:
    # bodies of up to ~40 KB, well over PIPE_BUF, so an unlocked or split write would show
    def send(i: int) -> str:
        payload = {"case": "pile", "i": i, "pad": pad(i)}
        return post_event(router, payload, timeout=60)

    with ThreadPoolExecutor(max_workers=12) as pool:
        acknowledged = set(pool.map(send, range(CONCURRENT)))
    assert len(acknowledged) == CONCURRENT

    target = files_root / "concurrent" / "pile.jsonl"

    def lines() -> list[bytes] | None:
        data = target.read_bytes() if target.exists() else b""
        found = data.split(b"\n")
        return found[:-1] if len(found) > CONCURRENT else None

    got = wait_until(lines, timeout=60, what=f"{CONCURRENT} lines in {target}")
    assert target.read_bytes().endswith(b"\n")
    records = [json.loads(line) for line in got]
    assert len(records) == CONCURRENT
    assert {r["event_id"] for r in records} == acknowledged
    for r in records:
        i = r["payload"]["i"]
        assert r["payload"]["pad"] == pad(i)
    # a line is written before its outcome is recorded (outcomes are written back in batches): wait for them
    def settled() -> list[tuple] | None:
        counted = Counter((j.state, j.attempts) for j in router.store().jobs(action="pile"))
        rows = [(state, attempts, n) for (state, attempts), n in sorted(counted.items())]
        return rows if not any(state == "pending" for state, _, _ in rows) else None

    states = wait_until(settled, timeout=30, what="every pile job's outcome recorded")
    assert states == [("delivered", 1, CONCURRENT)]
