"""Read-only views of the store for the command line (events, dead letters)."""

from __future__ import annotations

import json
from typing import Any

from router.store import Store, iso_utc


def list_events(store: Store, *, provider: str | None, limit: int) -> list[dict[str, Any]]:
    conn = store.reader()
    where, args = ("WHERE provider = ?", [provider]) if provider else ("", [])
    rows = conn.execute(
        f"SELECT id, received_at, provider, matched FROM events {where} ORDER BY received_ts DESC LIMIT ?",
        (*args, limit),
    ).fetchall()
    out = []
    for event_id, received_at, prov, matched in rows:
        states = dict(
            conn.execute("SELECT state, count(*) FROM jobs WHERE event_id = ? GROUP BY state", (event_id,)).fetchall()
        )
        out.append({"event_id": event_id, "received_at": received_at, "provider": prov,
                    "matched": json.loads(matched), "deliveries": states})
    return out


def show_event(store: Store, event_id: str) -> dict[str, Any] | None:
    conn = store.reader()
    row = conn.execute(
        "SELECT id, provider, received_at, headers, query, content_type, body, matched, dedupe_key FROM events WHERE id = ?",
        (event_id,),
    ).fetchone()
    if row is None:
        return None
    body = bytes(row[6])
    try:
        payload: Any = json.loads(body)
    except ValueError:
        payload = body.decode("utf-8", "replace")
    deliveries = []
    for job in conn.execute(
        "SELECT id, rule, action, state, attempts, next_ts, last_status, last_error FROM jobs WHERE event_id = ? ORDER BY id",
        (event_id,),
    ):
        attempts = [
            {"n": n, "at": iso_utc(at), "status": status, "error": error,
             "latency_ms": round(latency, 2) if latency is not None else None}
            for n, at, status, error, latency in conn.execute(
                "SELECT n, at_ts, status, error, latency_ms FROM attempts WHERE job_id = ? ORDER BY n", (job[0],)
            )
        ]
        deliveries.append({
            "job_id": job[0], "rule": job[1], "action": job[2], "state": job[3], "attempts": job[4],
            "next_attempt_at": iso_utc(job[5]) if job[3] == "pending" else None,
            "last_status": job[6], "last_error": job[7], "history": attempts,
        })
    return {
        "event_id": row[0], "provider": row[1], "received_at": row[2], "headers": json.loads(row[3]),
        "query": json.loads(row[4]), "content_type": row[5], "matched": json.loads(row[7]),
        "dedupe_key": row[8], "payload": payload, "deliveries": deliveries,
    }


def list_dead(store: Store, *, action: str | None, limit: int) -> list[dict[str, Any]]:
    conn = store.reader()
    where, args = ("AND action = ?", [action]) if action else ("", [])
    rows = conn.execute(
        "SELECT id, event_id, rule, action, attempts, last_status, updated_ts, last_error FROM jobs"
        f" WHERE state = 'dead' {where} ORDER BY updated_ts DESC LIMIT ?",
        (*args, limit),
    ).fetchall()
    out = []
    for job_id, event_id, rule, act, attempts, status, updated, error in rows:
        history = [
            {"n": n, "at": iso_utc(at), "status": st, "error": err,
             "latency_ms": round(lat, 2) if lat is not None else None}
            for n, at, st, err, lat in conn.execute(
                "SELECT n, at_ts, status, error, latency_ms FROM attempts WHERE job_id = ? ORDER BY n", (job_id,)
            )
        ]
        out.append({"job_id": job_id, "event_id": event_id, "rule": rule, "action": act, "attempts": attempts,
                    "status": status, "dead_at": iso_utc(updated), "reason": error, "history": history})
    return out
