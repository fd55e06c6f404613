"""`gunicorn 'router.wsgi:app'` with ROUTER_RULES=path/to/rules.yaml.

Each worker process that imports this module serves HTTP and runs delivery workers beside it, so
plain gunicorn delivers as `router serve` does (ROUTER_DELIVERY=off serves HTTP only). It also
watches the rules file and reloads it in place when it changes (ROUTER_WATCH=off to disable).

When a worker starts and the rules file is invalid (say gunicorn was sent HUP after a bad edit),
it serves the last rules that loaded (router.config.lastgood keeps them) rather than failing to boot and taking
the whole service down; /readyz reports the rules as stale.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

from router import logs, metrics
from router.errors import ConfigError
from router.web.app import create_app
from router.web.state import recover


def _off(name: str) -> bool:
    return os.environ.get(name, "on").lower() in ("0", "off", "false", "no")


def _build():  # type: ignore[no-untyped-def]
    try:
        return create_app()
    except ConfigError as exc:
        problems = exc.problems
    rules = os.environ.get("ROUTER_RULES")
    fallback = recover(Path(rules), problems) if rules else None
    if fallback is None:
        # gunicorn would print a traceback; the operator needs the validate messages instead
        logs.error("cannot load the rules file", rules=rules, problems=[str(p) for p in problems])
        raise SystemExit(3)
    app = create_app(fallback, rules, stale_reason=f"{len(problems)} problem(s) in {rules}; serving the last good rules")
    logs.error("rules file invalid; serving the last rules that loaded", rules=rules,
               problems=[str(p) for p in problems])
    metrics.reload(False)
    return app


app = _build()
_state = app.extensions["router"]

if not _off("ROUTER_DELIVERY"):
    _state.start_delivery()
    os.register_at_fork(after_in_child=_state.start_delivery)
    # on a graceful stop, hand back jobs claimed but not started so another worker takes them at once
    atexit.register(_state.stop_delivery, 5.0)
if not _off("ROUTER_WATCH"):
    _state.watch()
    os.register_at_fork(after_in_child=_state.watch)
