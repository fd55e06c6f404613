"""`gunicorn 'router.wsgi:app'` with ROUTER_RULES=path/to/rules.yaml: the documented entry point.

The service itself is in `router.web.wsgi`; this name stays so deployments keep working.
"""

from router.web.wsgi import app

__all__ = ["app"]
