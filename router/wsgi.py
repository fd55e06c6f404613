"""`gunicorn 'router.wsgi:app'` with ROUTER_RULES=path/to/rules.yaml.

Each worker process that imports this module serves HTTP and runs delivery workers beside it, so
plain gunicorn delivers as `router serve` does. With `--preload` the module is imported once in
the master; the delivery workers are then started again in each forked worker.
"""

from __future__ import annotations

import atexit
import os
import sys

from router.app import create_app
from router.errors import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    # gunicorn would print a traceback; the operator needs the validate messages instead
    sys.stderr.write("router: cannot load the rules file:\n" + "\n".join(f"  {p}" for p in exc.problems) + "\n")
    sys.stderr.flush()
    raise SystemExit(3) from None

_state = app.extensions["router"]

if os.environ.get("ROUTER_DELIVERY", "on").lower() not in ("0", "off", "false", "no"):
    _state.start_delivery()
    os.register_at_fork(after_in_child=_state.start_delivery)
    # on a graceful stop, hand back jobs claimed but not started so another worker takes them at once
    atexit.register(_state.stop_delivery, 5.0)
