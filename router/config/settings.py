"""`settings:` of the rules file, and the retry policy that settings and actions share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router import passwords
from router.config.fields import (
    Ctx,
    Field,
    as_bool,
    as_duration,
    as_network,
    as_path,
    as_secret,
    as_str,
    as_url_path,
    check_mapping,
    convert_fields,
    fraction,
    list_of,
    one_of,
    positive_int,
)
from router.config.source import PathT
from router.secret import Secret


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


@dataclass(frozen=True)
class InspectorSettings:
    """`settings.inspector`: the event inspector in the browser (off unless this section is present)."""

    path: str = "/ui"
    username: str = "admin"
    password: Secret | None = None
    password_hash: passwords.PasswordHash | None = None
    enabled: bool = True


RESERVED_PATHS = ("/hooks", "/healthz", "/readyz", "/metrics")


def as_inspector(ctx: Ctx, value: Any, path: PathT) -> InspectorSettings | None:
    node = check_mapping(ctx, value, path, "inspector")
    if node is None:
        return None
    fields = {"path": Field(as_url_path, default="/ui"), "username": Field(as_str, default="admin"),
              "password": Field(as_secret), "password_hash": Field(as_secret), "enabled": Field(as_bool, default=True)}
    out = convert_fields(ctx, node, path, fields)
    if ctx.has_errors_under(path):
        return None
    url_path = out["path"]
    if url_path == "/" or any(url_path == r or url_path.startswith(r + "/") for r in RESERVED_PATHS):
        ctx.error(path + ("path",), f"path '{url_path}' is taken by the service; use another, such as /ui")
        return None
    if not out["username"] or ":" in out["username"]:
        ctx.error(path + ("username",), "username must be non-empty and without ':' (HTTP Basic)")
        return None
    password, hashed = out["password"], out["password_hash"]
    if (password is None) == (hashed is None):
        ctx.error(path, "give exactly one of 'password' or 'password_hash' (from the environment, "
                        "e.g. password: ${INSPECTOR_PASSWORD})")
        return None
    parsed = None
    if hashed is not None:
        try:
            parsed = passwords.parse(hashed.reveal())
        except ValueError as exc:
            ctx.error(path + ("password_hash",), str(exc))
            return None
    elif not password:
        ctx.error(path + ("password",), "password is empty; an empty password would let anyone in")
        return None
    return InspectorSettings(url_path, out["username"], password, parsed, out["enabled"])


@dataclass
class Settings:
    store: Path
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
    "store": Field(as_path),
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
