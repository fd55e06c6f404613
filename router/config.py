"""Loading and validating the rules file.

Strict, in two passes, in the manner of Alertmanager's config: first the structure of every node
(unknown keys are errors, values are converted and defaults applied), then the cross-references
(rules -> providers and actions, duplicate names). Every problem is collected, not just the first,
and each is reported at the line and column of the fault as `FILE:LINE:COL: path.in.file: message`.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from router.errors import ConfigError, Problem
from router.secret import Redactor, Secret
from router.templates import StructuredTemplate, Template, TemplateError

PathT = tuple  # a path into the file: ("rules", 2, "when", "event")

# --------------------------------------------------------------------------- YAML with positions


@dataclass
class Source:
    """The parsed file: plain Python values plus where each node stands."""

    filename: str
    data: Any
    value_marks: dict[PathT, tuple[int, int]]
    key_marks: dict[PathT, tuple[int, int]]


MAX_NODES = 200_000  # an alias bomb expands past this; no honest rules file comes near it


class _TooBig(Exception):
    pass


def _parse_yaml(text: str, filename: str, problems: list[Problem]) -> Source | None:
    value_marks: dict[PathT, tuple[int, int]] = {}
    key_marks: dict[PathT, tuple[int, int]] = {}
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # e.g. a control character the YAML reader refuses
        problems.append(_yaml_problem(filename, exc))
        return None
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:
            problems.append(Problem(filename, 1, 1, "yaml", "the file is nested too deeply to read"))
            return None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            msg = exc.problem or exc.context or "invalid YAML"
            if exc.context and exc.problem:
                msg = f"{exc.problem} ({exc.context})"
            problems.append(Problem(filename, line, col, "yaml", f"YAML syntax error: {msg}"))
            return None
        except yaml.YAMLError as exc:
            problems.append(Problem(filename, 1, 1, "yaml", f"YAML error: {exc}"))
            return None
        if root is None:
            return Source(filename, None, value_marks, key_marks)

        def pos(node: yaml.Node) -> tuple[int, int]:
            return node.start_mark.line + 1, node.start_mark.column + 1

        count = [0]
        on_path: set[int] = set()  # the nodes being converted: meeting one again is an alias cycle

        def convert(node: yaml.Node, path: PathT) -> Any:
            count[0] += 1
            if count[0] > MAX_NODES:
                raise _TooBig()
            if id(node) in on_path:
                line, col = pos(node)
                problems.append(Problem(filename, line, col, _fmt(path), "recursive alias: a node that contains itself"))
                return None
            value_marks[path] = pos(node)
            if not isinstance(node, yaml.ScalarNode):
                on_path.add(id(node))
                try:
                    return convert_collection(node, path)
                finally:
                    on_path.discard(id(node))
            try:
                return loader.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError, OverflowError) as exc:
                line, col = pos(node)
                problems.append(Problem(filename, line, col, _fmt(path), f"invalid value: {str(exc)[:200]}"))
                return None

        def convert_collection(node: yaml.Node, path: PathT) -> Any:
            if isinstance(node, yaml.MappingNode):
                loader.flatten_mapping(node)  # honours `<<: *anchor` merges
                out: dict[str, Any] = {}
                for key_node, value_node in node.value:
                    if not isinstance(key_node, yaml.ScalarNode):
                        line, col = pos(key_node)
                        problems.append(Problem(filename, line, col, _fmt(path), "mapping keys must be plain strings"))
                        continue
                    key = key_node.value  # raw text, so `on:` stays "on" rather than True
                    if key in out:
                        line, col = pos(key_node)
                        problems.append(Problem(filename, line, col, _fmt(path + (key,)), f"duplicate key '{key}'"))
                        continue
                    key_marks[path + (key,)] = pos(key_node)
                    out[key] = convert(value_node, path + (key,))
                return out
            return [convert(item, path + (i,)) for i, item in enumerate(node.value)]

        try:
            data = convert(root, ())
        except _TooBig:
            problems.append(Problem(filename, 1, 1, "yaml", f"the file expands to more than {MAX_NODES:,} nodes "
                                    "(aliases repeated inside aliases?)"))
            return None
        except RecursionError:
            problems.append(Problem(filename, 1, 1, "yaml", "the file is nested too deeply to read"))
            return None
        except yaml.YAMLError as exc:  # e.g. a bad merge key
            problems.append(_yaml_problem(filename, exc))
            return None
        return Source(filename, data, value_marks, key_marks)
    finally:
        loader.dispose()


def _yaml_problem(filename: str, exc: Exception) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    if mark is None and hasattr(exc, "position"):  # ReaderError: a character position in the text
        line, col = 1, 1
    text = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return Problem(filename, line, col, "yaml", f"YAML error: {text}")


def _fmt(path: PathT) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


# --------------------------------------------------------------------------- validation context

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

    def error(self, path: PathT, message: str, *, at_key: bool = False) -> None:
        if any(path[:i] in self._broken for i in range(len(path) + 1)):
            return
        line, col = self._mark(path, at_key)
        self.problems.append(Problem(self.source.filename, line, col, _fmt(path), message))

    def has_errors_under(self, path: PathT) -> bool:
        text = _fmt(path)
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
        ctx.error(path, f"{what} must be a mapping, not {_kind(value)}")
        return None
    return value


def _kind(value: Any) -> str:
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
        ctx.error(path, f"expected a string, not {_kind(value)}")
        return None
    return ctx.expand(str(value), path, secret=secret)


def as_secret(ctx: Ctx, value: Any, path: PathT) -> Secret | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        ctx.error(path, f"expected a string, not {_kind(value)}")
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
    ctx.error(path, f"expected true or false, not {_kind(value)}")
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
    ctx.error(path, f"expected a number, not {_kind(value)}")
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


def compile_template(ctx: Ctx, raw: str, expanded: str, path: PathT) -> Template | None:
    """Compile the expanded text; report errors from the file's own text, so a message never
    quotes a value substituted from the environment."""
    try:
        return Template(expanded)
    except TemplateError as exc:
        if raw == expanded:
            ctx.error(path, str(exc))
            return None
    try:
        Template(raw)
    except TemplateError as exc:
        ctx.error(path, str(exc))
        return None
    ctx.error(path, "template does not parse once its ${...} variables are substituted")
    return None


def as_template(ctx: Ctx, value: Any, path: PathT, *, secret: bool = False) -> Template | None:
    text = as_str(ctx, value, path, secret=secret)
    if text is None:
        return None
    return compile_template(ctx, str(value), text, path)


def as_structured_template(ctx: Ctx, value: Any, path: PathT) -> StructuredTemplate | Template | None:
    """A string template, or a YAML structure whose strings are templates."""
    if isinstance(value, str):
        return as_template(ctx, value, path)

    def expand(v: Any, p: PathT) -> Any:
        if isinstance(v, str):
            return ctx.expand(v, p)
        if isinstance(v, list):
            return [expand(x, p + (i,)) for i, x in enumerate(v)]
        if isinstance(v, dict):
            return {k: expand(x, p + (k,)) for k, x in v.items()}
        return v

    try:
        return StructuredTemplate(expand(value, path))
    except TemplateError:
        pass
    try:
        StructuredTemplate(value)
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
            ctx.error(p, f"expected a string, not {_kind(v)}")
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
            ctx.error(path, f"expected a list, not {_kind(value)}")
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


def as_url(ctx: Ctx, value: Any, path: PathT) -> str | None:
    text = as_str(ctx, value, path)
    if text is None:
        return None
    if not re.match(r"^https?://[^\s/]+", text):
        ctx.error(path, "must be an http:// or https:// URL")
        return None
    return text


def as_secret_url(ctx: Ctx, value: Any, path: PathT) -> Secret | None:
    secret = as_secret(ctx, value, path)
    if secret is None:
        return None
    if not re.match(r"^https?://[^\s/]+", secret.reveal()):
        ctx.error(path, "must be an http:// or https:// URL")
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


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class RetryPolicy:
    schedule: tuple[float, ...] = (10, 60, 300, 1800, 7200, 21600)
    jitter: float = 0.2


def as_retry(ctx: Ctx, value: Any, path: PathT) -> RetryPolicy | None:
    node = check_mapping(ctx, value, path, "retry")
    if node is None:
        return None
    fields = {"schedule": Field(list_of(as_duration)), "jitter": Field(fraction)}
    out = convert_fields(ctx, node, path, fields)
    default = RetryPolicy()
    schedule = out["schedule"]
    if schedule is not None and not schedule:
        ctx.error(path + ("schedule",), "needs at least one delay (the first retry); use [] only via max attempts")
        return None
    return RetryPolicy(
        tuple(schedule) if schedule else default.schedule,
        out["jitter"] if out["jitter"] is not None else default.jitter,
    )


@dataclass
class Settings:
    store: Path
    files_root: Path
    max_body_bytes: int = 1024 * 1024
    durability: str = "fsync"
    retention: float = 7 * 86400
    dead_letter_retention: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_after_cap: float = 3600
    trusted_proxies: list = field(default_factory=list)
    delivery_concurrency: int = 8


SETTINGS_FIELDS = {
    "store": Field(as_path),
    "files_root": Field(as_path),
    "max_body_bytes": Field(positive_int),
    "durability": Field(one_of("fsync", "process")),
    "retention": Field(as_duration),
    "dead_letter_retention": Field(as_duration),
    "retry": Field(as_retry),
    "retry_after_cap": Field(as_duration),
    "trusted_proxies": Field(list_of(as_network)),
    "delivery_concurrency": Field(positive_int),
}


@dataclass
class Dedupe:
    key: Template
    window: float


@dataclass
class ProviderSpec:
    name: str
    type: str
    impl: Any  # router.providers.Provider
    validator: Any  # a compiled jsonschema validator, or None
    token: Secret | None
    allow_from: list | None
    dedupe: Dedupe | None
    paths: list[str]


@dataclass
class ActionSpec:
    name: str
    type: str
    impl: Any  # router.actions.Action
    retry: RetryPolicy
    rate: float | None
    timeout: float


@dataclass
class Rule:
    index: int
    name: str
    providers: frozenset[str] | None  # None: any provider
    condition: Any  # router.conditions.Condition
    actions: list[str]
    stop: bool
    description: str | None = None


@dataclass
class Config:
    path: Path
    settings: Settings
    providers: dict[str, ProviderSpec]
    actions: dict[str, ActionSpec]
    rules: list[Rule]
    router: Any  # router.conditions.RuleSet
    redactor: Redactor
    paths: dict[str, str]  # extra URL path -> provider name
    source_text: str = ""

    def summary(self) -> str:
        return (
            f"{len(self.providers)} provider(s), {len(self.actions)} action(s), {len(self.rules)} rule(s); "
            f"store {self.settings.store}"
        )


# --------------------------------------------------------------------------- loading

TOP_KEYS = ("version", "settings", "providers", "actions", "rules")
PROVIDER_COMMON = ("type", "schema", "token", "allow_from", "dedupe", "paths")
ACTION_COMMON = ("type", "retry", "rate", "description")
RULE_KEYS = ("name", "description", "provider", "when", "actions", "stop")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def load(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> Config:
    """Load and check a rules file; raise ConfigError with every problem found."""
    path = Path(path)
    filename = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(filename, 1, 1, "(file)", f"cannot read the rules file: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([Problem(filename, line, 1, "(file)", "the rules file is not valid UTF-8")]) from None
    return loads(text, filename, base_dir=path.resolve().parent, env=env)


def loads(text: str, filename: str = "<rules>", *, base_dir: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    problems: list[Problem] = []
    source = _parse_yaml(text, filename, problems)
    if source is None:
        raise ConfigError(problems)
    ctx = Ctx(source, (base_dir or Path.cwd()).resolve(), os.environ if env is None else env)
    ctx.problems.extend(problems)
    try:
        config = _build(ctx)
    except RecursionError:
        ctx.problems.append(Problem(filename, 1, 1, "(root)", "the file is nested too deeply to check"))
        config = None
    found = ctx.finish()
    if found or config is None:
        raise ConfigError(found or [Problem(filename, 1, 1, "(root)", "invalid rules file")])
    config.redactor = ctx.redactor
    config.source_text = text
    return config


def _build(ctx: Ctx) -> Config | None:
    from router import actions as action_types
    from router import conditions
    from router import providers as provider_types

    root = ctx.source.data
    if root is None:
        ctx.error((), "the rules file is empty; it needs at least 'providers' and 'rules'")
        return None
    if not isinstance(root, dict):
        ctx.error((), f"the rules file must be a mapping with keys {', '.join(TOP_KEYS)}, not {_kind(root)}")
        return None
    for key in root:
        if key not in TOP_KEYS:
            ctx.error((key,), f"unknown top-level key '{key}'{did_you_mean(key, TOP_KEYS)}", at_key=True)
    version = root.get("version", 1)
    if version != 1 and str(version) != "1":
        ctx.error(("version",), f"unsupported version {version!r}; this router reads version 1")

    # settings ---------------------------------------------------------------
    settings_node = check_mapping(ctx, root.get("settings"), ("settings",), "settings") or {}
    s = convert_fields(ctx, settings_node, ("settings",), SETTINGS_FIELDS)
    settings = Settings(
        store=s["store"] or ctx.base_dir / "var" / "router.db",
        files_root=s["files_root"] or ctx.base_dir / "var" / "files",
        **{k: v for k, v in s.items() if k not in ("store", "files_root") and v is not None},
    )

    # providers --------------------------------------------------------------
    providers: dict[str, ProviderSpec] = {}
    extra_paths: dict[str, str] = {}
    providers_node = check_mapping(ctx, root.get("providers"), ("providers",), "providers")
    if providers_node == {} and "providers" not in root:
        ctx.error((), "missing required key 'providers'")
    for name, node in (providers_node or {}).items():
        p = ("providers", name)
        if not _NAME_RE.match(name):
            ctx.error(p, f"provider name '{name}' may use only letters, digits, '_', '-' and '.'", at_key=True)
            continue
        spec = _build_provider(ctx, name, node, p, provider_types)
        if spec is None:
            continue
        providers[name] = spec
        for i, url_path in enumerate(spec.paths):
            if url_path in extra_paths or url_path.startswith("/hooks/") or url_path in ("/healthz", "/readyz", "/metrics"):
                ctx.error(p + ("paths", i), f"path '{url_path}' is already taken")
            else:
                extra_paths[url_path] = name

    # actions ----------------------------------------------------------------
    actions: dict[str, ActionSpec] = {}
    actions_node = check_mapping(ctx, root.get("actions"), ("actions",), "actions")
    for name, node in (actions_node or {}).items():
        p = ("actions", name)
        if not _NAME_RE.match(name):
            ctx.error(p, f"action name '{name}' may use only letters, digits, '_', '-' and '.'", at_key=True)
            continue
        spec = _build_action(ctx, name, node, p, action_types, settings)
        if spec is not None:
            actions[name] = spec

    # rules ------------------------------------------------------------------
    rules: list[Rule] = []
    rules_node = root.get("rules")
    if rules_node is None:
        rules_node = []
    if not isinstance(rules_node, list):
        ctx.error(("rules",), f"rules must be a list, not {_kind(rules_node)}")
        rules_node = []
    seen_names: dict[str, int] = {}
    declared_providers = set((providers_node or {}).keys())
    declared_actions = set((actions_node or {}).keys())
    for i, node in enumerate(rules_node):
        p = ("rules", i)
        if not isinstance(node, dict):
            ctx.error(p, f"a rule must be a mapping with 'name' and 'actions', not {_kind(node)}")
            continue
        rule = _build_rule(ctx, i, node, p, declared_providers, declared_actions, seen_names, conditions)
        if rule is not None:
            rules.append(rule)

    if ctx.problems:
        return None
    return Config(
        path=ctx.base_dir,
        settings=settings,
        providers=providers,
        actions=actions,
        rules=rules,
        router=conditions.RuleSet(rules),
        redactor=ctx.redactor,
        paths=extra_paths,
    )


def _type_of(ctx: Ctx, node: dict, path: PathT, registry: Mapping[str, Any], what: str) -> Any:
    if "type" not in node or node["type"] is None:
        ctx.error(path, f"missing required key 'type' (one of {', '.join(sorted(registry))})")
        return None
    type_name = node["type"]
    if not isinstance(type_name, str) or type_name not in registry:
        ctx.error(
            path + ("type",),
            f"unknown {what} type '{type_name}'{did_you_mean(type_name, registry)}; known: {', '.join(sorted(registry))}",
        )
        return None
    return registry[type_name]


def _report_type_checks(ctx: Ctx, path: PathT, found: Iterable[tuple[str | None, str]]) -> bool:
    ok = True
    for key, message in found:
        ctx.error(path + ((key,) if key else ()), message)
        ok = False
    return ok


def _build_provider(ctx: Ctx, name: str, node: Any, p: PathT, registry: Any) -> ProviderSpec | None:
    from router import payload as schemas

    node = check_mapping(ctx, node, p, f"provider '{name}'")
    if node is None:
        return None
    cls = _type_of(ctx, node, p, registry.PROVIDER_TYPES, "provider")
    if cls is None:
        # still flag keys no provider knows, so one pass shows as much as it can
        return None
    common = {
        "schema": Field(as_path),
        "token": Field(as_secret),
        "allow_from": Field(list_of(as_network)),
        "dedupe": Field(_as_dedupe),
        "paths": Field(list_of(as_url_path), default=[]),
    }
    fields = {**common, **cls.options}
    out = convert_fields(ctx, node, p, fields, ignore=("type",))
    if out["token"] is not None and not out["token"]:
        ctx.error(p + ("token",), "token is empty; an empty token would let anyone in")
        out["token"] = None
    if not _report_type_checks(ctx, p, cls.check(out)):
        return None
    if out["schema"] is None and cls.bundled_schema is None and cls.schema_required:
        ctx.error(p, f"provider type '{cls.type_name}' needs a 'schema' (a JSON Schema file)")
        return None
    validator = None
    schema_path = out["schema"]
    if schema_path is not None:
        validator = schemas.load_validator_file(schema_path, lambda msg: ctx.error(p + ("schema",), msg))
    elif cls.bundled_schema:
        validator = schemas.bundled_validator(cls.bundled_schema)
    if ctx.has_errors_under(p):
        return None
    options = {k: v for k, v in out.items() if k not in common}
    return ProviderSpec(
        name=name,
        type=cls.type_name,
        impl=cls(name, options),
        validator=validator,
        token=out["token"],
        allow_from=out["allow_from"],
        dedupe=out["dedupe"],
        paths=out["paths"] or [],
    )


def _as_dedupe(ctx: Ctx, value: Any, path: PathT) -> Dedupe | None:
    node = check_mapping(ctx, value, path, "dedupe")
    if node is None:
        return None
    out = convert_fields(ctx, node, path, {"key": Field(as_template, required=True), "window": Field(as_duration, default=86400.0)})
    if out["key"] is None:
        return None
    return Dedupe(out["key"], out["window"] if out["window"] is not None else 86400.0)


def _build_action(ctx: Ctx, name: str, node: Any, p: PathT, registry: Any, settings: Settings) -> ActionSpec | None:
    node = check_mapping(ctx, node, p, f"action '{name}'")
    if node is None:
        return None
    cls = _type_of(ctx, node, p, registry.ACTION_TYPES, "action")
    if cls is None:
        return None
    common = {"retry": Field(as_retry), "rate": Field(positive_number), "description": Field(as_str)}
    out = convert_fields(ctx, node, p, {**common, **cls.options}, ignore=("type",))
    if not _report_type_checks(ctx, p, cls.check(out)):
        return None
    if ctx.has_errors_under(p):
        return None
    options = {k: v for k, v in out.items() if k not in common}
    impl = cls(name, options, settings)
    return ActionSpec(
        name=name,
        type=cls.type_name,
        impl=impl,
        retry=out["retry"] or settings.retry,
        rate=out["rate"] if out["rate"] is not None else cls.default_rate,
        timeout=impl.timeout,
    )


def _build_rule(
    ctx: Ctx,
    i: int,
    node: dict,
    p: PathT,
    providers: set[str],
    actions: set[str],
    seen: dict[str, int],
    conditions: Any,
) -> Rule | None:
    for key in node:
        if key not in RULE_KEYS:
            ctx.error(p + (key,), f"unknown key '{key}'{did_you_mean(key, RULE_KEYS)}", at_key=True)
    name = node.get("name")
    if name is None:
        ctx.error(p, "missing required key 'name'")
    elif not isinstance(name, (str, int)) or isinstance(name, bool):
        ctx.error(p + ("name",), f"a rule name must be a string, not {_kind(name)}")
        name = None
    else:
        name = str(name)
        if name in seen:
            ctx.error(p + ("name",), f"duplicate rule name '{name}' (first used by rules[{seen[name]}])")
        else:
            seen[name] = i

    rule_providers: frozenset[str] | None = None
    if node.get("provider") is not None:
        names = list_of(as_str)(ctx, node["provider"], p + ("provider",))
        if names is not None:
            raw = node["provider"] if isinstance(node["provider"], list) else [node["provider"]]
            for j, pname in enumerate(names):
                if pname not in providers:
                    where = p + ("provider", j) if isinstance(raw, list) and len(raw) > 1 or isinstance(node["provider"], list) else p + ("provider",)
                    ctx.error(where, f"undefined provider '{pname}'{did_you_mean(pname, providers)}")
            rule_providers = frozenset(names)

    action_names: list[str] = []
    raw_actions = node.get("actions")
    if raw_actions is None:
        ctx.error(p, "missing required key 'actions' (a list of action names)")
    else:
        names = list_of(as_str)(ctx, raw_actions, p + ("actions",))
        for j, aname in enumerate(names or []):
            where = p + ("actions", j) if isinstance(raw_actions, list) else p + ("actions",)
            if aname not in actions:
                ctx.error(where, f"undefined action '{aname}'{did_you_mean(aname, actions)}")
            elif aname in action_names:
                ctx.error(where, f"action '{aname}' is listed twice")
            else:
                action_names.append(aname)

    stop = False
    if node.get("stop") is not None:
        stop = as_bool(ctx, node["stop"], p + ("stop",)) or False
    description = as_str(ctx, node["description"], p + ("description",)) if node.get("description") is not None else None

    condition = conditions.compile_condition(ctx, node.get("when"), p + ("when",))
    if name is None or ctx.has_errors_under(p):
        return None
    return Rule(i, name, rule_providers, condition, action_names, stop, description)
