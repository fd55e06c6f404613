"""Field converters: the leaf every plugin (provider, action, condition) builds its options from.

`Ctx` collects the problems of one load and knows where every node stands; each converter takes
(ctx, value, path) and returns the converted value, or None after reporting a problem there.
Nothing here imports a plugin, so plugins can import this freely.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from router.config.source import PathT, Source, fmt_path
from router.errors import Problem
from router.secret import Redactor, Secret
from router.templates import StructuredTemplate, Template, TemplateError

_ENV_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Ctx:
    """Collects problems while the file is checked; knows where every node stands."""

    def __init__(self, source: Source, base_dir: Path, env: Mapping[str, str]):
        self.source = source
        self.base_dir = base_dir
        self.env = env
        self.problems: list[Problem] = []
        self.redactor = Redactor()
        self._broken: set[PathT] = set()  # nodes already reported (e.g. an unset ${VAR})
        self.settings: Any = None  # the converted settings, once built (for load_for_store)

    # where a node stands: its own mark, else its nearest ancestor's
    def _mark(self, path: PathT, at_key: bool) -> tuple[int, int]:
        marks = self.source.key_marks if at_key else self.source.value_marks
        if path in marks:
            return marks[path]
        probe = path
        while probe:
            probe = probe[:-1]
            if probe in self.source.value_marks:
                return self.source.value_marks[probe]
        return (1, 1)

    def mark(self, path: PathT, at_key: bool = False) -> tuple[int, int]:
        """(line, column) of a node of the file, or of its nearest ancestor."""
        return self._mark(path, at_key)

    def error(self, path: PathT, message: str, *, at_key: bool = False) -> None:
        if any(path[:i] in self._broken for i in range(len(path) + 1)):
            return
        line, col = self._mark(path, at_key)
        self.problems.append(Problem(self.source.filename, line, col, fmt_path(path), message))

    def has_errors_under(self, path: PathT) -> bool:
        text = fmt_path(path)
        return any(p.path == text or p.path.startswith(text + ".") or p.path.startswith(text + "[") for p in self.problems)

    # ${VAR} and ${VAR:-default}; $${ is a literal ${
    def expand(self, value: str, path: PathT, *, secret: bool = False, secret_env: bool = False) -> str:
        """Substitute ${VAR}s. `secret`: the whole value is a secret; `secret_env`: what came from
        the environment is (a header such as `Bearer ${TOKEN}`)."""
        if "$" not in value:
            if secret:
                self.redactor.add(value)
            return value

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            name, default = m.group(1), m.group(2)
            if name in self.env:
                result = self.env[name]
            elif default is not None:
                result = default
            else:
                self.error(path, f"environment variable '{name}' is not set (write ${{{name}:-default}} to give a default)")
                self._broken.add(path)
                return ""
            if secret or secret_env:
                self.redactor.add(result)
            return result

        out = _ENV_RE.sub(sub, value)
        if secret:
            self.redactor.add(out)
        return out

    def finish(self) -> list[Problem]:
        seen: set[tuple] = set()
        out = []
        for p in sorted(self.problems, key=lambda p: (p.line, p.column)):
            p = Problem(p.file, p.line, p.column, p.path, self.redactor(p.message))
            key = (p.line, p.column, p.path, p.message)
            if key not in seen:
                seen.add(key)
                out.append(p)
        return out


# --------------------------------------------------------------------------- field converters
# Each takes (ctx, value, path) and returns the converted value, or None after reporting a problem.

Converter = Callable[[Ctx, Any, PathT], Any]
_MISSING = object()


@dataclass(frozen=True)
class Field:
    convert: Converter
    required: bool = False
    default: Any = None


def check_mapping(ctx: Ctx, value: Any, path: PathT, what: str) -> dict | None:
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.error(path, f"{what} must be a mapping, not {kind(value)}")
        return None
    return value


def kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    )


def convert_fields(ctx: Ctx, node: dict, path: PathT, fields: Mapping[str, Field], *, ignore: Iterable[str] = ()) -> dict:
    """Check a mapping against its fields: unknown keys, required keys, then each value."""
    ignore = set(ignore)
    out: dict[str, Any] = {}
    for key in node:
        if key not in fields and key not in ignore:
            ctx.error(path + (key,), f"unknown key '{key}'{did_you_mean(key, list(fields) + list(ignore))}", at_key=True)
    for name, f in fields.items():
        if name not in node or node[name] is None:
            if f.required:
                ctx.error(path, f"missing required key '{name}'")
            out[name] = f.default
            continue
        out[name] = f.convert(ctx, node[name], path + (name,))
    return out


def as_str(ctx: Ctx, value: Any, path: PathT, *, secret: bool = False) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        ctx.error(path, f"expected a string, not {kind(value)}")
        return None
    return ctx.expand(str(value), path, secret=secret)


def as_secret(ctx: Ctx, value: Any, path: PathT) -> Secret | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        ctx.error(path, f"expected a string, not {kind(value)}")
        return None
    text = ctx.expand(str(value), path, secret=True)
    return Secret(text)


def one_of(*choices: str) -> Converter:
    def conv(ctx: Ctx, value: Any, path: PathT) -> str | None:
        text = as_str(ctx, value, path)
        if text is None:
            return None
        if text not in choices:
            ctx.error(path, f"must be one of {', '.join(choices)}, not '{text}'{did_you_mean(text, choices)}")
            return None
        return text

    return conv


def as_bool(ctx: Ctx, value: Any, path: PathT) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = ctx.expand(value, path).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
    ctx.error(path, f"expected true or false, not {kind(value)}")
    return None


def _number(ctx: Ctx, value: Any, path: PathT) -> float | None:
    if isinstance(value, bool):
        ctx.error(path, "expected a number, not a boolean")
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = ctx.expand(value, path).strip()
        try:
            return float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            pass
    ctx.error(path, f"expected a number, not {kind(value)}")
    return None


def positive_int(ctx: Ctx, value: Any, path: PathT) -> int | None:
    n = _number(ctx, value, path)
    if n is None:
        return None
    if n != int(n) or n < 1:
        ctx.error(path, f"expected a whole number of at least 1, not {n}")
        return None
    return int(n)


def positive_number(ctx: Ctx, value: Any, path: PathT) -> float | None:
    n = _number(ctx, value, path)
    if n is None:
        return None
    if n <= 0:
        ctx.error(path, f"must be greater than 0, not {n}")
        return None
    return float(n)


def fraction(ctx: Ctx, value: Any, path: PathT) -> float | None:
    n = _number(ctx, value, path)
    if n is None:
        return None
    if not 0 <= n <= 1:
        ctx.error(path, f"must be between 0 and 1, not {n}")
        return None
    return float(n)


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(text: str) -> float | None:
    m = _DURATION_RE.match(text)
    if not m:
        return None
    return float(m.group(1)) * _UNIT[m.group(2)]


def as_duration(ctx: Ctx, value: Any, path: PathT) -> float | None:
    if isinstance(value, bool):
        ctx.error(path, "expected a duration such as 500ms, 30s, 5m, 2h, 1d, not a boolean")
        return None
    if isinstance(value, (int, float)):
        seconds: float | None = float(value)
    elif isinstance(value, str):
        seconds = parse_duration(ctx.expand(value, path))
    else:
        seconds = None
    if seconds is None or seconds < 0:
        ctx.error(path, f"expected a duration such as 500ms, 30s, 5m, 2h, 1d or a number of seconds, not {value!r}")
        return None
    return seconds


def as_path(ctx: Ctx, value: Any, path: PathT) -> Path | None:
    text = as_str(ctx, value, path)
    if text is None:
        return None
    if "\x00" in text:
        ctx.error(path, "path contains a NUL byte")
        return None
    p = Path(text).expanduser()
    return p if p.is_absolute() else ctx.base_dir / p


def compile_template(ctx: Ctx, raw: str, expanded: str, path: PathT, *, slack: bool = False) -> Template | None:
    """Compile the expanded text; report errors from the file's own text, so a message never
    quotes a value substituted from the environment."""
    try:
        return Template(expanded, slack=slack)
    except TemplateError as exc:
        if raw == expanded:
            ctx.error(path, str(exc))
            return None
    try:
        Template(raw, slack=slack)
    except TemplateError as exc:
        ctx.error(path, str(exc))
        return None
    ctx.error(path, "template does not parse once its ${...} variables are substituted")
    return None


def as_template(ctx: Ctx, value: Any, path: PathT, *, secret: bool = False, slack: bool = False) -> Template | None:
    """A template; `slack`: the values it substitutes are escaped for Slack's markup."""
    text = as_str(ctx, value, path, secret=secret)
    if text is None:
        return None
    return compile_template(ctx, str(value), text, path, slack=slack)


