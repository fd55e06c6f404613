"""The router: a webhook event router with declarative rules."""

__version__ = "0.1.0"
