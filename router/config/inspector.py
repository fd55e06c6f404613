"""`settings.inspector`: the event inspector in the browser, off unless this section is present."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router import passwords
from router.config.fields import Ctx, Field, as_bool, as_secret, as_str, as_url_path, check_mapping, convert_fields
from router.config.source import PathT
from router.secret import Secret


@dataclass(frozen=True)
class InspectorSettings:
    """Where the inspector is served and who may use it (exactly one of password, password_hash)."""

    path: str = "/ui"
    username: str = "admin"
    password: Secret | None = None
    password_hash: passwords.PasswordHash | None = None
    enabled: bool = True
    behind_tls: bool = False  # a TLS-terminating proxy is in front: no warning about plain HTTP


RESERVED_PATHS = ("/hooks", "/healthz", "/readyz", "/metrics")


def as_inspector(ctx: Ctx, value: Any, path: PathT) -> InspectorSettings | None:
    node = check_mapping(ctx, value, path, "inspector")
    if node is None:
        return None
    fields = {"path": Field(as_url_path, default="/ui"), "username": Field(as_str, default="admin"),
              "password": Field(as_secret), "password_hash": Field(as_secret), "enabled": Field(as_bool, default=True),
              "behind_tls": Field(as_bool, default=False)}
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
    return InspectorSettings(url_path, out["username"], password, parsed, out["enabled"], out["behind_tls"])
