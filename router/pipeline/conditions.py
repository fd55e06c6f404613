"""Conditions and routing: compiled once when the rules file loads, matched per event.

A condition is a mapping of `path: matcher` (all must hold), or `all:`/`any:`/`not:` around others.
Paths reach into the payload (`data.items[*].kind`, `items[0]`), or outside it (`$headers.NAME`,
`$query.NAME`, `$provider`, and `$event`: the event type as the provider names it).

With `[*]` a path names several values. A positive operator holds when some value satisfies every
positive operator of the matcher; `ne` and `not_in` hold when no value equals / is in the list; so
`risk_level: {ne: HIGH}` reads "no category is HIGH". A missing path has no values: every operator
is false except `exists: false`, `ne` and `not_in`.

Matching cost does not grow with rules that cannot apply: rules are indexed by provider, and then
by equality on discriminating fields (`event: version_generated`, `asset_id: {in: [...]}`), nested,
so 10,000 rules keyed on event and asset cost about as much as ten.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from router.config.fields import Ctx, did_you_mean
from router.config.fields import kind as kind_of
from router.config.source import PathT
from router.pipeline.regex import RegexError, compile_regex

MISSING = object()

OPERATORS = ("eq", "ne", "in", "not_in", "regex", "exists", "gt", "gte", "lt", "lte", "contains", "startswith")
COMBINATORS = ("all", "any", "not")


@dataclass
class EventView:
    """What conditions and templates see of an event."""

    payload: Any
    headers: Mapping[str, str]  # keys lower-cased
    query: Mapping[str, str]
    provider: str
    event_type: str | None = None  # the provider's name for the event (`$event`), when it has one


# --------------------------------------------------------------------------- paths

_TOKEN_RE = re.compile(r"\.?([^.\[\]]+)|\[(\*|-?\d+)\]")


def parse_path(text: str) -> list[tuple[str, Any]] | None:
    """`a.b[*].c[0]` -> [("key","a"), ("key","b"), ("any",None), ("key","c"), ("index",0)]."""
    tokens: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            return None
        if m.group(1) is not None:
            # a key follows a dot, except the very first one
            if m.group(0).startswith(".") == (pos == 0):
                return None
            tokens.append(("key", m.group(1)))
        elif m.group(2) == "*":
            tokens.append(("any", None))
        else:
            tokens.append(("index", int(m.group(2))))
        pos = m.end()
    return tokens or None


class Resolver:
    """Finds the values a path names in an event."""

    __slots__ = ("text", "root", "tokens", "single")

    def __init__(self, text: str, root: str, tokens: list[tuple[str, Any]]):
        self.text = text
        self.root = root  # "payload", "headers", "query" or "provider"
        self.tokens = tokens
        self.single = all(kind != "any" for kind, _ in tokens)

    def _start(self, event: EventView) -> Any:
        if self.root == "payload":
            return event.payload
        if self.root == "headers":
            return event.headers
        if self.root == "query":
            return event.query
        if self.root == "event":
            return MISSING if event.event_type is None else event.event_type
        return event.provider

    def one(self, event: EventView) -> Any:
        """The value of a path without [*], or MISSING."""
        value = self._start(event)
        for kind, arg in self.tokens:
            if kind == "key":
                if not isinstance(value, dict) or arg not in value:
                    return MISSING
                value = value[arg]
            else:
                if not isinstance(value, list) or not -len(value) <= arg < len(value):
                    return MISSING
                value = value[arg]
        return value

    def all(self, event: EventView) -> list[Any]:
        if self.single:
            v = self.one(event)
            return [] if v is MISSING else [v]
        current = [self._start(event)]
        for kind, arg in self.tokens:
            nxt: list[Any] = []
            for value in current:
                if kind == "key":
                    if isinstance(value, dict) and arg in value:
                        nxt.append(value[arg])
                elif kind == "index":
                    if isinstance(value, list) and -len(value) <= arg < len(value):
                        nxt.append(value[arg])
                elif isinstance(value, list):
                    nxt.extend(value)
            current = nxt
            if not current:
                break
        return current


def compile_path(ctx: Ctx, text: str, path: PathT) -> Resolver | None:
    if text == "$provider":
        return Resolver(text, "provider", [])
    if text == "$event":
        return Resolver(text, "event", [])
    for prefix, root, lower in (("$headers.", "headers", True), ("$query.", "query", False)):
        if text.startswith(prefix):
            name = text[len(prefix):]
            if not name:
                break
            return Resolver(text, root, [("key", name.lower() if lower else name)])
    if text.startswith("$"):
        ctx.error(path, f"unknown path '{text}'{did_you_mean(text.split('.')[0], ['$headers', '$query', '$provider', '$event'])}; "
                        "paths outside the payload are $headers.NAME, $query.NAME, $provider and $event", at_key=True)
        return None
    tokens = parse_path(text)
    if tokens is None:
        ctx.error(path, f"invalid path '{text}' (write dotted keys with [*] or [N] for lists, e.g. data.items[*].kind)", at_key=True)
        return None
    return Resolver(text, "payload", tokens)


# --------------------------------------------------------------------------- values


def json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON means it: true is not 1, "1" is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if type(a) is not type(b):
        return False
    return a == b


def hash_key(value: Any) -> Any:
    """A key for the rule index that agrees with json_equal, or None when the value is unhashable."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if value is None:
        return ("z", None)
    return None


