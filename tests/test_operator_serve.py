"""The operator's service (issue 15): instances that don't collide, a /readyz that says what it serves,
answers that end with a newline, a quick start that works as the README writes it (with `router sink`),
shell completion, and the systemd unit in deploy/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from support import PROJECT_ROOT, ServedRouter, run_cli, wait_until, worker_pids

RULES = """\
version: 1
providers:
  p: {type: none}
actions:
  a: {type: file, path: "x.jsonl"}
rules:
  - {name: r, actions: [a]}
"""


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An empty HOME and no XDG_RUNTIME_DIR: where gunicorn's default control socket would go."""
    (tmp_path / "home").mkdir()
    return {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": ""}


def test_two_instances_have_their_own_control_sockets(tmp_path: Path, home: dict[str, str]) -> None:
    first = ServedRouter(tmp_path / "one", RULES, env=home, workers=1)
    second = ServedRouter(tmp_path / "two", RULES, env=home, workers=1)
    with first, second:
        sockets = [wait_until(lambda s=s: list((s.workdir / "var").glob("gunicorn-*.ctl")), what="a control socket")
                   for s in (first, second)]
        assert [len(s) for s in sockets] == [1, 1]
        assert sockets[0][0] != sockets[1][0]
        assert not (Path(home["HOME"]) / ".gunicorn").exists()  # the shared default is not used
        gunicornc = Path(sys.executable).parent / "gunicornc"
        if gunicornc.exists():  # each socket answers for its own instance
            for server, [sock] in zip((first, second), sockets):
                out = subprocess.run([str(gunicornc), "-s", str(sock), "-c", "show workers", "-j"],
                                     capture_output=True, text=True, timeout=30)
                assert out.returncode == 0, out
                listed = {int(p) for p in re.findall(r'"pid":\s*(\d+)', out.stdout)}
                assert listed == set(worker_pids(server)), (out.stdout, worker_pids(server))
        for server in (first, second):
            assert server.post("/hooks/p", {"n": 1}).status_code == 200


def test_readyz_says_what_it_serves(tmp_path: Path, home: dict[str, str]) -> None:
    import hashlib

    from router import __version__

    with ServedRouter(tmp_path / "ready", RULES, env=home, workers=1) as server:
        body = server.get("/readyz").json()
        assert body["status"] == "ok", body
        assert body["rules"] == {"file": str(server.rules_path.resolve()),
                                 "version": hashlib.sha256(RULES.encode()).hexdigest()[:12]}
        assert body["store"] == {"backend": "sqlite"}
        assert body["version"] == __version__


def test_every_json_answer_ends_with_a_newline(tmp_path: Path, home: dict[str, str]) -> None:
    with ServedRouter(tmp_path / "newline", RULES, env=home, workers=1) as server:
        answers = {
            "accepted": server.post("/hooks/p", {"n": 1}),
            "invalid": server.post("/hooks/p", b"not json", headers={"Content-Type": "application/json"}),
            "unknown provider": server.post("/hooks/nope", {"n": 1}),
            "healthz": server.get("/healthz"),
            "readyz": server.get("/readyz"),
            "not found": server.get("/nothing-here"),
            "wrong method": server.get("/hooks/p"),
        }
        for name, response in answers.items():
            assert response.headers["Content-Type"].startswith("application/json"), name
            assert response.content.endswith(b"}\n"), (name, response.content)


# --------------------------------------------------------------------------- the quick start


def readme_block(heading: str) -> list[str]:
    """The shell lines of the README's section under `heading` (comments and blank lines dropped)."""
    text = (PROJECT_ROOT / "README.md").read_text("utf-8")
    section = text.split(heading, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        joined = block.replace("\\\n", " ")
        lines += [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return lines


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's quick start pipes to curl")
def test_the_quick_start_works_as_written(tmp_path: Path) -> None:
    lines = readme_block("### Quick start")
    [sink_line] = [ln for ln in lines if ln.startswith("router sink")]
    exports = dict(re.match(r"export (\w+)=(\S+)", ln).groups() for ln in lines if ln.startswith("export "))
    [serve_line] = [ln for ln in lines if ln.startswith("router serve")]
    client = [ln for ln in lines if ln.startswith("router ") and ln not in (sink_line, serve_line)]
    assert serve_line == "router serve rules.example.yaml" and client, lines

    work = tmp_path / "clone"
    shutil.copytree(PROJECT_ROOT / "examples", work / "examples")
    shutil.copy(PROJECT_ROOT / "rules.example.yaml", work / "rules.example.yaml")
    sink_out = tmp_path / "sink.out"
    with open(sink_out, "wb") as out:
        sink = subprocess.Popen([sys.executable, "-m", "router", *sink_line.split()[1:-1], "127.0.0.1:0"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=work, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        listening = wait_until(lambda: re.search(r"listening on http://127\.0\.0\.1:(\d+)/", sink_out.read_text()),
                               what="the sink to listen")
        port = listening.group(1)
        env = {k: v.replace("127.0.0.1:9000", f"127.0.0.1:{port}") for k, v in exports.items()}
        text = (work / "rules.example.yaml").read_text()
        with ServedRouter(work, text, env=env, workers=1) as server:
            # the README's own commands, with the ports this test got
            script = "\n".join(ln.replace("http://127.0.0.1:8080", server.url).replace("router ", "python -m router ")
                               for ln in client)
            done = subprocess.run(["sh", "-ec", script], cwd=work, capture_output=True, text=True, timeout=60,
                                  env={**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
            assert done.returncode == 0, done
            assert '"matched":["high-risk-content"],"deliveries":2}' in done.stdout, done.stdout
            assert "delivered=2" in wait_until(
                lambda: (r := run_cli("events", "list", work / "rules.example.yaml")).stdout.count("delivered=2")
                and r.stdout, what="both deliveries")
            printed = wait_until(lambda: "POST /slack" in sink_out.read_text() and sink_out.read_text(),
                                 what="the Slack message at the sink")
            assert "High-risk content in job b98d467c-01df-43e9-8a03-d3c92ab71a17" in printed
            archived = list((work / "var" / "files" / "moderation").glob("*.jsonl"))
            assert len(archived) == 1 and "b98d467c" in archived[0].read_text()
    finally:
        sink.terminate()
        sink.wait(timeout=15)


def test_the_sink_escapes_what_it_prints(tmp_path: Path) -> None:
    out_path = tmp_path / "sink.out"
    with open(out_path, "wb") as out:
        sink = subprocess.Popen([sys.executable, "-m", "router", "sink", "--bind", "127.0.0.1:0"], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        port = wait_until(lambda: re.search(r":(\d+)/", out_path.read_text()), what="the sink").group(1)
        response = requests.post(f"http://127.0.0.1:{port}/x", data=b"plain \x1b]0;pwned\x07 text", timeout=10)
        assert response.status_code == 200 and response.text == "ok"
        printed = wait_until(lambda: "pwned" in out_path.read_text() and out_path.read_text(), what="the request")
        assert "\x1b" not in printed and "\\x1b]0;pwned\\x07" in printed
    finally:
        sink.terminate()
        sink.wait(timeout=15)


# --------------------------------------------------------------------------- completion and systemd


def test_shell_completion_as_documented() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text("utf-8")
    assert 'eval "$(_ROUTER_COMPLETE=bash_source router)"' in readme
    result = run_cli(env={"_ROUTER_COMPLETE": "bash_source"})
    assert result.code == 0, result
    assert "_router_completion" in result.stdout and "complete " in result.stdout


UNIT = PROJECT_ROOT / "deploy" / "router.service"


def test_the_systemd_unit_runs_the_router_as_documented() -> None:
    text = UNIT.read_text("utf-8")
    assert re.search(r"^ExecStartPre=\S+/router validate$", text, re.M)  # ROUTER_RULES gives the file
    assert re.search(r"^ExecStart=\S+/router serve ", text, re.M)
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert re.search(r"^Environment=ROUTER_RULES=/\S+$", text, re.M)
    timeout = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))
    assert timeout > 30  # longer than gunicorn's graceful timeout, so a stop is never a kill


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that the executables exist: point them at this environment's router
    router_bin = Path(sys.executable).parent / "router"
    assert router_bin.exists()
    unit = tmp_path / "router.service"
    unit.write_text(UNIT.read_text("utf-8").replace("/srv/router/venv/bin/router", str(router_bin)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result
    # verify exits 0 even for settings it ignores; any complaint about this unit is a failure
    complaints = [ln for ln in (result.stdout + result.stderr).splitlines() if "router.service" in ln]
    assert not complaints, complaints


def test_serve_logs_the_rules_files_warnings(tmp_path: Path, home: dict[str, str]) -> None:
    from support import json_lines

    text = RULES.replace("actions:\n", "actions:\n  spare: {type: file, path: \"y.jsonl\"}\n")
    with ServedRouter(tmp_path / "warned", text, env=home, workers=1) as server:
        assert server.get("/healthz").status_code == 200
    lines = [line for line in json_lines(server.stderr_path.read_text()) if line.get("msg") == "rules file warning"]
    assert len(lines) == 1, server.log_text()[-2000:]
    assert lines[0]["level"] == "warning" and "action 'spare' is not used by any rule" in lines[0]["problem"]
