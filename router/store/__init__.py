"""The durable store: one interface (`base.Store`), a back end per database, one factory.

`settings.store` is a SQLite path (the embedded default, one host) or a PostgreSQL URI
(`postgresql://` or `postgres://`, several hosts on one database).
"""

from __future__ import annotations

from pathlib import Path

from router.store.base import EventFilter, Store
from router.store.uri import POSTGRES_SCHEMES, describe, is_postgres, safe_uri


def open_store(location: str | Path, durability: str = "fsync") -> Store:
    """The store at `location`: a PostgreSQL URI, or the path of a SQLite file."""
    if is_postgres(location):
        from router.store.postgres import PostgresStore

        return PostgresStore(str(location), durability)
    from router.store.sqlite import SqliteStore

    return SqliteStore(Path(location), durability)


__all__ = ["POSTGRES_SCHEMES", "EventFilter", "Store", "describe", "is_postgres", "open_store", "safe_uri"]
