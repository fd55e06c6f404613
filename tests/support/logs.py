"""Reading the router's logs: crashes and unhandled errors, and the structured JSON lines."""

from __future__ import annotations

import json
import re
from typing import Any

from support.servers import RouterServer

_BAD_LOG = re.compile(r"Traceback|\"unexpected error\"|WORKER TIMEOUT|Worker \(pid:\d+\) was sent|"
                      r"Exception in worker process")


def log_problems(server: RouterServer, since: int = 0) -> list[str]:
    """Lines of the server's logs (from byte offset `since`) that show a crash or an unhandled error."""
    text = server.log_text()[since:]
    return [line for line in text.splitlines() if _BAD_LOG.search(line)]


def log_size(server: RouterServer) -> int:
    return len(server.log_text())


def tail_log(server: RouterServer, n: int = 3000) -> str:
    return "--- server log (tail)\n" + server.log_text()[-n:]


def assert_clean_log(server: RouterServer, since: int = 0) -> None:
    problems = log_problems(server, since)
    assert not problems, "the server logged a crash or an unhandled error:\n" + "\n".join(problems[:20]) + \
        "\n" + tail_log(server)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text` that is a JSON object (the router's structured log lines)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


VALIDATE_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<path>\S+): (?P<msg>.+)$")
