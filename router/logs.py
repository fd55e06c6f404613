"""One JSON line per event and per delivery attempt, on stderr, with secrets redacted.

Lines are written straight to file descriptor 2 with one os.write each: no logging-module
records, locks or buffers on the hot path, and a line never interleaves with another process's
(each is far below PIPE_BUF).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from router.secret import Redactor

_redactor = Redactor()
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_min_level = _LEVELS.get(os.environ.get("ROUTER_LOG_LEVEL", "info").lower(), 20)


def setup(redactor: Redactor | None = None, level: str | None = None) -> None:
    global _redactor, _min_level
    if redactor is not None:
        _redactor = redactor
    if level is not None:
        _min_level = _LEVELS.get(level.lower(), 20)


def use_redactor(redactor: Redactor) -> None:
    global _redactor
    _redactor = redactor


# one encoder for every line: json.dumps given any option builds a new JSONEncoder per call
_encode = json.JSONEncoder(default=str, ensure_ascii=False).encode
_second: list[Any] = [-1, ""]  # the whole second last formatted, and its text


def _timestamp(now: float) -> str:
    ms = int(now * 1000)
    second = ms // 1000
    if second != _second[0]:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{ms % 1000:03d}Z"


def _emit(level: str, msg: str, fields: dict[str, Any], fd: int = 2) -> None:
    if _LEVELS[level] < _min_level:
        return
    line = {"ts": _timestamp(time.time()), "level": level, "msg": msg}
    line.update(fields)
    text = _redactor(_encode(line)) + "\n"
    try:
        os.write(fd, text.encode("utf-8", "replace"))
    except OSError:  # a closed stderr must not fail a request
        pass


def log(level: str, msg: str, **fields: Any) -> None:
    _emit(level if level in _LEVELS else "info", msg, fields)


def access(msg: str, **fields: Any) -> None:
    """An access-log line: on stdout, where gunicorn's access log goes."""
    _emit("info", msg, fields, fd=1)


def debug(msg: str, **fields: Any) -> None:
    _emit("debug", msg, fields)


def info(msg: str, **fields: Any) -> None:
    _emit("info", msg, fields)


def warning(msg: str, **fields: Any) -> None:
    _emit("warning", msg, fields)


def error(msg: str, **fields: Any) -> None:
    _emit("error", msg, fields)


__all__ = ["access", "debug", "error", "info", "log", "setup", "use_redactor", "warning"]
