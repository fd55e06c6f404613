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


@pytest.fixture(scope="module")
def start_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartRouter]:
    """Factory: `start_router(rules_yaml, env={...}, files={"schemas/x.json": "..."})` -> a running RouterServer.

    Each server gets its own folder (rules file, var/router.db, logs). Every server started through
    this factory is stopped when the module finishes.
    """
    started: list[RouterServer] = []

    def start(rules_text: str, *, env: dict[str, str] | None = None, files: dict[str, str | bytes] | None = None,
              workers: int = 2, name: str = "router") -> RouterServer:
        server = RouterServer(tmp_path_factory.mktemp(name), rules_text, env=env, files=files, workers=workers)
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
