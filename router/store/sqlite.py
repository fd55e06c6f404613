"""The SQLite back end: events, delivery jobs, attempts and dead letters in one file, on one host.

Durability: WAL mode. With `durability: fsync` (the default) an event is answered 200 only after
the WAL holding its commit has been fsynced (WalSync: SQLite commits with `synchronous=NORMAL`,
then the WAL file is synced outside the write lock, which is as durable as `synchronous=FULL`
without holding every other writer up for the fsync). To keep that fast, concurrent ingests in one
process are committed together (group commit, see _GroupCommitter): one transaction, one fsync,
and one multi-row INSERT per table for the whole batch, and a batch commits while the previous
one waits for its fsync. Should one event of a batch fail, the batch is
written again with each event in its own savepoint, so one bad event cannot spoil its neighbours.

Delivery bookkeeping (claims, attempts, outcomes) runs on its own connection with
`synchronous=NORMAL`: after a power cut it can at worst forget that a delivery succeeded, which
means one more delivery (at least once), never a lost event.

Jobs: `state` is pending, delivered or dead. A claim sets `lease_owner` and pushes `next_ts` to the
end of the lease, so a job whose worker died becomes due again by itself when the lease runs out;
outcomes are written only by the lease's owner.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from router.errors import StoreError, StoreUnavailable
from router.model import IngestResult, Job, JobState, NewEvent, Outcome, StoredEvent, Verdict, iso_utc, now_ts
from router.store.base import (
    AttemptRow,
    Cursor,
    DeadFilter,
    DeadSummary,
    EventFilter,
    EventSummary,
    JobRow,
    Page,
    QueueGauges,
    attempt_view,
    dead_view,
    json_literal,
    json_path_steps,
    payload_view,
)
from router.store.group import BatchSubmit, refusals_named
from router.store.group import Waiter as _Waiter
from router.store.rows import dead_match, event_match, stored_event

SCHEMA_VERSION = 3  # 2: no rules snapshot in `meta`; 3: attempts keep the first bytes of the answer
ROWS_PER_INSERT = 64  # rows per multi-row INSERT of a batch (a statement of its own per count, cached)
BUSY_TIMEOUT_MS = 5000
INGEST_BUSY_TIMEOUT_MS = 2000
PRUNE_CHUNK = 500  # events looked at per prune transaction (see SqliteStore.prune)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    received_at TEXT NOT NULL,
    received_ts REAL NOT NULL,
    headers TEXT NOT NULL,
    query TEXT NOT NULL,
    content_type TEXT,
    body BLOB NOT NULL,
    matched TEXT NOT NULL,
    dedupe_key TEXT
);
CREATE INDEX IF NOT EXISTS events_received ON events (received_ts);
CREATE TABLE IF NOT EXISTS dedupe (
    provider TEXT NOT NULL,
    key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    matched TEXT NOT NULL,
    expires_ts REAL NOT NULL,
    PRIMARY KEY (provider, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    action TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    round_start INTEGER NOT NULL DEFAULT 0,
    next_ts REAL NOT NULL,
    lease_owner TEXT,
    created_ts REAL NOT NULL,
    updated_ts REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_ts);
CREATE INDEX IF NOT EXISTS jobs_event ON jobs (event_id);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL,
    n INTEGER NOT NULL,
    at_ts REAL NOT NULL,
    status INTEGER,
    error TEXT,
    latency_ms REAL,
    retryable INTEGER,
    response TEXT,
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rates (action TEXT PRIMARY KEY, next_ts REAL NOT NULL) WITHOUT ROWID;
"""


def not_writable(path: Path) -> str | None:
    """Why this process cannot write the store's files (its folder, the database, its WAL and
    shared-memory index), or None when it can."""
    for target, mode in ((path.parent, os.W_OK | os.X_OK), (path, os.R_OK | os.W_OK),
                         (Path(f"{path}-wal"), os.R_OK | os.W_OK), (Path(f"{path}-shm"), os.R_OK | os.W_OK)):
        if target.exists() and not os.access(target, mode):
            return f"{target} is not writable"
    return None


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with `synchronous=NORMAL`: commits are not synced here (see WalSync).

    Refused (sqlite3.OperationalError) while the store's files are not writable, rather than
    opened read-only as SQLite would: a read-only connection stays read-only after the files
    are writable again, and while one is open every new connection of the process shares its
    read-only WAL index, so one worker that (re)started in that window would fail every write
    until it was restarted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    reason = not_writable(path)
    if reason is not None:
        raise sqlite3.OperationalError(f"attempt to write a readonly database: {reason}")
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False,
                           cached_statements=4 * ROWS_PER_INSERT)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = OFF")
    return conn


def init_schema(conn: sqlite3.Connection) -> None:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and row[0] == str(SCHEMA_VERSION):
            return  # nothing to write: a store locked by someone else still opens
    except sqlite3.OperationalError:
        pass  # no meta table yet
    # version 1 kept a copy of the rules file in `meta`, inline secrets and all (router.config.lastgood
    # keeps it now): delete it with its bytes overwritten, not merely unlinked from the b-tree
    secure_delete = conn.execute("PRAGMA secure_delete").fetchone()[0]
    conn.execute("PRAGMA secure_delete = ON")
    with _transaction(conn):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("DELETE FROM meta WHERE key LIKE 'last_good_rules:%'")
        if "response" not in {row[1] for row in conn.execute("PRAGMA table_info(attempts)")}:
            conn.execute("ALTER TABLE attempts ADD COLUMN response TEXT")  # a store of version 1 or 2
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    conn.execute(f"PRAGMA secure_delete = {int(secure_delete)}")  # this connection may live on (pruning stays fast)
    try:  # and out of the WAL, whose older frames still hold it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error:
        pass  # busy readers: the next checkpoint moves the overwritten pages in