def _ordered(a: Any, b: Any) -> bool:
    """Whether a and b can be compared with < (both numbers, or both strings)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return (isinstance(a, (int, float)) and isinstance(b, (int, float))) or (isinstance(a, str) and isinstance(b, str))


# --------------------------------------------------------------------------- conditions

Predicate = Callable[[EventView], bool]


@dataclass
class Check:
    """One `path: matcher` of a condition, kept whole so `router test --explain` can say why it
    failed. Matching never reads it: the closures in Condition.test are the fast path."""

    path: str
    where: PathT  # the matcher's place in the rules file
    resolver: Resolver
    matcher: Any  # as written in the rules file
    test: Callable[[list[Any]], bool]
    why_not: Callable[[list[Any]], list[tuple[str, Any]]]  # the operators that fail, given the values


@dataclass
class Group:
    """`all`, `any` or `not` over other parts (a mapping of several paths is an `all`)."""

    kind: str
    where: PathT
    parts: list[Check | Group]


class Condition:
    """A compiled condition: call it with an EventView. `equalities` feed the rule index; `tree`
    is the structure for tracing (None for an absent `when`)."""

    __slots__ = ("test", "equalities", "tree")

    def __init__(self, test: Predicate, equalities: dict[str, tuple[Resolver, frozenset]] | None = None,
                 tree: Group | None = None):
        self.test = test
        self.equalities = equalities or {}
        self.tree = tree

    def __call__(self, event: EventView) -> bool:
        return self.test(event)


ALWAYS = Condition(lambda event: True)


def compile_condition(ctx: Ctx, node: Any, path: PathT) -> Condition:
    if node is None:
        return ALWAYS
    if not isinstance(node, dict):
        ctx.error(path, f"a condition must be a mapping of path: matcher (or all/any/not), not {kind_of(node)}")
        return ALWAYS
    if not node:
        return ALWAYS
    parts: list[Predicate] = []
    equalities: dict[str, tuple[Resolver, frozenset]] = {}
    tree = Group("all", path, [])
    for key, value in node.items():
        p = path + (key,)
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                ctx.error(p, f"'{key}' takes a non-empty list of conditions")
                continue
            subs = [compile_condition(ctx, item, p + (i,)) for i, item in enumerate(value)]
            tree.parts.append(Group(key, p, [_tree_of(s, p + (i,)) for i, s in enumerate(subs)]))
            if key == "all":
                for sub in subs:
                    for k, v in sub.equalities.items():
                        equalities.setdefault(k, v)
                parts.append(_all([s.test for s in subs]))
            else:
                parts.append(_any([s.test for s in subs]))
        elif key == "not":
            sub = compile_condition(ctx, value, p)
            tree.parts.append(Group("not", p, [_tree_of(sub, p)]))
            parts.append(_not(sub.test))
        else:
            resolver = compile_path(ctx, key, p)
            matcher = _compile_matcher(ctx, value, p)
            if resolver is None or matcher is None:
                continue
            test, eq_values, why_not = matcher
            tree.parts.append(Check(key, p, resolver, value, test, why_not))
            parts.append(_bind(resolver, test))
            if eq_values is not None and resolver.single:
                equalities.setdefault(resolver.text, (resolver, eq_values))
    return Condition(_all(parts), equalities, tree)


def _tree_of(condition: Condition, path: PathT) -> Group:
    return condition.tree if condition.tree is not None else Group("all", path, [])


def _all(tests: list[Predicate]) -> Predicate:
    if len(tests) == 1:
        return tests[0]
    return lambda event: all(t(event) for t in tests)


def _any(tests: list[Predicate]) -> Predicate:
    return lambda event: any(t(event) for t in tests)


def _not(test: Predicate) -> Predicate:
    return lambda event: not test(event)


def _bind(resolver: Resolver, test: Callable[[list[Any]], bool]) -> Predicate:
    return lambda event: test(resolver.all(event))


def _scalar_value(ctx: Ctx, value: Any, path: PathT) -> Any:
    return ctx.expand(value, path) if isinstance(value, str) else value


Matcher = tuple[Callable[[list[Any]], bool], "frozenset | None", Callable[[list[Any]], list[tuple[str, Any]]]]


def _compile_matcher(ctx: Ctx, node: Any, path: PathT) -> Matcher | None:
    """A matcher tests the list of values a path names. Returns (test, equality keys for the index,
    why_not: the operators that fail for given values, for tracing)."""
    if isinstance(node, list):
        ctx.error(path, "a list is not a matcher; to match any of several values write {in: [...]}")
        return None
    if not isinstance(node, dict):
        expected = _scalar_value(ctx, node, path)
        key = hash_key(expected)

        def equal(values: list[Any]) -> bool:
            return any(json_equal(v, expected) for v in values)

        # a trace names the value as written (`${VAR}` unexpanded): what came from the environment is not shown
        return equal, (frozenset([key]) if key else None), (lambda values: [] if equal(values) else [("eq", node)])

    positives: list[Callable[[Any], bool]] = []
    negatives: list[Callable[[Any], bool]] = []  # a value for which this is true breaks the matcher
    exists: bool | None = None
    eq_keys: frozenset | None = None
    # which operator appended which positives/negatives, so a trace can name the one that failed
    marks: list[tuple[str, Any, int, int]] = []
    for op, arg in node.items():
        marks.append((op, arg, len(positives), len(negatives)))
        p = path + (op,)
        if op not in OPERATORS:
            hint = did_you_mean(op, OPERATORS)
            ctx.error(p, f"unknown operator '{op}'{hint}; operators are {', '.join(OPERATORS)}", at_key=True)
            continue
        if op in ("eq", "ne"):
            expected = _scalar_value(ctx, arg, p)
            fn = (lambda e: lambda v: json_equal(v, e))(expected)
            if op == "eq":
                positives.append(fn)
                k = hash_key(expected)
                eq_keys = frozenset([k]) if k else eq_keys
            else:
                negatives.append(fn)
        elif op in ("in", "not_in"):
            if not isinstance(arg, list):
                ctx.error(p, f"'{op}' takes a list of values, not {kind_of(arg)}")
                continue
            options = [_scalar_value(ctx, a, p + (i,)) for i, a in enumerate(arg)]
            keys = {hash_key(o) for o in options}
            if None not in keys:
                fn = (lambda ks: lambda v: hash_key(v) in ks)(frozenset(keys))
            else:
                fn = (lambda opts: lambda v: any(json_equal(v, o) for o in opts))(options)
            if op == "in":
                positives.append(fn)
                if None not in keys:
                    eq_keys = frozenset(keys)
            else:
                negatives.append(fn)
        elif op == "regex":
            if not isinstance(arg, str):
                ctx.error(p, f"'regex' takes a string, not {kind_of(arg)}")
                continue
            try:
                rx = compile_regex(_scalar_value(ctx, arg, p))
            except RegexError as exc:
                ctx.error(p, str(exc))
                continue
            positives.append((lambda r: lambda v: isinstance(v, str) and r.search(v) is not None)(rx))
        elif op == "exists":
            if not isinstance(arg, bool):
                ctx.error(p, f"'exists' takes true or false, not {kind_of(arg)}")
                continue
            exists = arg
        elif op in ("gt", "gte", "lt", "lte"):
            bound = _scalar_value(ctx, arg, p)
            if isinstance(bound, bool) or not isinstance(bound, (int, float, str)):
                ctx.error(p, f"'{op}' takes a number or a string, not {kind_of(arg)}")
                continue
            compare = {
                "gt": lambda a, b: a > b,
                "gte": lambda a, b: a >= b,
                "lt": lambda a, b: a < b,
                "lte": lambda a, b: a <= b,
            }[op]
            positives.append((lambda b, c: lambda v: _ordered(v, b) and c(v, b))(bound, compare))
        elif op == "contains":
            needle = _scalar_value(ctx, arg, p)

            def contains(v: Any, needle: Any = needle) -> bool:
                if isinstance(v, list):
                    return any(json_equal(item, needle) for item in v)
                return isinstance(v, str) and isinstance(needle, str) and needle in v

            positives.append(contains)
        elif op == "startswith":
            if not isinstance(arg, str):
                ctx.error(p, f"'startswith' takes a string, not {kind_of(arg)}")
                continue
            prefix = _scalar_value(ctx, arg, p)
            positives.append((lambda pre: lambda v: isinstance(v, str) and v.startswith(pre))(prefix))
    if not node:
        ctx.error(path, "an empty matcher; give a value or operators such as {eq: x}")
        return None

    def test(values: list[Any]) -> bool:
        if exists is not None and bool(values) != exists:
            return False
        for neg in negatives:
            if any(neg(v) for v in values):
                return False
        if positives:
            return any(all(pos(v) for pos in positives) for v in values)
        return True

    ends = [(m[2], m[3]) for m in marks[1:]] + [(len(positives), len(negatives))]
    by_op = [(op, arg, positives[p0:p1], negatives[n0:n1]) for (op, arg, p0, n0), (p1, n1) in zip(marks, ends)]

    def why_not(values: list[Any]) -> list[tuple[str, Any]]:
        failed: list[tuple[str, Any]] = []
        if exists is not None and bool(values) != exists:
            failed.append(("exists", exists))
        for op, arg, _, negs in by_op:
            if negs and any(neg(v) for neg in negs for v in values):
                failed.append((op, arg))
        if positives and not any(all(pos(v) for pos in positives) for v in values):
            alone = [(op, arg) for op, arg, poss, _ in by_op if poss and not any(all(f(v) for f in poss) for v in values)]
            # each operator holds for some value, but no single value satisfies all of them
            failed.extend(alone or [("all of", {op: arg for op, arg, poss, _ in by_op if poss})])
        return failed

    return test, eq_keys, why_not


# --------------------------------------------------------------------------- routing


class _IndexNode:
    """Rules split by the value of one discriminating path; rules without it go to `rest`."""

    MIN_SPLIT = 4  # below this many rules a plain list is cheapest
    MAX_DEPTH = 4

    def __init__(self, rules: list[Any], used: frozenset[str] = frozenset(), depth: int = 0):
        self.leaf: list[int] | None = None
        counts: Counter[str] = Counter()
        resolvers: dict[str, Resolver] = {}
        for r in rules:
            for text, (resolver, _) in r.condition.equalities.items():
                if text not in used:
                    counts[text] += 1
                    resolvers[text] = resolver
        if depth >= self.MAX_DEPTH or len(rules) < self.MIN_SPLIT or not counts:
            self.leaf = [r.index for r in rules]
            return
        best = max(counts, key=lambda t: counts[t])
        if counts[best] < 2:
            self.leaf = [r.index for r in rules]
            return
        self.resolver = resolvers[best]
        groups: dict[Any, list[Any]] = defaultdict(list)
        rest: list[Any] = []
        for r in rules:
            eq = r.condition.equalities.get(best)
            if eq is None:
                rest.append(r)
            else:
                for key in eq[1]:
                    groups[key].append(r)
        used = used | {best}
        self.buckets = {k: _IndexNode(rs, used, depth + 1) for k, rs in groups.items()}
        self.rest = _IndexNode(rest, used, depth + 1) if rest else None

    def collect(self, event: EventView, out: list[int]) -> None:
        if self.leaf is not None:
            out.extend(self.leaf)
            return
        value = self.resolver.one(event)
        if value is not MISSING:
            key = hash_key(value)
            bucket = self.buckets.get(key) if key is not None else None
            if bucket is not None:
                bucket.collect(event, out)
        if self.rest is not None:
            self.rest.collect(event, out)


@dataclass
class Rule:
    index: int
    name: str
    providers: frozenset[str] | None  # None: any provider
    condition: Condition
    actions: list[str]
    stop: bool
    description: str | None = None
    line: int = 0  # where the rule begins in the rules file (for explanations)


class RuleSet:
    """Every rule, in file order, with an index per provider. `match` returns the rules that fire."""

    def __init__(self, rules: list[Rule]):
        self.rules = {r.index: r for r in rules}
        self._any_provider = [r for r in rules if r.providers is None]
        named = {p for r in rules if r.providers for p in r.providers}
        self._by_provider = {
            name: _IndexNode([r for r in rules if r.providers is None or name in r.providers]) for name in named
        }
        self._fallback = _IndexNode(self._any_provider)

    def match(self, event: EventView) -> list[Rule]:
        node = self._by_provider.get(event.provider, self._fallback)
        candidates: list[int] = []
        node.collect(event, candidates)
        candidates.sort()
        matched = []
        for index in candidates:
            rule = self.rules[index]
            if rule.condition(event):
                matched.append(rule)
                if rule.stop:
                    break
        return matched
