"""Fixtures: per-session key material, a real gunicorn serving the router, real downstream servers, the CLI.

The helpers themselves (signing, RouterServer, Downstream, run_cli, ...) are in tests/support/, one copy
of each, so test modules can import them; this file only hands them out with the right lifetimes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from support import Downstream, Reply, RouterServer, new_p256_key, public_pem, run_cli


@pytest.fixture(scope="session")
def panjaya_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 key made for this session; providers under test are given its public half as `public_key`."""
    return new_p256_key()


@pytest.fixture(scope="session")
def panjaya_public_pem(panjaya_key: ec.EllipticCurvePrivateKey) -> str:
    return public_pem(panjaya_key)


@pytest.fixture(scope="session")
def other_key() -> ec.EllipticCurvePrivateKey:
    """A second key, for signatures that are well formed but from the wrong signer."""
    return new_p256_key()


StartRouter = Callable[..., RouterServer]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends(*names): run this module's routers once on each store back end (sqlite, postgresql)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # module scope: each back end starts the module's servers once, not once per test
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "store_backend" in metafunc.fixturenames:
        metafunc.parametrize("store_backend", marker.args, indirect=True, scope="module")


@pytest.fixture(scope="module")
def store_backend(request: pytest.FixtureRequest) -> str:
    """The back end this module's routers use: 'sqlite' unless the module is marked `backends(...)`."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="module")
def new_store(store_backend: str, request: pytest.FixtureRequest) -> Callable[[], str]:
    """A fresh store location for one server: the rules file's own SQLite path, or a new PostgreSQL database
    (handed to the router as ROUTER_STORE, so the same rules run on both)."""
    if store_backend == "sqlite":
        return lambda: "var/router.db"
    if store_backend != "postgresql":
        raise ValueError(f"unknown store back end {store_backend!r}")
    cluster = request.getfixturevalue("pg_cluster")
    return cluster.database


@pytest.fixture(scope="module")
def start_router(tmp_path_factory: pytest.TempPathFactory, new_store: Callable[[], str]) -> Iterator[StartRouter]:
    """Factory: `start_router(rules_yaml, env={...}, files={"schemas/x.json": "..."})` -> a running RouterServer.

    Each server gets its own folder (rules file, var/router.db, logs) and, on PostgreSQL, its own
    database. Every server started through this factory is stopped when the module finishes.
    """
    started: list[RouterServer] = []

    def start(rules_text: str, *, env: dict[str, str] | None = None, files: dict[str, str | bytes] | None = None,
              workers: int = 2, name: str = "router") -> RouterServer:
        server = RouterServer(tmp_path_factory.mktemp(name), rules_text, env=env, files=files, workers=workers,
                              store=new_store())
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def downstream() -> Iterator[Downstream]:
    """A fresh recording HTTP server for one test; answers 200 `ok` unless scripted."""
    with Downstream() as ds:
        yield ds


@pytest.fixture(scope="module")
def module_downstream() -> Iterator[Downstream]:
    """A recording HTTP server shared by a module (for servers whose rules point at it)."""
    with Downstream(Reply(200, b"ok")) as ds:
        yield ds


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """One HTTP client with kept-alive connections for a module's requests."""
    with requests.Session() as s:
        yield s


@pytest.fixture
def cli() -> Callable[..., object]:
    return run_cli


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str | bytes], Path]:
    """write("rules.yaml", text) -> the path of a new file under this test's tmp_path."""

    def _write(name: str, content: str | bytes) -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
        return p

    return _write


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[object]:
    """A throwaway PostgreSQL cluster for the whole run (started on first use, stopped by its PID at the end).

    Never skips: when no server can be started, every test that needs one fails and says why."""
    from support.postgres import PgCluster, PostgresUnavailable

    cluster = PgCluster()
    try:
        cluster.start()
    except PostgresUnavailable as exc:
        pytest.fail(f"the PostgreSQL tests need a server and none could be started: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_database(pg_cluster: object) -> str:
    """The URI of a fresh, empty database on the session's cluster."""
    return pg_cluster.database()  # type: ignore[attr-defined]
