"""Choosing the store (README "Settings" and "Several hosts"): `settings.store` as a SQLite path or a
PostgreSQL URI, the `ROUTER_STORE` override, `router validate [--check-store]`, `router migrate`,
`router backup`, and the URI's password kept out of every output, log and /metrics.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import RouterServer, post_event, run_cli, wait_settled

from router.config.loader import loads
from router.store import is_postgres
from router.store.postgres import SCHEMA_VERSION as PG_SCHEMA

PASSWORD = "pw-Zq8xK2vLr7"  # the test cluster trusts local connections, so any password is accepted

RULES = """\
version: 1
settings:
  store: {store}
providers:
  src: {{type: none}}
actions:
  keep: {{type: file, path: "out.jsonl"}}
rules:
  - {{name: all, actions: [keep]}}
"""


def with_password(uri: str) -> str:
    return uri.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


@pytest.mark.parametrize("text, expected", [
    ("var/router.db", "sqlite"),
    ("postgresql://u@db.internal:5432/router", "postgresql"),
    ("postgres://u@db.internal/router", "postgresql"),
    ('"${DATABASE_URL}"', "postgresql"),
    ('"${STORE_FILE:-data/r.db}"', "sqlite"),
])
def test_store_setting_is_a_path_or_a_uri(text: str, expected: str, tmp_path: Path) -> None:
    config = loads(RULES.format(store=text), base_dir=tmp_path,
                   env={"DATABASE_URL": f"postgresql://u:{PASSWORD}@db/router"})
    store = config.settings.store
    assert ("postgresql" if is_postgres(store) else "sqlite") == expected
    if expected == "sqlite":
        assert Path(store).is_absolute() and str(store).startswith(str(tmp_path))  # relative to the rules file
    assert PASSWORD not in config.summary()
    assert PASSWORD not in config.redactor(f"failed: {store}")


def test_router_store_overrides_the_setting(tmp_path: Path) -> None:
    uri = f"postgresql://u:{PASSWORD}@db/router"
    config = loads(RULES.format(store='"${DATABASE_URL}"'), base_dir=tmp_path, env={"ROUTER_STORE": uri})
    assert config.settings.store == uri  # and the file's ${DATABASE_URL} need not be set
    assert config.redactor(uri) == "postgresql://u:<secret>@db/router"
    assert PASSWORD not in config.summary() and "db/router" in config.summary()
    sqlite = loads(RULES.format(store="var/router.db"), base_dir=tmp_path, env={"ROUTER_STORE": "other/r.db"})
    assert sqlite.settings.store == tmp_path / "other" / "r.db"


def test_validate_names_the_back_end_and_check_store_connects(pg_database: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.format(store='"${DATABASE_URL}"'))
    env = {"DATABASE_URL": with_password(pg_database)}

    plain = run_cli("validate", rules, env=env)
    assert plain.code == 0, plain
    assert "store postgresql" in plain.stdout and PASSWORD not in plain.output

    fresh = run_cli("validate", "--check-store", rules, env=env)
    assert fresh.code == 0, fresh
    assert "connected, no schema yet" in fresh.stdout and PASSWORD not in fresh.output

    migrated = run_cli("migrate", rules, env=env)
    assert migrated.code == 0, migrated
    assert f"migrated from version 0 to {PG_SCHEMA}" in migrated.stdout and PASSWORD not in migrated.output
    again = run_cli("migrate", rules, env=env)
    assert f"schema version {PG_SCHEMA}, up to date" in again.stdout, again

    checked = run_cli("validate", "--check-store", rules, env=env)
    assert f"connected, schema version {PG_SCHEMA}" in checked.stdout, checked


def test_check_store_fails_clearly_when_the_database_is_unreachable(pg_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.format(store='"${DATABASE_URL}"'))
    nowhere = f"postgresql://postgres:{PASSWORD}@/x?host={pg_cluster.root}/absent&connect_timeout=2"
    result = run_cli("validate", "--check-store", rules, env={"DATABASE_URL": nowhere})
    assert result.code == 1, result
    assert "cannot connect" in result.stderr and PASSWORD not in result.output


def test_check_store_on_sqlite(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.format(store="var/router.db"))
    result = run_cli("validate", "--check-store", rules)
    assert result.code == 0 and "not created yet" in result.stdout, result


def test_password_never_reaches_logs_metrics_or_the_cli(pg_database: str, tmp_path: Path) -> None:
    uri = with_password(pg_database)
    server = RouterServer(tmp_path / "srv", RULES.format(store="var/router.db"), store=uri, workers=1)
    with server:
        event_id = post_event(server, {"n": 1})
        wait_settled(server, event_id)
        metrics = server.get("/metrics").text
        ready = server.get("/readyz")
        assert ready.status_code == 200, ready.text
        listed = run_cli("events", "list", "--rules", server.rules_path, env=server.cli_env)
        assert event_id in listed.stdout, listed
    for text in (metrics, ready.text, server.log_text(), listed.output):
        assert PASSWORD not in text
    assert not (tmp_path / "srv" / "var" / "router.db").exists()  # ROUTER_STORE won over the file's setting


def test_backup_runs_pg_dump_without_the_password_on_its_command_line(pg_database: str, tmp_path: Path) -> None:
    from support.postgres import bin_dir

    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.format(store="var/router.db"))
    # the wheel's pg_dump first on PATH: pg_dump refuses a server newer than itself
    env = {"ROUTER_STORE": with_password(pg_database), "PATH": f"{bin_dir()}{os.pathsep}{os.environ['PATH']}"}
    assert run_cli("migrate", rules, env=env).code == 0
    result = run_cli("backup", "--rules", rules, tmp_path / "router.dump", env=env)
    assert result.code == 0, result
    assert (tmp_path / "router.dump").read_bytes()[:5] == b"PGDMP" and PASSWORD not in result.output
