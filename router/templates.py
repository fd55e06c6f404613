"""Jinja2 templates in a sandbox, compiled once when the rules file loads.

Rendered values are data: a payload value holding `{{ 7*7 }}` renders as those characters, because
Jinja never renders its own output again.
"""

from __future__ import annotations

import json
from typing import Any

from jinja2 import TemplateSyntaxError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _tojson(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


_env = ImmutableSandboxedEnvironment(autoescape=False, undefined=Undefined, keep_trailing_newline=True)
_env.filters["tojson"] = _tojson
_env.policies["json.dumps_function"] = _tojson


class TemplateError(Exception):
    """A template failed to compile or render; the message names the cause, not the context."""


class Template:
    __slots__ = ("source", "_compiled", "is_constant")

    def __init__(self, source: str):
        self.source = source
        try:
            self._compiled = _env.from_string(source)
        except TemplateSyntaxError as exc:
            where = f" (template line {exc.lineno})" if exc.lineno and exc.lineno > 1 else ""
            raise TemplateError(f"template does not parse: {exc.message}{where}") from None
        self.is_constant = "{{" not in source and "{%" not in source

    def render(self, context: dict[str, Any]) -> str:
        if self.is_constant:
            return self.source
        try:
            return self._compiled.render(context)
        except Exception as exc:  # sandbox violations, type errors, undefined attribute use
            raise TemplateError(f"template failed to render: {type(exc).__name__}: {exc}") from None

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


class StructuredTemplate:
    """A YAML/JSON structure whose string leaves are templates (Slack `blocks`, a JSON body)."""

    def __init__(self, value: Any):
        self._value = self._compile(value)

    @classmethod
    def _compile(cls, value: Any) -> Any:
        if isinstance(value, str):
            return Template(value)
        if isinstance(value, list):
            return [cls._compile(v) for v in value]
        if isinstance(value, dict):
            return {k: cls._compile(v) for k, v in value.items()}
        return value

    def render(self, context: dict[str, Any]) -> Any:
        return self._render(self._value, context)

    @classmethod
    def _render(cls, value: Any, context: dict[str, Any]) -> Any:
        if isinstance(value, Template):
            return value.render(context)
        if isinstance(value, list):
            return [cls._render(v, context) for v in value]
        if isinstance(value, dict):
            return {k: cls._render(v, context) for k, v in value.items()}
        return value
