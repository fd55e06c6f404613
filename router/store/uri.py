"""Store locations as text: tell a PostgreSQL URI from a SQLite path, and print a URI without its password.

A leaf (no driver import), so the config loader and the CLI can use it without opening anything.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def uri_password(uri: str) -> str | None:
    """The password a URI carries, in its userinfo or as a `password=` query parameter."""
    try:
        parts = urlsplit(uri)
        found = parts.password
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "password":
                found = value
    except ValueError:
        return None
    return unquote(found) if found else None


def safe_uri(uri: str) -> str:
    """The URI with any password replaced by <secret> (userinfo and query), fit for logs and output."""
    try:
        parts = urlsplit(uri)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:<secret>@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
        query = "&".join(
            f"{k}=<secret>" if k == "password" else f"{k}={v}"
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return "postgresql://<unparsable URI>"


def describe(location: str | Path) -> str:
    """'sqlite PATH' or 'postgresql URI-without-password'."""
    if is_postgres(location):
        return f"postgresql {safe_uri(str(location))}"
    return f"sqlite {location}"