def as_structured_template(ctx: Ctx, value: Any, path: PathT, *, slack: bool = False) -> StructuredTemplate | Template | None:
    """A string template, or a YAML structure whose strings are templates."""
    if isinstance(value, str):
        return as_template(ctx, value, path, slack=slack)

    def expand(v: Any, p: PathT) -> Any:
        if isinstance(v, str):
            return ctx.expand(v, p)
        if isinstance(v, list):
            return [expand(x, p + (i,)) for i, x in enumerate(v)]
        if isinstance(v, dict):
            return {k: expand(x, p + (k,)) for k, x in v.items()}
        return v

    try:
        return StructuredTemplate(expand(value, path), slack=slack)
    except TemplateError:
        pass
    try:
        StructuredTemplate(value, slack=slack)
    except TemplateError as exc:
        ctx.error(path, str(exc))
        return None
    ctx.error(path, "template does not parse once its ${...} variables are substituted")
    return None


def as_template_map(ctx: Ctx, value: Any, path: PathT) -> dict[str, Template] | None:
    node = check_mapping(ctx, value, path, "this")
    if node is None:
        return None
    out = {}
    for k, v in node.items():
        p = path + (k,)
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            ctx.error(p, f"expected a string, not {kind(v)}")
            continue
        # header values often carry credentials: values from the environment, and every value of
        # a header named like a credential, are never shown
        text = ctx.expand(str(v), p, secret=bool(_CREDENTIAL_NAME.search(str(k))), secret_env=True)
        template = compile_template(ctx, str(v), text, p)
        if template is not None:
            out[str(k)] = template
    return out


