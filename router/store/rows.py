"""What the two SQL back ends share: rows turned into the model, and SQL built from a filter
(each back end passes its own placeholder, `?` for SQLite, `%s` for psycopg)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from router.model import StoredEvent
from router.store.base import DeadFilter, EventFilter


def stored_event(row: Sequence[Any]) -> StoredEvent:
    """An event from (id, provider, received_at, headers, query, content_type, body)."""
    return StoredEvent(id=row[0], provider=row[1], received_at=row[2], headers=_object(row[3]),
                       query=_object(row[4]), content_type=row[5], body=bytes(row[6]))


def _object(text: str) -> dict[str, str]:
    return {} if text == "{}" else json.loads(text)  # most events have no query: no parse for it


def dead_match(filt: DeadFilter, mark: str) -> tuple[str, str, list[Any]]:
    """The dead jobs `j` that `filt` takes: (FROM clause, WHERE clause, arguments). Events are
    joined (as `e`) only when the provider filter needs them."""
    where: list[str] = ["j.state = 'dead'"]
    args: list[Any] = []
    for column, value in (("j.action", filt.action), ("j.rule", filt.rule), ("e.provider", filt.provider),
                          ("j.event_id", filt.event_id)):
        if value:
            where.append(f"{column} = {mark}")
            args.append(value)
    if filt.since is not None:
        where.append(f"j.updated_ts >= {mark}")
        args.append(filt.since)
    if filt.until is not None:
        where.append(f"j.updated_ts < {mark}")
        args.append(filt.until)
    source = "jobs j JOIN events e ON e.id = j.event_id" if filt.provider else "jobs j"
    return source, " AND ".join(where), args


def event_match(filt: EventFilter, mark: str, rule_clause: str) -> tuple[str, list[Any]]:
    """The WHERE clause (or "") and arguments of an events listing; `rule_clause` tests that the
    event matched a rule, in the back end's own JSON dialect."""
    where: list[str] = []
    args: list[Any] = []
    for clause, value in ((f"provider = {mark}", filt.provider or None), (f"received_ts >= {mark}", filt.since),
                          (f"received_ts < {mark}", filt.until), (rule_clause, filt.rule or None),
                          (f"EXISTS (SELECT 1 FROM jobs WHERE jobs.event_id = events.id AND jobs.state = {mark})",
                           filt.state or None)):
        if value is not None:
            where.append(clause)
            args.append(value)
    return ("WHERE " + " AND ".join(where)) if where else "", args
