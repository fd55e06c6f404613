"""`settings:` of the rules file, and the retry policy that settings and actions share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.config.fields import (
    Ctx,
    Field,
    as_duration,
    as_network,
    as_path,
    check_mapping,
    convert_fields,
    fraction,
    list_of,
    one_of,
    positive_int,
)
from router.config.inspector import InspectorSettings, as_inspector
from router.config.source import PathT
from router.store.uri import is_postgres, uri_password

STORE_ENV = "ROUTER_STORE"  # overrides settings.store (the 12-factor way: the same rules file on every host)


def as_store(ctx: Ctx, value: Any, path: PathT) -> Path | str | None:
    """A SQLite path (relative to the rules file) or a PostgreSQL URI, whose password is a secret: it
    never reaches a log, an error or the CLI (where the URI is shown, it is shown without it).

    Only the password is given to the redactor, not the whole URI: the redactor also hides every
    piece of a secret URL (its path: here the database's name), which would blank out the host and
    database an operator needs to see, and any log line that happens to contain the name."""
    if isinstance(value, str) and ("$" in value or is_postgres(value.strip())):
        expanded = ctx.expand(value, path).strip()
        if is_postgres(expanded):
            return store_uri(ctx, expanded)
    return as_path(ctx, value, path)


def store_uri(ctx: Ctx, uri: str) -> str:
    password = uri_password(uri)
    if password:
        ctx.redactor.add(password)
    return uri


@dataclass(frozen=True)
class RetryPolicy:
    schedule: tuple[float, ...] = (10, 60, 300, 1800, 7200, 21600)
    jitter: float = 0.2


def as_retry(ctx: Ctx, value: Any, path: PathT) -> RetryPolicy | None:
    node = check_mapping(ctx, value, path, "retry")
    if node is None:
        return None
    fields = {"schedule": Field(list_of(as_duration)), "jitter": Field(fraction)}
    out = convert_fields(ctx, node, path, fields)
    default = RetryPolicy()
    schedule = out["schedule"]
    if schedule is not None and not schedule:
        ctx.error(path + ("schedule",), "needs at least one delay (the first retry); use [] only via max attempts")
        return None
    return RetryPolicy(
        tuple(schedule) if schedule else default.schedule,
        out["jitter"] if out["jitter"] is not None else default.jitter,
    )


@dataclass
class Settings:
    store: Path | str  # a SQLite file, or a postgresql:// URI
    files_root: Path
    max_body_bytes: int = 1024 * 1024
    durability: str = "fsync"
    retention: float = 7 * 86400
    dead_letter_retention: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_after_cap: float = 3600
    trusted_proxies: list = field(default_factory=list)
    delivery_concurrency: int = 8
    inspector: InspectorSettings | None = None


SETTINGS_FIELDS = {
    "store": Field(as_store),
    "files_root": Field(as_path),
    "max_body_bytes": Field(positive_int),
    "durability": Field(one_of("fsync", "process")),
    "retention": Field(as_duration),
    "dead_letter_retention": Field(as_duration),
    "retry": Field(as_retry),
    "retry_after_cap": Field(as_duration),
    "trusted_proxies": Field(list_of(as_network)),
    "delivery_concurrency": Field(positive_int),
    "inspector": Field(as_inspector),
}