class WriteLock:
    """Serialises the writers of one store: a thread lock within a process, flock across processes.

    SQLite makes a writer that finds the database locked sleep and poll (1, 2, 5, 10 ... 100 ms),
    so two processes committing fsynced transactions in turn would wait far longer than the
    fsync itself. A blocked flock wakes the moment the lock is released. The kernel releases it
    when a process dies, even by kill -9.
    """

    def __init__(self, path: Path):
        self.path = Path(str(path) + ".lock")
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            self._pid = os.getpid()
        return self._fd

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            fcntl.flock(self._file(), fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def acquire_within(self, seconds: float) -> bool:
        """Take the lock if it can be had within `seconds` (False, not holding it, if not). flock has
        no timeout, so the file lock is tried without blocking, again and again at growing intervals."""
        if not self._thread_lock.acquire(timeout=seconds):
            return False
        now = time.monotonic()
        deadline, brisk = now + seconds, now + 0.002
        try:
            while True:
                try:
                    fcntl.flock(self._file(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    now = time.monotonic()
                    if now >= deadline:
                        self._thread_lock.release()
                        return False
                    # an ordinary commit holds it a few hundred µs: look often for the first 2 ms
                    time.sleep(0.00002 if now < brisk else 0.0005)
        except BaseException:
            self._thread_lock.release()
            raise


class WalSync:
    """fdatasync of the store's WAL file, called after a commit and outside the write lock.

    With `synchronous=NORMAL` a WAL commit is written but not synced; syncing the WAL file after
    COMMIT makes that transaction (and every earlier one) as durable as `synchronous=FULL` would,
    but the 0.4+ ms wait no longer holds the lock that every other writer needs, and commits that
    finish while a sync runs share the next one. Frames moved into the database by a checkpoint in the meantime are
    safe too: a checkpoint syncs the WAL before and the database after. A WAL file seen for the
    first time (new inode) also has its folder synced, so its directory entry is durable.
    """

    def __init__(self, db_path: Path):
        self.path = str(db_path) + "-wal"
        self._fd: int | None = None
        self._ino = 0
        self._pid = 0
        self._retired: list[int] = []  # fds of earlier WAL files (closed with the store)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._calls = 0  # sync() calls so far; each call's number is its ticket
        self._synced = 0  # every call up to this ticket is on disk
        self._syncing = False

    def sync(self) -> None:
        """Return once everything written to the WAL before this call is on disk.

        Concurrent callers share syncs: a caller that finds a sync running waits for it to end and
        then, unless a sync that began after its call has covered it, runs the next one itself."""
        with self._cond:
            self._calls += 1
            ticket = self._calls
            while self._syncing:
                self._cond.wait()
            if self._synced >= ticket:  # a sync that began after this call has covered it
                return
            self._syncing, upto = True, self._calls
        done = False
        try:
            self._fdatasync()
            done = True
        finally:
            with self._cond:
                self._syncing = False
                if done:
                    self._synced = max(self._synced, upto)
                self._cond.notify_all()

    def _fdatasync(self) -> None:
        ino = os.stat(self.path).st_ino
        if self._fd is None or self._ino != ino or self._pid != os.getpid():
            if self._fd is not None and self._pid == os.getpid():
                self._retired.append(self._fd)
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            self._ino, self._pid = os.fstat(self._fd).st_ino, os.getpid()
            folder = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        os.fdatasync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for fd in self._retired + ([self._fd] if self._fd is not None else []):
                    os.close(fd)
            self._fd, self._retired = None, []


MAX_SOCKET_PATH = 100  # a Unix socket's path must fit in sun_path (108 bytes on Linux)


# seconds between two wake-up notices from one process: less than the delivery's GATHER, which it
# waits after a wake-up before it claims, so a commit just after a notice is claimed with it
NOTIFY_DEBOUNCE = 0.005


class WakeChannel:
    """Tells a delivery process on this host, at once, that another process committed new jobs.

    A Unix datagram socket beside the store: the one delivery process listening binds it, and
    every ingest that created jobs sends it one byte (non-blocking; a full queue or nobody
    listening costs nothing and loses nothing, since the deliverer also polls). PostgreSQL does
    the same with LISTEN/NOTIFY across hosts."""

    def __init__(self, db_path: Path):
        # in a private folder of the system's temporary directory, one per store (like the metrics'),
        # so the path is short enough for a socket whatever the store's, and the store's folder holds data only
        digest = hashlib.sha256(str(Path(db_path).resolve()).encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / f"router-wake-{os.getuid()}-{digest}"
        path = str(folder / "wake")
        self.folder = folder
        self.path = path if len(path) <= MAX_SOCKET_PATH else None
        self._sender: socket.socket | None = None
        self._sender_pid = 0
        self._sent = 0.0  # when this process last sent a notice
        self._listener: socket.socket | None = None

    def notify(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._sent < NOTIFY_DEBOUNCE:
            return  # the listener woken by the last notice gathers for longer than this before it claims
        self._sent = now
        if self._sender is None or self._sender_pid != os.getpid():
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
            self._sender_pid = os.getpid()
        try:
            self._sender.sendto(b"!", self.path)
        except OSError:
            pass  # nobody listens, or it has enough wake-ups queued already

    def listen(self, wake: Callable[[], None]) -> bool:
        """Bind the channel and call `wake` for every notice, in a thread; False when another
        process listens already (it delivers; this one polls)."""
        if self.path is None or self._listener is not None:
            return False
        try:
            self.folder.mkdir(mode=0o700, exist_ok=True)
            st = os.lstat(self.folder)
        except OSError:
            return False
        if st.st_uid != os.getuid() or st.st_mode & 0o077 or not stat.S_ISDIR(st.st_mode):
            return False  # not our own private folder: poll rather than listen where others can reach
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(self.path)
            return False  # somebody is listening
        except OSError:
            pass
        finally:
            probe.close()
        try:
            os.unlink(self.path)  # a socket left by a listener that died
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            listener.bind(self.path)
        except OSError:
            listener.close()
            return False
        self._listener = listener

        def loop() -> None:
            while True:
                try:
                    listener.recv(4096)
                except OSError:
                    return  # closed
                wake()

        threading.Thread(target=loop, name="router-wake", daemon=True).start()
        return True

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            listener.close()


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT (under the store's write lock, when given), or ROLLBACK on any error."""

    def __init__(self, conn: sqlite3.Connection, lock: WriteLock | None = None):
        self.conn = conn
        self.lock = lock

    def __enter__(self) -> sqlite3.Connection:
        if self.lock is not None:
            self.lock.__enter__()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            if self.lock is not None:
                self.lock.__exit__()
            raise
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            else:
                self._rollback()
        finally:
            if self.lock is not None:
                self.lock.__exit__()

    def _rollback(self) -> None:
        try:
            self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


_EVENTS_INSERT = ("INSERT INTO events (id, provider, received_at, received_ts, headers, query, content_type, body,"
                  " matched, dedupe_key) VALUES ", "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_JOBS_INSERT = ("INSERT INTO jobs (event_id, rule, action, state, attempts, next_ts, created_ts, updated_ts) VALUES ",
                "(?, ?, ?, 'pending', 0, ?, ?, ?)")
_INSERT_SQL: dict[tuple[str, int], str] = {}


class _Rows:
    """An event's rows, built in the request's own thread before the store's write lock is taken."""

    __slots__ = ("event", "event_row", "job_rows")

    def __init__(self, e: NewEvent):
        self.event = e
        self.event_row = (e.id, e.provider, e.received_at, e.received_ts, json.dumps(e.headers),
                          json.dumps(e.query) if e.query else "{}", e.content_type, e.body, _matched_json(e.matched),
                          e.dedupe_key)
        ts = e.received_ts
        self.job_rows = [(e.id, rule, action, ts, ts, ts) for rule, action in e.jobs]


_MATCHED: dict[tuple[str, ...], str] = {}  # the rules an event matched, as JSON: the same few lists again and again


def _matched_json(matched: list[str]) -> str:
    key = tuple(matched)
    text = _MATCHED.get(key)
    if text is None:
        if len(_MATCHED) >= 1024:
            _MATCHED.clear()
        text = _MATCHED[key] = json.dumps(matched)
    return text


def _insert_rows(conn: sqlite3.Connection, insert: tuple[str, str], rows: list[tuple]) -> None:
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start:start + ROWS_PER_INSERT]
        sql = _INSERT_SQL.get((insert[0], len(chunk)))
        if sql is None:
            sql = _INSERT_SQL[(insert[0], len(chunk))] = insert[0] + ", ".join([insert[1]] * len(chunk))
        conn.execute(sql, [value for row in chunk for value in row])


F = TypeVar("F", bound=Callable[..., Any])


def _contention(exc: BaseException) -> bool:
    """The database was locked by another writer (the work may be tried again), not a fault."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _translated(method: F) -> F:
    """sqlite3's errors (and the OS's) leave the store as StoreError, saying what failed; a fault
    other than contention makes this process's connections be opened again (see _fault)."""

    @functools.wraps(method)
    def wrapper(self: SqliteStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:
            self._fault(exc)
            raise StoreError(f"{method.__name__}: {type(exc).__name__}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


_JOB_COLUMNS = ("id, event_id, rule, action, state, attempts, round_start, next_ts, lease_owner, created_ts,"
                " updated_ts, last_status, last_error")


def _dead_filter(action: str | None, since: float | None) -> tuple[str, list[Any]]:
    where: list[str] = ["state = 'dead'"]
    args: list[Any] = []
    if action is not None:
        where.append("action = ?")
        args.append(action)
    if since is not None:
        where.append("updated_ts >= ?")
        args.append(since)
    return " AND ".join(where), args


_VERBATIM = re.compile(r"^[A-Za-z0-9 _.,:;@#%+=-]+$")
_BROWSE_WINDOW = 1000  # events per window of a filtered listing (the time budget is checked after each)


def _sqlite_json_path(steps: list[str | int]) -> str:
    return "$" + "".join(f"[{s}]" if isinstance(s, int) else '."' + s.replace('"', '""') + '"' for s in steps)


def _event_match(filt: EventFilter) -> tuple[list[str], list[Any]]:
    """The event filters no index answers (SQL terms over `events`, and their arguments)."""
    where: list[str] = []
    args: list[Any] = []
    if filt.provider:
        where.append("provider = ?")
        args.append(filt.provider)
    if filt.rule:
        # instr is a cheap first look; json_each makes it exact
        where.append("instr(matched, ?) > 0 AND EXISTS (SELECT 1 FROM json_each(events.matched) WHERE value = ?)")
        args += [json.dumps(filt.rule), filt.rule]
    if filt.state:
        where.append("EXISTS (SELECT 1 FROM jobs WHERE jobs.event_id = events.id AND jobs.state = ?)")
        args.append(filt.state)
    if filt.text:
        where.append("instr(body, ?) > 0")
        args.append(filt.text.encode("utf-8"))
    if filt.json_path:
        path = _sqlite_json_path(json_path_steps(filt.json_path))
        value = json_literal(filt.json_value or "")
        if isinstance(value, str) and _VERBATIM.match(value):
            # such a string is in the raw bytes as it is (no JSON writer escapes these characters), so a
            # byte search rules out most events before any JSON is parsed
            where.append("instr(body, ?) > 0")
            args.append(value.encode("ascii"))
        doc = "CASE WHEN json_valid(CAST(body AS TEXT)) THEN CAST(body AS TEXT) END"
        if isinstance(value, bool) or value is None:
            where.append(f"json_type({doc}, ?) = ?")
            args += [path, "null" if value is None else ("true" if value else "false")]
        elif isinstance(value, (int, float)):
            where.append(f"json_type({doc}, ?) IN ('integer', 'real') AND json_extract({doc}, ?) = ?")
            args += [path, path, value]
        else:
            where.append(f"json_type({doc}, ?) = 'text' AND json_extract({doc}, ?) = ?")
            args += [path, path, value]
    return where, args


def _where(terms: list[str]) -> str:
    return ("WHERE " + " AND ".join(terms)) if terms else ""



class SqliteStore:
    """One per process; safe to share between threads."""

    backend = "sqlite"

    def __init__(self, path: Path, durability: str = "fsync"):
        self.path = Path(path)
        self.location = str(self.path)
        self.durability = durability
        self.pid = os.getpid()
        # durability fsync: SQLite commits without syncing, and WalSync syncs the WAL afterwards, out of the write lock
        self.wal_sync = WalSync(self.path)
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write_lock = WriteLock(self.path)
        self.wake = WakeChannel(self.path)
        self._generation = 0  # bumped by a fault: every connection of this process is opened again
        self._schema_pending = True
        if self.path.exists() and not_writable(self.path):
            pass  # a read-only store still opens (it serves 503s); the schema is checked once it can be written
        else:
            self._connect().close()
        self._committer: _GroupCommitter | None = None
        self._committer_lock = threading.Lock()

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        conn = connect(self.path)
        if self._schema_pending:
            try:
                init_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._schema_pending = False
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (ingest has its own, in _GroupCommitter)."""
        return self._thread_conn("conn")

    def _thread_conn(self, slot: str) -> sqlite3.Connection:
        """This thread's connection of that name, opened again in a forked child and after a fault."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, slot, None)
        opened_in = getattr(local, slot + "_in", None)  # (pid, generation) it was opened in
        if conn is None or opened_in != (os.getpid(), self._generation):
            if conn is not None and opened_in is not None and opened_in[0] == os.getpid():
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            setattr(local, slot, None)
            conn = self._connect()
            setattr(local, slot, conn)
            setattr(local, slot + "_in", (os.getpid(), self._generation))
        return conn

    def _fault(self, exc: BaseException) -> None:
        """After a failure that is not contention (a read-only file, an I/O error), open every
        connection again before its next use: one opened in a bad moment must not outlive it."""
        if not _contention(exc):
            self._generation += 1

    # ------------------------------------------------------------------ ingest

    def ingest(self, event: NewEvent, timeout: float = 15.0) -> IngestResult:
        """Commit an event and its jobs (or find it a duplicate); raise StoreUnavailable on failure."""
        with self._committer_lock:
            if self._committer is None or not self._committer.alive(os.getpid()):
                self._committer = _GroupCommitter(self)
            committer = self._committer
        result = committer.submit(event, timeout)
        if result.deliveries:
            self.wake.notify()
        return result

    def ingest_many(self, events: Sequence[NewEvent], timeout: float = 15.0) -> list[IngestResult | Exception]:
        """Commit these events (with any other thread's) in as few transactions as the batch allows;
        each result is the event's IngestResult or the StoreUnavailable that refused it."""
        if not events:
            return []
        with self._committer_lock:
            if self._committer is None or not self._committer.alive(os.getpid()):
                self._committer = _GroupCommitter(self)
            committer = self._committer
        results = committer.submit_many([_Waiter(_Rows(e)) for e in events], timeout)
        if any(isinstance(r, IngestResult) and r.deliveries for r in results):
            self.wake.notify()
        return results

    def ingest_now(self, events: Sequence[NewEvent], wait: float) -> list[IngestResult | Exception] | None:
        """ingest_many for a caller that must not block for long (an event loop): committed and
        synced at once, or None with nothing committed when the write lock (this store's, or
        SQLite's own, held by a program that does not take ours) cannot be had within `wait` seconds.

        A commit here is local work: the rows, one transaction and the WAL's sync. It takes no part
        in the group commit of this process's other threads; their commits and this one share the
        write lock, and a sync that one of them runs covers the others' commits before it."""
        if not events:
            return []
        rows = [_Rows(e) for e in events]
        if not self.write_lock.acquire_within(wait):
            return None
        results: list[IngestResult | Exception]
        try:
            conn = self._now_conn(wait)
            results = self._ingest_batch(conn, lambda: rows, lock_held=True)
        except (sqlite3.Error, OSError) as exc:
            if _contention(exc):
                return None  # SQLite's own lock: rolled back, nothing of it was written
            results = [exc] * len(rows)
            self._fault(exc)
        finally:
            self.write_lock.__exit__()
        results = self._durable(results)
        if any(isinstance(r, IngestResult) and r.deliveries for r in results):
            self.wake.notify()
        return refusals_named(results)

    def _durable(self, results: list[IngestResult | Exception]) -> list[IngestResult | Exception]:
        """A committed batch's results once its WAL is synced (with durability fsync), or the sync's
        error for each: committed but perhaps not on disk, so a 503 and the provider retries."""
        if self.durability == "fsync" and any(isinstance(r, IngestResult) for r in results):
            try:
                self.wal_sync.sync()
            except OSError as exc:
                return [exc] * len(results)
        return results

    def _now_conn(self, wait: float) -> sqlite3.Connection:
        """This thread's connection for ingest_now: SQLite's own lock waited for `wait` at most."""
        conn = self._thread_conn("now_conn")
        if getattr(self._local, "now_wait", None) != (conn, wait):
            conn.execute(f"PRAGMA busy_timeout = {max(1, int(wait * 1000))}")
            self._local.now_wait = (conn, wait)
        return conn

    def _ingest_batch(self, conn: sqlite3.Connection, take: Callable[[], Sequence[_Rows]], *,
                      lock_held: bool = False) -> list[IngestResult | Exception]:
        """Commit the events that `take` hands over in one transaction; an event that fails alone
        does not fail the others.

        `take` is called once the write lock is held, so a batch holds every event that arrived
        while this process waited for the lock. The batch is first written straight through; only
        when that fails, and there is more than one event, is it written again with each event in
        its own savepoint, so the common case pays no savepoints."""
        held = None if lock_held else self.write_lock
        events: Sequence[_Rows] = ()
        try:
            with _transaction(conn, held):
                events = take()
                return self._ingest_many(conn, events)
        except sqlite3.Error:
            if len(events) <= 1:
                raise
        results: list[IngestResult | Exception] = []
        with _transaction(conn, held):
            for event in events:
                conn.execute("SAVEPOINT one")
                try:
                    results.append(self._ingest_one(conn, event))
                    conn.execute("RELEASE one")
                except sqlite3.Error as exc:
                    conn.execute("ROLLBACK TO one")
                    conn.execute("RELEASE one")
                    results.append(exc)
        return results

    @classmethod
    def _ingest_many(cls, conn: sqlite3.Connection, events: Sequence[_Rows]) -> list[IngestResult | Exception]:
        """The events of a batch in a few multi-row INSERTs: each statement is one call into SQLite,
        which lets go of the GIL once, not once per row, while this thread holds the write lock."""
        results: list[IngestResult | Exception] = []
        plain: list[_Rows] = []
        for rows in events:
            e = rows.event
            if e.dedupe_key is not None:
                results.append(cls._ingest_one(conn, rows))  # these need a look at the store first
            else:
                plain.append(rows)
                results.append(IngestResult(e.id, e.matched, len(e.jobs)))
        _insert_rows(conn, _EVENTS_INSERT, [r.event_row for r in plain])
        _insert_rows(conn, _JOBS_INSERT, [row for r in plain for row in r.job_rows])
        return results

    @staticmethod
    def _ingest_one(conn: sqlite3.Connection, rows: _Rows) -> IngestResult:
        e = rows.event
        if e.dedupe_key is not None:
            row = conn.execute(
                "SELECT event_id, matched FROM dedupe WHERE provider = ? AND key = ? AND expires_ts > ?",
                (e.provider, e.dedupe_key, e.received_ts),
            ).fetchone()
            if row is not None:
                return IngestResult(row[0], json.loads(row[1]), 0, duplicate=True)
            conn.execute(
                "INSERT OR REPLACE INTO dedupe (provider, key, event_id, matched, expires_ts) VALUES (?, ?, ?, ?, ?)",
                (e.provider, e.dedupe_key, e.id, json.dumps(e.matched), e.received_ts + e.dedupe_window),
            )
        _insert_rows(conn, _EVENTS_INSERT, [rows.event_row])
        _insert_rows(conn, _JOBS_INSERT, rows.job_rows)
        return IngestResult(e.id, e.matched, len(e.jobs))

    def writable(self) -> bool:
        """Are the files writable, and can we take the write lock right now?

        (BEGIN IMMEDIATE alone proves nothing: SQLite grants it to a read-only connection too, and
        a connection opened before a chmod still writes through its file descriptor.)"""
        if not_writable(self.path):
            return False
        try:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.Error as exc:
            self._fault(exc)
            return False

    def readiness(self, min_free_bytes: int) -> str:
        try:
            if not self.writable():
                return "not writable"
            # room for one more event of the largest size and its share of the WAL, or a full disk
            free = shutil.disk_usage(self.path.parent).free
        except OSError as exc:
            return f"unavailable: {type(exc).__name__}"
        if free < min_free_bytes:
            return f"disk full: {free} bytes free"
        return "writable"

    # ------------------------------------------------------------------ delivery

    @_translated
    def claim(
        self,
        owner: str,
        limit: int,
        leases: dict[str, float],
        rates: dict[str, float],
        *,
        actions: Iterable[str] | None = None,
        now: float | None = None,
    ) -> list[Job]:
        """Lease up to `limit` due jobs. A rate-limited action gives at most one job per claim, and only
        when its shared slot (in `rates`) is free, so its pace holds across every process."""
        now = now_ts() if now is None else now
        conn = self._conn()
        claimed: list[Job] = []
        with _transaction(conn, self.write_lock):
            blocked = {a for (a,) in conn.execute("SELECT action FROM rates WHERE next_ts > ?", (now,))}
            rows = conn.execute(
                "SELECT id, event_id, rule, action, attempts, lease_owner, created_ts, round_start FROM jobs"
                " WHERE state = 'pending' AND next_ts <= ? ORDER BY next_ts LIMIT ?",
                (now, max(limit * 4, limit + len(blocked) * 8)),
            ).fetchall()
            taken_rated: set[str] = set()
            lost: list[tuple] = []
            updates: list[tuple] = []
            for job_id, event_id, rule, action, attempts, previous_owner, created_ts, round_start in rows:
                if len(claimed) >= limit:
                    break
                if action in blocked or action in taken_rated:
                    continue
                if actions is not None and action not in actions:
                    continue
                lease = leases.get(action, 25.0)
                if action in rates:
                    taken_rated.add(action)
                    conn.execute(
                        "INSERT INTO rates (action, next_ts) VALUES (?, ?)"
                        " ON CONFLICT(action) DO UPDATE SET next_ts = excluded.next_ts",
                        (action, now + 1.0 / rates[action]),
                    )
                if previous_owner is not None:
                    # the last claim never reported: its worker died or hung past the lease
                    lost.append((job_id, attempts, now, None, "worker lost the job (lease expired)", None, 1))
                updates.append((owner, now + lease, now, job_id))
                claimed.append(Job(job_id, event_id, rule, action, attempts + 1, owner, created_ts,
                                   round_start=round_start, lost_by=previous_owner))
            conn.executemany(
                "UPDATE jobs SET attempts = attempts + 1, lease_owner = ?, next_ts = ?, updated_ts = ? WHERE id = ?",
                updates,
            )
            if lost:
                conn.executemany(
                    "INSERT OR IGNORE INTO attempts (job_id, n, at_ts, status, error, latency_ms, retryable)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    lost,
                )
        if claimed:
            self._attach_events(conn, claimed)
        return claimed

    def _attach_events(self, conn: sqlite3.Connection, jobs: list[Job]) -> None:
        ids = sorted({j.event_id for j in jobs})
        events: dict[str, StoredEvent] = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk: chunk + 500]
            for row in conn.execute(
                "SELECT id, provider, received_at, headers, query, content_type, body FROM events"
                f" WHERE id IN ({','.join('?' * len(part))})",
                part,
            ):
                events[row[0]] = stored_event(row)
        for job in jobs:
            job.event = events.get(job.event_id)

    @_translated
    def finish(self, outcomes: Sequence[Outcome]) -> int:
        """Record attempts and move jobs on; only the lease owner's word counts. Returns how many applied."""
        if not outcomes:
            return 0
        conn = self._conn()
        released = [(o.at, o.at, o.job_id, o.owner) for o in outcomes if o.verdict is Verdict.RELEASED]
        done = [o for o in outcomes if o.verdict is not Verdict.RELEASED]
        holds = [(o.action, o.hold_action_until) for o in outcomes if o.hold_action_until is not None]
        with _transaction(conn, self.write_lock):
            before = conn.total_changes
            # the attempt is kept only while the claim still holds (its owner and attempt number);
            # one statement per kind for the whole batch, checked row by row inside SQLite
            conn.executemany(
                "INSERT OR REPLACE INTO attempts (job_id, n, at_ts, status, error, latency_ms, retryable, response)"
                " SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ? AND lease_owner = ?"
                " AND state = 'pending' AND attempts = ?)",
                [(o.job_id, o.attempt, o.at, o.status, o.error, o.latency_ms, int(o.retryable), o.response, o.job_id,
                  o.owner, o.attempt) for o in done],
            )
            before = conn.total_changes
            conn.executemany(
                "UPDATE jobs SET state = ?, lease_owner = NULL, next_ts = ?, updated_ts = ?, last_status = ?,"
                " last_error = ? WHERE id = ? AND lease_owner = ? AND state = 'pending' AND attempts = ?",
                [(o.verdict.state.value, o.next_ts, o.at, o.status, o.reason or o.error, o.job_id, o.owner, o.attempt)
                 for o in done],
            )
            conn.executemany(
                "UPDATE jobs SET attempts = attempts - 1, lease_owner = NULL, next_ts = ?, updated_ts = ?"
                " WHERE id = ? AND lease_owner = ? AND state = 'pending'",
                released,
            )
            applied = conn.total_changes - before
            if holds:
                # a 429's Retry-After holds every job of the action, not just this one
                conn.executemany(
                    "INSERT INTO rates (action, next_ts) VALUES (?, ?)"
                    " ON CONFLICT(action) DO UPDATE SET next_ts = max(next_ts, excluded.next_ts)",
                    holds,
                )
        return applied

    # ------------------------------------------------------------------ operations

    @_translated
    def replay(self, ident: str, now: float | None = None) -> int:
        """Re-queue a dead job (by job id) or every dead job of an event (by event id)."""
        now = now_ts() if now is None else now
        conn = self._conn()
        with _transaction(conn, self.write_lock):
            # attempts keep counting (the history keeps every one); the schedule restarts from here
            column = "id" if ident.isdigit() else "event_id"
            cur = conn.execute(
                "UPDATE jobs SET state = 'pending', next_ts = ?, updated_ts = ?, lease_owner = NULL,"
                f" round_start = attempts WHERE {column} = ? AND state = 'dead'",
                (now, now, int(ident) if ident.isdigit() else ident),
            )
            return cur.rowcount

    @_translated
    def dead_letter_missing_actions(self, known: Iterable[str], now: float | None = None) -> int:
        """Jobs whose action no longer exists (after a reload) become dead letters that say so."""
        now = now_ts() if now is None else now
        known = list(known)
        conn = self._conn()
        with _transaction(conn, self.write_lock):
            marks = ",".join("?" * len(known)) or "''"
            cur = conn.execute(
                "UPDATE jobs SET state = 'dead', lease_owner = NULL, updated_ts = ?, last_error = ?"
                f" WHERE state = 'pending' AND action NOT IN ({marks})",
                (now, "action removed from the rules file", *known),
            )
            return cur.rowcount

    @_translated
    def prune(self, retention: float, dead_retention: float | None, now: float | None = None) -> tuple[int, int]:
        """Delete delivered jobs (and events with nothing left to deliver) older than `retention`;
        dead letters only when `dead_retention` is set.

        In many short transactions of PRUNE_CHUNK events each, walking the events from the oldest
        by their index, so the write lock that every ingest needs is never held for long (one
        statement over the whole store held it for seconds on a large one, and scanned every
        attempt ever kept). A job never outdates its event (its last update comes after the event
        arrived), so the events older than the later of the two cutoffs hold every job there is to prune."""
        now = now_ts() if now is None else now
        cutoff = now - retention
        dead_cutoff = now - dead_retention if dead_retention is not None else None
        # a dead letter may be due before a delivered job is (a dead_letter_retention shorter than retention)
        walk_to = max(cutoff, dead_cutoff) if dead_cutoff is not None else cutoff
        conn = self._conn()
        events = jobs = 0
        after: tuple[float, int] = (float("-inf"), 0)
        while True:
            with _transaction(conn, self.write_lock):
                # (received_ts, rowid) is the index's own order: no sort, and each chunk starts where the last ended
                rows = conn.execute(
                    "SELECT received_ts, rowid, id FROM events WHERE received_ts < ? AND (received_ts, rowid) > (?, ?)"
                    " ORDER BY received_ts, rowid LIMIT ?", (walk_to, after[0], after[1], PRUNE_CHUNK),
                ).fetchall()
                if not rows:
                    break
                after = (rows[-1][0], rows[-1][1])
                ids = [r[2] for r in rows]
                marks = ",".join("?" * len(ids))
                doomed = [job_id for job_id, state, updated in conn.execute(
                    f"SELECT id, state, updated_ts FROM jobs WHERE event_id IN ({marks})", ids)
                    if (state == "delivered" and updated < cutoff)
                    or (state == "dead" and dead_cutoff is not None and updated < dead_cutoff)]
                for start in range(0, len(doomed), 500):
                    part = doomed[start:start + 500]
                    job_marks = ",".join("?" * len(part))
                    conn.execute(f"DELETE FROM attempts WHERE job_id IN ({job_marks})", part)
                    jobs += conn.execute(f"DELETE FROM jobs WHERE id IN ({job_marks})", part).rowcount
                events += conn.execute(
                    f"DELETE FROM events WHERE id IN ({marks}) AND received_ts < ?"
                    " AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.event_id = events.id)", (*ids, cutoff),
                ).rowcount
            if len(rows) < PRUNE_CHUNK:
                break
        with _transaction(conn, self.write_lock):
            conn.execute("DELETE FROM dedupe WHERE expires_ts < ?", (now,))
        return events, jobs

    @_translated
    def replay_dead(self, *, action: str | None = None, since: float | None = None) -> int:
        """Re-queue every dead job (of `action`, dead since `since`)."""
        now = now_ts()
        where, args = _dead_filter(action, since)
        conn = self._conn()
        with _transaction(conn, self.write_lock):
            return conn.execute(
                "UPDATE jobs SET state = 'pending', next_ts = ?, updated_ts = ?, lease_owner = NULL,"
                f" round_start = attempts WHERE {where}", (now, now, *args),
            ).rowcount

    @_translated
    def count_dead(self, *, action: str | None = None, since: float | None = None) -> int:
        where, args = _dead_filter(action, since)
        return self._conn().execute(f"SELECT count(*) FROM jobs WHERE {where}", args).fetchone()[0]

    def on_new_jobs(self, wake: Callable[[], None]) -> None:
        """Another process's new jobs wake this one (one listener per store and host; others poll)."""
        self.wake.listen(wake)

    def clock(self) -> float:
        return now_ts()

    @_translated
    def backup(self, destination: Path) -> str:
        """SQLite's online backup: a consistent copy while the router runs."""
        target = sqlite3.connect(str(destination))
        try:
            with target:
                self._conn().backup(target, pages=1024)
        finally:
            target.close()
        return f"backed up {self.path} to {destination} ({destination.stat().st_size:,} bytes)"

    # ------------------------------------------------------------------ read models

    @_translated
    def queue_gauges(self) -> QueueGauges:
        conn = self._conn()
        gauges = QueueGauges(now=now_ts())
        for action, state, count in conn.execute(
            "SELECT action, state, count(*) FROM jobs WHERE state IN ('pending', 'dead') GROUP BY action, state"
        ):
            (gauges.pending if state == JobState.PENDING.value else gauges.dead)[action] = count
        row = conn.execute("SELECT min(created_ts) FROM jobs WHERE state = 'pending'").fetchone()
        gauges.oldest_pending_ts = row[0] if row else None
        return gauges

    @_translated
    def list_events(self, filt: EventFilter) -> list[dict[str, Any]]:
        conn = self._conn()
        clause, args = event_match(filt, "?", 'EXISTS (SELECT 1 FROM json_each(events.matched) WHERE value = ?)')
        rows = conn.execute(
            f"SELECT id, received_at, provider, matched FROM events {clause} ORDER BY received_ts DESC, id DESC LIMIT ?",
            (*args, filt.limit),
        ).fetchall()
        out = []
        for event_id, received_at, prov, matched in rows:
            states = dict(conn.execute(
                "SELECT state, count(*) FROM jobs WHERE event_id = ? GROUP BY state ORDER BY state", (event_id,)
            ).fetchall())
            out.append({"event_id": event_id, "received_at": received_at, "provider": prov,
                        "matched": json.loads(matched), "deliveries": states})
        return out

    @_translated
    def show_event(self, event_id: str) -> dict[str, Any] | None:
        conn = self._conn()
        row = conn.execute(
            "SELECT id, provider, received_at, headers, query, content_type, body, matched, dedupe_key"
            " FROM events WHERE id = ?", (event_id,),
        ).fetchone()
        if row is None:
            return None
        deliveries = []
        for job in self.jobs(event_id=event_id):
            deliveries.append({
                "job_id": job.id, "rule": job.rule, "action": job.action, "state": job.state,
                "attempts": job.attempts,
                "next_attempt_at": iso_utc(job.next_ts) if job.state == JobState.PENDING.value else None,
                "last_status": job.last_status, "last_error": job.last_error,
                "history": [attempt_view(a) for a in self.attempts(job.id)],
            })
        return {
            "event_id": row[0], "provider": row[1], "received_at": row[2], "headers": json.loads(row[3]),
            "query": json.loads(row[4]), "content_type": row[5], "matched": json.loads(row[7]),
            "dedupe_key": row[8], "payload": payload_view(bytes(row[6])), "deliveries": deliveries,
        }

    @_translated
    def list_dead(self, *, action: str | None, limit: int) -> list[dict[str, Any]]:
        where, args = ("AND action = ?", [action]) if action else ("", [])
        rows = self._conn().execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = 'dead' {where} ORDER BY updated_ts DESC, id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [dead_view(JobRow(*r), [attempt_view(a) for a in self.attempts(r[0])]) for r in rows]

    @_translated
    def event(self, event_id: str) -> StoredEvent | None:
        row = self._conn().execute(
            "SELECT id, provider, received_at, headers, query, content_type, body FROM events WHERE id = ?",
            (event_id,),
        ).fetchone()
        return stored_event(row) if row else None

    @_translated
    def job(self, job_id: int) -> JobRow | None:
        row = self._conn().execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRow(*row) if row else None

    @_translated
    def jobs(self, *, event_id: str | None = None, action: str | None = None,
             state: str | None = None) -> list[JobRow]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("event_id", event_id), ("action", action), ("state", state)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = self._conn().execute(f"SELECT {_JOB_COLUMNS} FROM jobs {clause} ORDER BY id", args).fetchall()
        return [JobRow(*r) for r in rows]

    @_translated
    def attempts(self, job_id: int) -> list[AttemptRow]:
        rows = self._conn().execute(
            "SELECT job_id, n, at_ts, status, error, latency_ms, retryable, response FROM attempts WHERE job_id = ?"
            " ORDER BY n", (job_id,),
        ).fetchall()
        return [AttemptRow(r[0], r[1], r[2], r[3], r[4], r[5], None if r[6] is None else bool(r[6]), r[7])
                for r in rows]

    @_translated
    def counts(self) -> dict[str, int]:
        conn = self._conn()
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("events", "jobs", "attempts")}

    # ------------------------------------------------------------------ the inspector's pages

    @_translated
    def browse_events(self, filt: EventFilter, after: Cursor | None = None, *, scan: int = 100_000,
                      budget: float = 0.04, body_limit: int = 16384) -> Page:
        conn = self._conn()
        span: list[str] = []  # what the received_ts index answers
        span_args: list[Any] = []
        if filt.since is not None:
            span.append("received_ts >= ?")
            span_args.append(filt.since)
        if filt.until is not None:
            span.append("received_ts < ?")
            span_args.append(filt.until)
        rest, rest_args = _event_match(filt)
        columns = ("SELECT id, received_at, received_ts, provider, matched, CASE WHEN length(body) <= ? THEN body END,"
                   " headers FROM events")
        order = "ORDER BY received_ts DESC, id DESC"

        def older(c: Cursor | None) -> tuple[list[str], list[Any]]:
            if c is None:
                return [], []
            return ["received_ts <= ? AND (received_ts < ? OR id < ?)"], [c.ts, c.ts, c.key]

        if not rest:  # the index alone: one walk, as long as the page
            where, args = older(after)
            clause = _where(span + where)
            rows = conn.execute(f"{columns} {clause} {order} LIMIT ?",
                                (body_limit, *span_args, *args, filt.limit + 1)).fetchall()
            more = len(rows) > filt.limit
            rows = rows[: filt.limit]
            return Page(self._summaries(conn, rows), Cursor(rows[-1][2], rows[-1][0]) if more else None)

        # a filter no index answers: examine windows of the newest events until the page is full,
        # `scan` events were looked at, or `budget` seconds went by, however rare the match
        started = time.monotonic()
        found: list[Any] = []
        examined = 0
        position = after
        while True:
            window = max(1, min(_BROWSE_WINDOW, scan - examined))
            where, args = older(position)
            boundary = conn.execute(f"SELECT received_ts, id FROM events {_where(span + where)} {order} LIMIT 1 OFFSET ?",
                                    (*span_args, *args, window - 1)).fetchone()
            inside, inside_args = list(where), list(args)
            if boundary is not None:
                inside.append("received_ts >= ? AND (received_ts > ? OR id >= ?)")
                inside_args += [boundary[0], boundary[0], boundary[1]]
            need = filt.limit - len(found)
            found += conn.execute(f"{columns} {_where(span + inside + rest)} {order} LIMIT ?",
                                  (body_limit, *span_args, *inside_args, *rest_args, need + 1)).fetchall()
            examined += window
            if len(found) > filt.limit:
                rows = found[: filt.limit]
                return Page(self._summaries(conn, rows), Cursor(rows[-1][2], rows[-1][0]), scanned=examined)
            if boundary is None:
                return Page(self._summaries(conn, found), None, scanned=examined)
            position = Cursor(boundary[0], boundary[1])
            if len(found) == filt.limit:
                return Page(self._summaries(conn, found), position, scanned=examined)
            if examined >= scan or time.monotonic() - started >= budget:
                return Page(self._summaries(conn, found), position, exhausted=True, scanned=examined)

    @staticmethod
    def _summaries(conn: sqlite3.Connection, rows: list[Any]) -> list[EventSummary]:
        out = []
        for event_id, received_at, received_ts, provider, matched, body, headers in rows:
            states = dict(conn.execute(
                "SELECT state, count(*) FROM jobs WHERE event_id = ? GROUP BY state", (event_id,)).fetchall())
            last = conn.execute(
                "SELECT a.at_ts, a.status, a.error FROM jobs j JOIN attempts a ON a.job_id = j.id"
                " WHERE j.event_id = ? ORDER BY a.at_ts DESC LIMIT 1", (event_id,)).fetchone()
            last_at, last_status, last_error = last or (None, None, None)
            out.append(EventSummary(event_id, received_at, received_ts, provider, json.loads(matched), states,
                                    last_at, last_status, last_error, None if body is None else bytes(body),
                                    json.loads(headers)))
        return out

    @_translated
    def browse_dead(self, filt: DeadFilter, after: Cursor | None = None) -> Page:
        source, where, args = dead_match(filt, "?")
        if after is not None:
            where += " AND j.updated_ts <= ? AND (j.updated_ts < ? OR j.id < ?)"
            args += [after.ts, after.ts, int(after.key) if after.key.isdigit() else 0]
        # the page first, then its events' providers: a join before the sort would touch every dead letter
        rows = self._conn().execute(
            "SELECT p.id, p.event_id, e.provider, p.rule, p.action, p.attempts, p.updated_ts, p.last_status,"
            " p.last_error FROM (SELECT j.* FROM"
            f" {source} WHERE {where} ORDER BY j.updated_ts DESC, j.id DESC LIMIT ?) p"
            " LEFT JOIN events e ON e.id = p.event_id ORDER BY p.updated_ts DESC, p.id DESC", (*args, filt.limit + 1),
        ).fetchall()
        more = len(rows) > filt.limit
        out = [DeadSummary(*r) for r in rows[: filt.limit]]
        return Page(out, Cursor(out[-1].dead_ts, str(out[-1].job_id)) if more else None)

    @_translated
    def count_dead_matching(self, filt: DeadFilter) -> int:
        source, where, args = dead_match(filt, "?")
        return self._conn().execute(f"SELECT count(*) FROM {source} WHERE {where}", args).fetchone()[0]

    @_translated
    def replay_dead_matching(self, filt: DeadFilter) -> int:
        now = now_ts()
        source, where, args = dead_match(filt, "?")
        conn = self._conn()
        with _transaction(conn, self.write_lock):
            return conn.execute(
                "UPDATE jobs SET state = 'pending', next_ts = ?, updated_ts = ?, lease_owner = NULL,"
                f" round_start = attempts WHERE id IN (SELECT j.id FROM {source} WHERE {where})",
                (now, now, *args),
            ).rowcount

    def close(self) -> None:
        for slot in ("conn", "now_conn"):  # this thread's
            conn = getattr(self._local, slot, None)
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            setattr(self._local, slot, None)
        self.wal_sync.close()
        self.wake.close()


class _GroupCommitter(BatchSubmit):
    """Group commit of the ingests of every request thread of this process, without a thread of its own.

    The first request to arrive leads: it takes the store's write lock, then commits its own event
    and everything queued behind it (including what arrived while it waited for the lock, which
    another process may hold) in one transaction and one fsync, and hands the lead to the next
    waiting request, if any. A lone request thus commits on its own thread with no handoff at all;
    concurrent ones share fsyncs. A request that gave up waiting (503) is still committed by the
    next leader, which is safe: the provider's retry is then a duplicate, not a loss.
    """

    MAX_BATCH = 256

    def __init__(self, store: SqliteStore):
        self.store = store
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._pending: list[_Waiter] = []
        self._leading = False
        self._conn: sqlite3.Connection | None = None
        self._generation = store._generation

    def alive(self, pid: int) -> bool:
        return pid == self.pid

    def submit(self, event: NewEvent, timeout: float) -> IngestResult:
        waiter = _Waiter(_Rows(event))  # the rows are built now, in this thread, outside the write lock
        with self._lock:
            self._pending.append(waiter)
            lead = not self._leading
            if lead:
                self._leading = True
        if not lead:
            if not waiter.done.wait(timeout):
                with self._lock:
                    if not waiter.done.is_set():
                        waiter.abandoned = True
                        raise StoreUnavailable("the store did not commit in time")
            lead = waiter.lead
        if lead:
            self._lead()
        if isinstance(waiter.result, IngestResult):
            return waiter.result
        raise StoreUnavailable(f"the store could not commit: {waiter.result}")

    def _lead_for(self, waiter: _Waiter) -> None:
        self._lead()  # commits everything queued, in order, or hands the lead on

    def _lead(self) -> None:
        while True:
            batch, results = self._commit()
            with self._lock:
                waiting = [w for w in self._pending if not w.abandoned]
                if waiting:
                    # hand the lead to a request that is still waiting; it commits the rest
                    # while this thread waits for its own batch's fsync
                    waiting[0].lead = True
                    waiting[0].done.set()
                    last = True
                elif not self._pending:
                    self._leading = False
                    last = True
                else:
                    last = False  # only abandoned requests are left: commit them too, so nothing is stranded
            self._answer(batch, results)
            if last:
                return

    def _take(self, batch: list[_Waiter]) -> list[_Rows]:
        with self._lock:
            batch.extend(self._pending[: self.MAX_BATCH])
            del self._pending[: self.MAX_BATCH]
        return [w.event for w in batch]

    def _commit(self) -> tuple[list[_Waiter], list[IngestResult | Exception]]:
        """Commit a batch under the write lock (its fsync comes after, in _answer)."""
        batch: list[_Waiter] = []
        try:
            if self._conn is not None and self._generation != self.store._generation:
                self._close()  # a fault elsewhere in this process: open again
            if self._conn is None:
                self._generation = self.store._generation
                self._conn = self.store._connect()
                # a store locked by another program: answer 503 soon rather than hold the request
                self._conn.execute(f"PRAGMA busy_timeout = {INGEST_BUSY_TIMEOUT_MS}")
            results = self.store._ingest_batch(self._conn, lambda: self._take(batch))
        except Exception as exc:  # the whole transaction failed: nothing of it was written
            if not batch:  # it failed before taking its batch (no lock, no connection)
                self._take(batch)
            results = [exc] * len(batch)
            self.store._fault(exc)
            self._close()
        return batch, results

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _answer(self, batch: list[_Waiter], results: list[IngestResult | Exception]) -> None:
        """Make the batch durable, then wake its requests."""
        for waiter, result in zip(batch, self.store._durable(results)):
            waiter.result = result
            waiter.done.set()