_CREDENTIAL_NAME = re.compile(r"auth|token|key|secret|signature|cookie|password|session", re.IGNORECASE)


def list_of(item: Converter) -> Converter:
    def conv(ctx: Ctx, value: Any, path: PathT) -> list | None:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            ctx.error(path, f"expected a list, not {kind(value)}")
            return None
        out = [item(ctx, v, path + (i,)) for i, v in enumerate(value)]
        return None if any(v is None for v in out) else out

    return conv


def as_network(ctx: Ctx, value: Any, path: PathT) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    text = as_str(ctx, value, path)
    if text is None:
        return None
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        ctx.error(path, f"'{text}' is not an IP address or CIDR range")
        return None


def url_problem(text: str) -> str | None:
    """Why `text` is not an http(s) URL a request can be sent to, or None. Says what is wrong, never
    quotes the URL (it may be a secret, as a Slack webhook's is)."""
    if not re.match(r"^https?://[^\s/]+", text):
        return "must be an http:// or https:// URL"
    try:
        split = urlsplit(text)
        port = split.port  # parsed here, where a bad one is a validation error, not a failed delivery
    except ValueError:
        return ("must be an http:// or https:// URL; its host or port is not valid"
                " (an unclosed '[', or a port that is not a number up to 65535)")
    if not split.hostname:
        return "must be an http:// or https:// URL with a host"
    if port == 0:
        return "must be an http:// or https:// URL; port 0 is no port to send to"
    return None


def as_url(ctx: Ctx, value: Any, path: PathT) -> str | None:
    text = as_str(ctx, value, path)
    if text is None:
        return None
    problem = url_problem(text)
    if problem is not None:
        ctx.error(path, problem)
        return None
    return text


def as_secret_url(ctx: Ctx, value: Any, path: PathT) -> Secret | None:
    secret = as_secret(ctx, value, path)
    if secret is None:
        return None
    problem = url_problem(secret.reveal())
    if problem is not None:
        ctx.error(path, problem)
        return None
    return secret


def as_url_path(ctx: Ctx, value: Any, path: PathT) -> str | None:
    text = as_str(ctx, value, path)
    if text is None:
        return None
    if not text.startswith("/") or any(c in text for c in "?# \t"):
        ctx.error(path, f"must be a URL path starting with '/', not '{text}'")
        return None
    return text.rstrip("/") or "/"
