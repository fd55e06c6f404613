"""Loading and validating the rules file.

Strict, in two passes, in the manner of Alertmanager's config: first the structure of every node
(unknown keys are errors, values are converted and defaults applied), then the cross-references
(rules -> providers and actions, duplicate names). Every problem is collected, not just the first,
and each is reported at the line and column of the fault as `FILE:LINE:COL: path.in.file: message`.

The plugin registries (provider and action types) are imported here, at the top: they import the
field converters, never the loader, so there is no cycle.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from router.actions import ACTION_TYPES, Action
from router.config.fields import (
    Ctx,
    Field,
    as_bool,
    as_duration,
    as_network,
    as_path,
    as_secret,
    as_str,
    as_template,
    as_url_path,
    check_mapping,
    convert_fields,
    did_you_mean,
    kind,
    list_of,
    positive_number,
)
from router.config.lint import lint
from router.config.model import ActionSpec, Config, Dedupe, ProviderSpec
from router.config.settings import SETTINGS_FIELDS, STORE_ENV, Settings, as_retry, as_store
from router.config.source import PathT, parse_yaml
from router.errors import ConfigError, Problem
from router.pipeline import payload as schemas
from router.pipeline.conditions import Rule, RuleSet, compile_condition
from router.providers import PROVIDER_TYPES, Provider
from router.secret import Redactor
from router.templates import Template

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
    # A big file builds millions of objects, and the cycle collector, which walks all of them
    # each time it runs, took more than half of the load of 60,000 rules. Loading makes no cycles
    # worth collecting meanwhile (alias cycles are refused), and reference counting still frees.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _loads(text, filename, base_dir=base_dir, env=env)
    finally:
        if paused:
            gc.enable()


def _loads(text: str, filename: str, *, base_dir: Path | None, env: Mapping[str, str] | None) -> Config:
    problems: list[Problem] = []
    source = parse_yaml(text, filename, problems)
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
    config.warnings = lint(ctx, config)
    return config


def load_for_store(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> tuple[Settings, Redactor]:
    """What the store commands need of a rules file: its settings, and a redactor that knows every
    secret it can resolve. Leniently: only problems under `settings` (where the store is) count, so
    `router events list` works without the service's secrets in the environment, or after an edit
    that broke a rule."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([Problem(str(path), 1, 1, "(file)", f"cannot read the rules file: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(str(path), 1, 1, "(file)", "the rules file is not valid UTF-8")]) from None
    problems: list[Problem] = []
    source = parse_yaml(text, str(path), problems)
    if source is None:
        raise ConfigError(problems)
    ctx = Ctx(source, path.resolve().parent, os.environ if env is None else env)
    try:
        _build(ctx)  # for the settings and the redactor; the rest may well be broken here
    except RecursionError:
        pass
    found = [p for p in ctx.finish() if p.path == "settings" or p.path.startswith("settings.")]
    if found or ctx.settings is None:
        raise ConfigError(found or ctx.finish() or [Problem(str(path), 1, 1, "(root)", "invalid rules file")])
    return ctx.settings, ctx.redactor


def _build(ctx: Ctx) -> Config | None:
    root = ctx.source.data
    if root is None:
        ctx.error((), "the rules file is empty; it needs at least 'providers' and 'rules'")
        return None
    if not isinstance(root, dict):
        ctx.error((), f"the rules file must be a mapping with keys {', '.join(TOP_KEYS)}, not {kind(root)}")
        return None
    for key in root:
        if key not in TOP_KEYS:
            ctx.error((key,), f"unknown top-level key '{key}'{did_you_mean(key, TOP_KEYS)}", at_key=True)
    version = root.get("version", 1)
    if version != 1 and str(version) != "1":
        ctx.error(("version",), f"unsupported version {version!r}; this router reads version 1")

    # settings ---------------------------------------------------------------
    settings_node = check_mapping(ctx, root.get("settings"), ("settings",), "settings") or {}
    override = ctx.env.get(STORE_ENV)
    if override:  # the file's own store setting is not read (its ${VAR}s need not be set)
        settings_node = {k: v for k, v in settings_node.items() if k != "store"}
    s = convert_fields(ctx, settings_node, ("settings",), SETTINGS_FIELDS)
    if override:
        s["store"] = as_store(ctx, override, ("settings", "store"))
    settings = Settings(
        store=s["store"] or ctx.base_dir / "var" / "router.db",
        files_root=s["files_root"] or ctx.base_dir / "var" / "files",
        **{k: v for k, v in s.items() if k not in ("store", "files_root") and v is not None},
    )
    ctx.settings = settings

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
        spec = _build_provider(ctx, name, node, p)
        if spec is None:
            continue
        providers[name] = spec
        for i, url_path in enumerate(spec.paths):
            if url_path in extra_paths or url_path.startswith("/hooks/") or url_path in ("/healthz", "/readyz", "/metrics"):
                ctx.error(p + ("paths", i), f"path '{url_path}' is already taken")
            else:
                extra_paths[url_path] = name

    if settings.inspector is not None:
        ui = settings.inspector.path
        for url_path, owner in extra_paths.items():
            if url_path == ui or url_path.startswith(ui + "/"):
                ctx.error(("settings", "inspector", "path"), f"path '{ui}' is also provider '{owner}''s path {url_path}")

    # actions ----------------------------------------------------------------
    actions: dict[str, ActionSpec] = {}
    actions_node = check_mapping(ctx, root.get("actions"), ("actions",), "actions")
    for name, node in (actions_node or {}).items():
        p = ("actions", name)
        if not _NAME_RE.match(name):
            ctx.error(p, f"action name '{name}' may use only letters, digits, '_', '-' and '.'", at_key=True)
            continue
        action = _build_action(ctx, name, node, p, settings)
        if action is not None:
            actions[name] = action

    # rules ------------------------------------------------------------------
    rules: list[Rule] = []
    rules_node = root.get("rules")
    if rules_node is None:
        rules_node = []
    if not isinstance(rules_node, list):
        ctx.error(("rules",), f"rules must be a list, not {kind(rules_node)}")
        rules_node = []
    seen_names: dict[str, int] = {}
    declared_providers = set((providers_node or {}).keys())
    declared_actions = set((actions_node or {}).keys())
    for i, node in enumerate(rules_node):
        p = ("rules", i)
        if not isinstance(node, dict):
            ctx.error(p, f"a rule must be a mapping with 'name' and 'actions', not {kind(node)}")
            continue
        rule = _build_rule(ctx, i, node, p, declared_providers, declared_actions, seen_names)
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
        router=RuleSet(rules),
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


