"""The HTTP service: the app factory (`app`), the hook endpoint in front of it (`endpoint`),
gunicorn under `router serve` (`server`), and the module gunicorn imports (`wsgi`)."""
