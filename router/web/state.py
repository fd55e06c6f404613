"""What the service serves from: the current rules (swapped whole on reload), this process's
store, and, where this process delivers too, its delivery workers."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from router import logs, metrics
from router.config import lastgood
from router.config.loader import load, loads
from router.config.model import Config
from router.errors import ConfigError, Problem
from router.store import Store, open_store

WATCH_INTERVAL = 2.0  # seconds between looks at the rules file


class RouterState:
    """What the app serves from: the current rules (swapped whole on reload), this process's store,
    and, where this process delivers too, its delivery workers."""

    def __init__(self, config: Config, rules_path: Path | None = None, *, stale_reason: str | None = None):
        self.config = config
        self.rules_path = Path(rules_path).resolve() if rules_path else None
        self.stale_reason = stale_reason  # set when serving the last good rules because the file is invalid
        self._store: Store | None = None
        self._store_pid = 0
        self._lock = threading.Lock()
        self.deliverer: Any = None
        self._watcher: threading.Thread | None = None
        self._watched = self._file_stamp()

    @property
    def store(self) -> Store:
        """This process's store (a forked worker opens its own: connections do not survive a fork)."""
        store = self._store
        if store is None or self._store_pid != os.getpid():
            with self._lock:
                if self._store is None or self._store_pid != os.getpid():
                    settings = self.config.settings
                    self._store = open_store(settings.store, settings.durability)
                    self._store_pid = os.getpid()
                store = self._store
        return store

    # ------------------------------------------------------------------ delivery

    def start_delivery(self) -> None:
        """Run delivery workers in this process (each gunicorn worker, or `router worker`)."""
        from router.delivery import Deliverer

        if self.deliverer is not None and self.deliverer.alive() and self._store is not None \
                and self._store_pid == os.getpid():
            return
        self.deliverer = Deliverer(lambda: self.config, lambda: self.store).start()

    def stop_delivery(self, grace: float = 10.0) -> None:
        if self.deliverer is not None and self._store is not None and self._store_pid == os.getpid():
            self.deliverer.stop(grace)

    # ------------------------------------------------------------------ reload

    def reload(self) -> bool:
        """Load the rules file again; keep the current rules when it is invalid."""
        if self.rules_path is None:
            return False
        self._watched = self._file_stamp()
        try:
            new = load(self.rules_path)
        except ConfigError as exc:
            logs.error("rules reload failed; the old rules keep serving", rules=str(self.rules_path),
                       problems=[str(p) for p in exc.problems])
            metrics.reload(False)
            return False
        if str(new.settings.store) != str(self.config.settings.store):
            logs.warning("the store setting changed; it takes effect at the next restart",
                         store=str(self.config.settings.store))
            new.settings.store = self.config.settings.store
        self.config = new
        self.stale_reason = None
        logs.use_redactor(new.redactor)
        self.remember_good_rules()
        removed = self.store.dead_letter_missing_actions(new.actions)
        logs.info("rules reloaded", rules=str(self.rules_path), summary=new.summary(), dead_lettered=removed)
        metrics.reload(True)
        return True

    def remember_good_rules(self) -> None:
        if self.rules_path is not None and self.config.source_text and self.stale_reason is None:
            try:
                lastgood.save(self.rules_path, self.config.source_text)
            except OSError as exc:  # the service still serves; only the fallback is lost
                logs.warning("could not keep a copy of the rules that loaded", error=str(exc))

    def _file_stamp(self) -> tuple | None:
        if self.rules_path is None:
            return None
        try:
            st = os.stat(self.rules_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def watch(self) -> None:
        """Reload when the rules file changes (every process on its own; validated first)."""
        if self.rules_path is None or (self._watcher is not None and self._watcher.is_alive()):
            return

        def loop() -> None:
            while True:
                time.sleep(WATCH_INTERVAL)
                stamp = self._file_stamp()
                if stamp is not None and stamp != self._watched:
                    self.reload()

        self._watcher = threading.Thread(target=loop, name="router-watch", daemon=True)
        self._watcher.start()


def recover(rules_path: Path, problems: list[Problem]) -> Config | None:
    """The last rules that loaded from this file (see router.config.lastgood), or None.

    Used when a worker starts (after a reload) and finds the file invalid: it keeps serving the
    old rules instead of failing to boot and taking the service down.
    """
    rules_path = rules_path.resolve()
    try:
        text = lastgood.read(rules_path)
        if text is None:
            return None
        return loads(text, str(rules_path), base_dir=rules_path.parent)
    except Exception:
        return None
