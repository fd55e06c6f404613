"""Warnings about a rules file that loads but probably does not say what its author meant.

- a condition path, a template's `payload.…` reference or a dedupe key that names a field the
  provider's JSON Schema does not have (`data.is_eror`), with a did-you-mean from the schema;
- a template variable that no template is given (`{{ paylod.x }}`);
- an action that no rule uses.

Warnings do not stop a file loading (`router validate --strict` makes them errors). A schema
that leaves an object free-form (no `properties`) cannot say a key is wrong, so nothing is said
there: a warning is given only where the schema lists the fields and the name is not among them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jinja2
from jinja2 import meta, nodes

from router.config.fields import Ctx, did_you_mean
from router.config.model import Config
from router.config.source import PathT, fmt_path
from router.errors import Problem
from router.pipeline.conditions import Check, Group

TEMPLATE_NAMES = ("payload", "headers", "query", "provider", "event_id", "received_at", "rule", "event_type")
_parser = jinja2.Environment()  # parsing only: the same syntax as the sandbox that renders
_parser.filters["slack_raw"] = str  # known to Slack templates (router.templates); only its name matters here
OPEN = None  # a path the schema cannot rule out


def lint(ctx: Ctx, config: Config) -> list[Problem]:
    warnings: dict[Problem, None] = {}  # in order, each once

    def warn(path: PathT, message: str, at_key: bool = False) -> None:
        line, col = ctx.mark(path, at_key)
        warnings[Problem(ctx.source.filename, line, col, fmt_path(path), "warning: " + ctx.redactor(message))] = None

    schemas = {name: _schema_of(spec) for name, spec in config.providers.items()}
    root = ctx.source.data if isinstance(ctx.source.data, dict) else {}

    # actions no rule uses ----------------------------------------------------------------------
    used: dict[str, set[str] | None] = {}  # action -> the providers its rules are for (None: any)
    for rule in config.rules:
        for action in rule.actions:
            known = used.get(action, set())
            used[action] = None if rule.providers is None or known is None else known | rule.providers
    for name in config.actions:
        if name not in used:
            warn(("actions", name), f"action '{name}' is not used by any rule", at_key=True)

    # condition paths -----------------------------------------------------------------------------
    for rule in config.rules:
        if rule.providers is None or rule.condition.tree is None:
            continue
        for check in _checks(rule.condition.tree):
            if check.resolver.root != "payload":
                continue
            message = _path_problem(check.resolver.tokens, rule.providers, schemas)
            if message:
                warn(check.where, message, at_key=True)

    # templates: actions, and each provider's dedupe key ------------------------------------------
    actions_node = root.get("actions") if isinstance(root.get("actions"), dict) else {}
    for name, node in (actions_node or {}).items():
        if name not in config.actions:
            continue
        providers = used.get(name, None)
        for path, text in _template_strings(node, ("actions", name)):
            for message in _template_problems(text, providers, schemas):
                warn(path, message)
    providers_node = root.get("providers") if isinstance(root.get("providers"), dict) else {}
    for name, spec in config.providers.items():
        node = (providers_node or {}).get(name)
        if spec.dedupe is None or not isinstance(node, dict) or not isinstance(node.get("dedupe"), dict):
            continue
        key = node["dedupe"].get("key")
        parts = [(("providers", name, "dedupe", "key"), key)] if isinstance(key, str) else \
            [(("providers", name, "dedupe", "key", i), k) for i, k in enumerate(key) if isinstance(k, str)] \
            if isinstance(key, list) else []
        for path, text in parts:
            for message in _template_problems(text, {name}, schemas):
                warn(path, message)

    # the inspector's password over plain HTTP ---------------------------------------------------
    inspector = config.settings.inspector
    if inspector is not None and inspector.enabled and not inspector.behind_tls:
        warn(("settings", "inspector"), f"the inspector is on at {inspector.path} and its password travels by HTTP "
             "Basic: serve it on a loopback bind (router serve's default) or put TLS in front and set "
             "behind_tls: true", at_key=True)
    return sorted(warnings, key=lambda p: (p.line, p.column))


def _schema_of(spec: Any) -> Any:
    validator = spec.validator
    reference = getattr(validator, "reference", None)
    return getattr(reference, "schema", OPEN) if reference is not None else OPEN


def _checks(node: Check | Group) -> Iterator[Check]:
    if isinstance(node, Check):
        yield node
        return
    for part in node.parts:
        yield from _checks(part)


def _template_strings(value: Any, path: PathT) -> Iterator[tuple[PathT, str]]:
    if isinstance(value, str):
        if "{{" in value or "{%" in value:
            yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _template_strings(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _template_strings(v, path + (i,))


def _template_problems(text: str, providers: set[str] | None, schemas: dict[str, Any]) -> list[str]:
    try:
        ast = _parser.parse(text)
    except jinja2.TemplateSyntaxError:
        return []  # reported as an error already
    out = []
    for name in sorted(meta.find_undeclared_variables(ast)):
        if name not in TEMPLATE_NAMES and name not in _parser.globals:
            out.append(f"template variable '{name}' is never given{did_you_mean(name, TEMPLATE_NAMES)}; "
                       f"templates see {', '.join(TEMPLATE_NAMES)}")
    if providers is None:
        return out
    called = {id(n.node) for n in ast.find_all(nodes.Call)}
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if id(node) in called:
            continue  # payload.get(...) is a method, not a field
        tokens = _chain(node)
        if tokens:
            message = _path_problem(tokens, providers, schemas)
            if message:
                shown = "payload" + "".join(f".{a}" if k == "key" else f"[{a}]" for k, a in tokens)
                out.append(f"{{{{ {shown} }}}}: {message}")
    return out


def _chain(node: Any) -> list[tuple[str, Any]] | None:
    """`payload.a["b"][0]` -> [("key","a"), ("key","b"), ("index",0)]; None when not rooted at payload."""
    tokens: list[tuple[str, Any]] = []
    while True:
        if isinstance(node, nodes.Getattr):
            tokens.append(("key", node.attr))
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            arg = node.arg.value
            tokens.append(("index", arg) if isinstance(arg, int) else ("key", str(arg)))
            node = node.node
        elif isinstance(node, nodes.Getitem):
            tokens = []  # a computed index: only what follows is unknowable; check the part before it
            node = node.node
        else:
            break
    if not (isinstance(node, nodes.Name) and node.name == "payload"):
        return None
    tokens.reverse()
    return tokens or None


def _path_problem(tokens: list[tuple[str, Any]], providers: set[str] | frozenset[str],
                  schemas: dict[str, Any]) -> str | None:
    """A message when the path can exist in none of these providers' schemas, else None."""
    messages = []
    for name in sorted(providers):
        schema = schemas.get(name, OPEN)
        if schema is OPEN:
            return None
        message = _walk(schema, tokens)
        if message is None:
            return None
        messages.append((name, message))
    if not messages:
        return None
    name, message = messages[0]
    where = f"provider '{name}'" if len(messages) == 1 else "providers " + ", ".join(f"'{n}'" for n, _ in messages)
    return f"{message} in the schema of {where}"


