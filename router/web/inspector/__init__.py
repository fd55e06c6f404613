"""The event inspector: server-rendered pages over the store, served by the service itself.

Off unless `settings.inspector` is in the rules file. Reads and replays only through the Store
protocol, so it works on every back end. See views.py for the pages, auth.py for who may see them.
"""

from __future__ import annotations

from flask import Flask

from router import logs
from router.web.state import RouterState


def register(app: Flask, state: RouterState) -> None:
    """Serve the inspector under its path when the rules file turns it on (a restart applies a change)."""
    settings = state.config.settings.inspector
    if settings is None or not settings.enabled:
        return
    from router.web.inspector.views import blueprint

    app.register_blueprint(blueprint(state), url_prefix=settings.path)
    logs.info("inspector on", path=settings.path, auth="HTTP Basic")


__all__ = ["register"]
