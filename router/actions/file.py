"""`file`: append the event to a file under `settings.files_root`, and nowhere else.

The rendered path is refused when it is absolute, has a `..` part or a NUL byte; it is then opened
one directory at a time relative to files_root with O_NOFOLLOW, so a symlink planted anywhere on
the way cannot lead out. Each line is written with one write() under an exclusive lock on an
O_APPEND file, so lines from concurrent processes never interleave; the lines of a batch bound for
one file go in one write and one sync.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import PurePosixPath
from typing import Any

from router.actions.base import Action, Delivery, Result
from router.config.fields import Field, as_template, one_of
from router.errors import DeliveryError
from router.templates import Template, TemplateError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: a FIFO planted at the path must not hang the worker (it is refused as not regular)
_FILE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # one encoder, not one per line

# errors that the same rendered path meets on every attempt (a name too long for the file system, a
# byte sequence it refuses, a file where a folder must be)
PERMANENT_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL, errno.ENOTDIR, errno.EISDIR, errno.ELOOP})


def safe_relative(rendered: str) -> list[str]:
    """The parts of a rendered path, or DeliveryError (permanent) when it would leave the root."""
    known = _safe_paths.get(rendered)
    if known is not None:
        return list(known)
    parts = _safe_relative(rendered)
    if len(_safe_paths) >= 4096:  # a bound: paths rendered from event data may all differ
        _safe_paths.clear()
    _safe_paths[rendered] = tuple(parts)
    return parts


_safe_paths: dict[str, tuple[str, ...]] = {}  # rendered path -> its parts (a pure function of the text)


def _safe_relative(rendered: str) -> list[str]:
    if "\x00" in rendered:
        raise DeliveryError("file path contains a NUL byte; refused", retryable=False)
    if not rendered.strip():
        raise DeliveryError("file path rendered empty", retryable=False)
    if rendered.startswith(("/", "\\")) or (len(rendered) > 1 and rendered[1] == ":"):
        raise DeliveryError("file path is absolute; it must be relative to files_root", retryable=False)
    parts = [p for p in PurePosixPath(rendered.replace("\\", "/")).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise DeliveryError("file path has a '..' part; refused", retryable=False)
    if not parts:
        raise DeliveryError("file path names no file", retryable=False)
    return parts


class FileAction(Action):
    type_name = "file"
    options = {"path": Field(as_template, required=True), "format": Field(one_of("jsonl", "raw"), default="jsonl")}

    def __init__(self, name: str, options: dict[str, Any], settings: Any):
        super().__init__(name, options, settings)
        self.path: Template = options["path"]
        self.format: str = options["format"] or "jsonl"
        self.fsync = settings.durability == "fsync"

    def _render(self, d: Delivery) -> tuple[list[str], bytes]:
        try:
            # a constant path (the usual case) needs no template context: that costs a payload parse
            rendered = self.path.source if self.path.is_constant else self.path.render(d.context())
        except TemplateError as exc:
            raise DeliveryError(str(exc), retryable=False) from None
        parts = safe_relative(rendered)
        if self.format == "raw":
            # the body passed the strict JSON parse, so any CR or LF in it is whitespace between
            # tokens (inside strings they must be escaped): as spaces, the value and its length are
            # the same, and the event stays on one line
            line = d.body.replace(b"\r", b" ").replace(b"\n", b" ") + b"\n"
        else:
            record = {
                "event_id": d.event_id,
                "provider": d.provider,
                "received_at": d.received_at,
                "rule": d.rule,
                "payload": d.payload,
            }
            line = (_compact(record) + "\n").encode("utf-8")
        return parts, line

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        parts, line = self._render(delivery)
        return {
            "file": str(self.settings.files_root.joinpath(*parts)),
            "format": self.format,
            "line": line.decode("utf-8", "replace").rstrip("\n"),
        }

    batches = True

    def deliver(self, delivery: Delivery) -> int | None:
        result = self.deliver_batch([delivery])[0]
        if isinstance(result, DeliveryError):
            raise result
        return result

    def deliver_batch(self, deliveries: list[Delivery]) -> list[Result]:
        """Lines for the same file are appended with one write and one sync: a backlog drains at the
        disk's pace per batch, not per event. A line that cannot be rendered fails alone."""
        results: list[Result] = [None] * len(deliveries)
        by_file: dict[tuple[str, ...], list[tuple[int, bytes]]] = {}
        for i, delivery in enumerate(deliveries):
            try:
                parts, line = self._render(delivery)
            except DeliveryError as exc:
                results[i] = exc
                continue
            except UnicodeError as exc:  # the same bytes fail the same way every time
                results[i] = DeliveryError(f"cannot encode the delivery: {type(exc).__name__}", retryable=False)
                continue
            by_file.setdefault(tuple(parts), []).append((i, line))
        for where, lines in by_file.items():
            try:
                append_line(str(self.settings.files_root), list(where), b"".join(line for _, line in lines),
                            fsync=self.fsync)
            except DeliveryError as exc:
                for i, _ in lines:
                    results[i] = exc
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                # a name the file system refuses is refused again on every retry; a full disk, missing
                # permission or a read-only mount is the operator's to mend, so those are retried
                error = DeliveryError(f"cannot write: {reason}", retryable=exc.errno not in PERMANENT_ERRNOS)
                for i, _ in lines:
                    results[i] = error
        return results


def append_line(root: str, parts: list[str], line: bytes, *, fsync: bool) -> None:
    os.makedirs(root, exist_ok=True)
    fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)  # the root itself is the operator's choice
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise DeliveryError(f"'{part}' is a symlink or not a directory; refused", retryable=False) from None
                raise
            os.close(fd)
            fd = nxt
        try:
            out = os.open(parts[-1], _FILE_FLAGS, 0o644, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise DeliveryError(f"'{parts[-1]}' is a symlink or not a regular file; refused", retryable=False) from None
            raise
        try:
            if not _is_regular(out):
                raise DeliveryError(f"'{parts[-1]}' is not a regular file; refused", retryable=False)
            fcntl.flock(out, fcntl.LOCK_EX)
            try:
                view = memoryview(line)
                while view:
                    written = os.write(out, view)
                    view = view[written:]
                if fsync:
                    os.fsync(out)
            finally:
                fcntl.flock(out, fcntl.LOCK_UN)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)