def _walk(schema: Any, tokens: list[tuple[str, Any]]) -> str | None:
    candidates = _flatten([schema], schema)
    done: list[str] = []
    for kind, arg in tokens:
        if candidates is OPEN:
            return None
        nxt: list[Any] = []
        if kind == "key":
            declared: set[str] = set()
            open_here = False
            for node in candidates:
                props = node.get("properties")
                if isinstance(props, dict):
                    declared.update(props)
                    if arg in props:
                        nxt.append(props[arg])
                for pattern, sub in (node.get("patternProperties") or {}).items():
                    try:
                        if re.search(pattern, str(arg)):
                            nxt.append(sub)
                    except re.error:
                        open_here = True
                if isinstance(node.get("additionalProperties"), dict) and arg not in (props or {}):
                    nxt.append(node["additionalProperties"])
            if not nxt:
                if open_here or not declared:
                    return None  # a free-form object: any key may be there
                at = ".".join(done) or "the top level"
                return f"'{arg}' is not a field at {at}{did_you_mean(str(arg), sorted(declared))}"
            done.append(str(arg))
        else:
            for node in candidates:
                items = node.get("items")
                if isinstance(items, dict):
                    nxt.append(items)
                elif isinstance(items, list):
                    nxt.extend(items)
                for sub in node.get("prefixItems") or []:
                    nxt.append(sub)
            if not nxt:
                return None
            done[-1:] = [f"{done[-1]}[*]" if done else "[*]"]
        candidates = _flatten(nxt, schema)
    return None


def _flatten(nodes_: list[Any], root: Any) -> Any:
    """Every schema these stand for, through $ref (local), allOf/anyOf/oneOf and if/then/else;
    OPEN when one of them allows anything (true, {} or a $ref we cannot follow)."""
    out: list[dict] = []
    seen: set[int] = set()
    stack = list(nodes_)
    while stack:
        node = stack.pop()
        if node is True:
            return OPEN
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = _resolve(root, ref)
            if target is OPEN:
                return OPEN
            stack.append(target)
        for key in ("allOf", "anyOf", "oneOf"):
            stack.extend(node.get(key) or [])
        for key in ("if", "then", "else"):
            if key in node:
                stack.append(node[key])
        out.append(node)
    return out


def _resolve(root: Any, ref: str) -> Any:
    base, _, fragment = ref.partition("#")
    if base and not (isinstance(root, dict) and base == root.get("$id")):  # fastjsonschema makes refs absolute
        return OPEN
    ref = "#" + fragment
    node = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return OPEN
    return node
