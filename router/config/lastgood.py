"""The last rules text that loaded from a rules file, kept so a worker can fall back to it.

When a worker boots (after a HUP, a crash, max_requests) onto a rules file that no longer
loads, it serves these rules instead of failing to boot and taking the service down.

The text holds the file's inline secrets, so it is not kept in the store (whose backups travel):
it lives in a private folder of the system's temporary directory, one per rules file and user
(`router-rules-<uid>-<hash of the file's path>`, mode 0700, the file 0600), like the metrics
folder. A folder of that name that is not this user's own and private is not used. The copy
does not outlive a reboot that clears the temporary directory; a worker that boots then onto a
broken file fails with the validate messages, as it would without a copy.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

FILE_NAME = "last-good.yaml"


def folder(rules_path: str | os.PathLike) -> Path:
    digest = hashlib.sha256(str(Path(rules_path).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"router-rules-{os.getuid()}-{digest}"


def _private(path: Path, *, create: bool) -> bool:
    """Is `path` a folder of ours that no one else can read or write (made so when `create`)?"""
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def save(rules_path: str | os.PathLike, text: str) -> None:
    """Keep `text` as the last good rules of `rules_path`; raises OSError when it cannot."""
    where = folder(rules_path)
    if not _private(where, create=True):
        raise PermissionError(f"{where} is not a private folder of this user; not keeping the rules there")
    target = where / FILE_NAME
    data = text.encode("utf-8", "surrogateescape")
    try:
        if target.read_bytes() == data:
            return  # every worker boots with the same rules: write once
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=where, prefix=".last-good.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read(rules_path: str | os.PathLike) -> str | None:
    """The last good rules text of `rules_path`, or None when there is none (or it is not private)."""
    where = folder(rules_path)
    if not _private(where, create=False):
        return None
    try:
        fd = os.open(where / FILE_NAME, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_uid != os.getuid():
            return None
        return f.read().decode("utf-8", "surrogateescape")
