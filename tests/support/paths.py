"""Where the project is, and writing a file the way an editor saves it."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


def atomic_write(path: Path, text: str) -> None:
    """Replace a file in one step, as an editor's save does (a watcher never sees it half written)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
