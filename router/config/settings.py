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