def _build_provider(ctx: Ctx, name: str, node: Any, p: PathT) -> ProviderSpec | None:
    node = check_mapping(ctx, node, p, f"provider '{name}'")
    if node is None:
        return None
    cls: type[Provider] | None = _type_of(ctx, node, p, PROVIDER_TYPES, "provider")
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
    dedupe_off = out["dedupe"] is DEDUPE_OFF
    return ProviderSpec(
        name=name,
        type=cls.type_name,
        impl=cls(name, options),
        validator=validator,
        token=out["token"],
        allow_from=out["allow_from"],
        dedupe=None if dedupe_off else out["dedupe"],
        paths=out["paths"] or [],
        default_dedupe=not dedupe_off,
    )


DEDUPE_OFF = "off"  # `dedupe: off` (YAML reads a bare off as false): not even the provider's delivery id


def _as_dedupe(ctx: Ctx, value: Any, path: PathT) -> Dedupe | str | None:
    if value is False or value == DEDUPE_OFF:
        return DEDUPE_OFF
    if value is not None and not isinstance(value, dict):
        ctx.error(path, f"dedupe must be a mapping with 'key' and 'window', or off; not {kind(value)}")
        return None
    node = check_mapping(ctx, value, path, "dedupe")
    if node is None:
        return None
    out = convert_fields(ctx, node, path, {"key": Field(_as_dedupe_key, required=True),
                                           "window": Field(as_duration, default=86400.0)})
    if out["key"] is None:
        return None
    return Dedupe(out["key"], out["window"] if out["window"] is not None else 86400.0)


def _as_dedupe_key(ctx: Ctx, value: Any, path: PathT) -> Template | list[Template] | None:
    """One template, or a list of them: the list is the unambiguous form for a key of several values."""
    if not isinstance(value, list):
        return as_template(ctx, value, path)
    if not value:
        ctx.error(path, "dedupe.key is an empty list; give one template per value, e.g. "
                        "[\"{{ payload.event }}\", \"{{ payload.asset_id }}\"]")
        return None
    parts = [as_template(ctx, item, path + (i,)) for i, item in enumerate(value)]
    return None if any(p is None for p in parts) else parts  # type: ignore[return-value]


def _build_action(ctx: Ctx, name: str, node: Any, p: PathT, settings: Settings) -> ActionSpec | None:
    node = check_mapping(ctx, node, p, f"action '{name}'")
    if node is None:
        return None
    cls: type[Action] | None = _type_of(ctx, node, p, ACTION_TYPES, "action")
    if cls is None:
        return None
    common = {"retry": Field(as_retry), "rate": Field(positive_number), "description": Field(as_str)}
    out = convert_fields(ctx, node, p, {**common, **cls.options}, ignore=("type",))
    if ctx.has_errors_under(p):
        return None  # a field already failed (say, a template that does not parse): checking more says it twice
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
) -> Rule | None:
    for key in node:
        if key not in RULE_KEYS:
            ctx.error(p + (key,), f"unknown key '{key}'{did_you_mean(key, RULE_KEYS)}", at_key=True)
    name = node.get("name")
    if name is None:
        ctx.error(p, "missing required key 'name'")
    elif not isinstance(name, (str, int)) or isinstance(name, bool):
        ctx.error(p + ("name",), f"a rule name must be a string, not {kind(name)}")
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

    condition = compile_condition(ctx, node.get("when"), p + ("when",))
    if name is None or ctx.has_errors_under(p):
        return None
    return Rule(i, name, rule_providers, condition, action_names, stop, description, line=ctx.mark(p)[0])
