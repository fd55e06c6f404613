"""One JSON line per event and per delivery attempt, on stderr, with secrets redacted."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from router.secret import Redactor

_logger = logging.getLogger("router")
_redactor = Redactor()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _redactor(json.dumps(line, default=str, ensure_ascii=False))


def setup(redactor: Redactor | None = None, level: int = logging.INFO) -> None:
    global _redactor
    if redactor is not None:
        _redactor = redactor
    if not any(getattr(h, "_router", False) for h in _logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonFormatter())
        handler._router = True  # type: ignore[attr-defined]
        _logger.addHandler(handler)
    _logger.setLevel(level)
    _logger.propagate = False


def use_redactor(redactor: Redactor) -> None:
    global _redactor
    _redactor = redactor


def info(msg: str, **fields: Any) -> None:
    _logger.info(msg, extra={"fields": fields})


def warning(msg: str, **fields: Any) -> None:
    _logger.warning(msg, extra={"fields": fields})


def error(msg: str, **fields: Any) -> None:
    _logger.error(msg, extra={"fields": fields})
