"""Jinja2 templates in a sandbox, compiled once when the rules file loads, bounded when they render.

Rendered values are data: a payload value holding `{{ 7*7 }}` renders as those characters, because
Jinja never renders its own output again.

Bounds. A template renders at most MAX_OUTPUT characters, builds no string or list longer than
that on the way (`'a' * 50000000`, `'x'.ljust(10**9)`, `'%099999999d' % 1` are refused before they
are built), no integer wider than MAX_INT_BITS (`9 ** 9 ** 9`), and takes at most MAX_STEPS loop
iterations and calls (nested `range`s, recursive macros) and MAX_CPU_SECONDS of its thread's CPU.
A template that passes a bound fails with a TemplateError saying which, so the delivery fails
permanently with that reason. What can be seen without rendering (constant expressions, constant
`range`s) is refused when the rules file loads.

Slack. Slack reads `&`, `<` and `>` as markup (`<!channel>`, `<http://x|label>`), so a template
made with `slack=True` escapes them in every value it substitutes (`{{ ... }}`), as Slack's
"Escaping text" asks; the template's own text is the author's markup and is left alone, and
`{{ value | slack_raw }}` inserts a value unescaped.
"""

from __future__ import annotations

import json
import re
import string
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator
from functools import update_wrapper
from typing import Any

from jinja2 import TemplateSyntaxError, Undefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment

MAX_OUTPUT = 8 * 1024 * 1024  # characters a render may produce, and the longest string or list it may build
MAX_STEPS = 1_000_000  # loop iterations plus calls in one render
MAX_CPU_SECONDS = 1.0  # of the rendering thread's own CPU time, so a busy machine does not trip it
MAX_INT_BITS = 64 * 1024


class TemplateError(Exception):
    """A template failed to compile or render; the message names the cause, not the context."""


class TemplateLimit(Exception):
    """A template passed one of its bounds (raised inside a render, reported as a TemplateError)."""


# --------------------------------------------------------------------------- the budget of one render

_local = threading.local()


class _Budget:
    __slots__ = ("steps", "cpu_end")

    def __init__(self) -> None:
        self.steps = 0
        self.cpu_end = time.thread_time() + MAX_CPU_SECONDS


def _step() -> None:
    budget: _Budget | None = getattr(_local, "budget", None)
    if budget is None:
        return
    budget.steps += 1
    if budget.steps > MAX_STEPS:
        raise TemplateLimit(f"more than {MAX_STEPS:,} loop iterations and calls")
    if budget.steps & 1023 == 0 and time.thread_time() > budget.cpu_end:
        raise TemplateLimit(f"more than {MAX_CPU_SECONDS:g} s of CPU")


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    """What every `{% for %}` loops over (the parser wraps it in this): one step per iteration."""
    for item in iterable:
        _step()
        yield item


# --------------------------------------------------------------------------- size checks

def _too_long(n: int, what: str = "a value") -> TemplateLimit:
    return TemplateLimit(f"{what} of {n:,} characters or items, more than {MAX_OUTPUT:,}")


def _bounded(value: Any) -> Any:
    if isinstance(value, (str, bytes, list, tuple)) and len(value) > MAX_OUTPUT:
        raise _too_long(len(value))
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise TemplateLimit(f"an integer of more than {MAX_INT_BITS:,} bits")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_NUMBER = re.compile(r"\d+")


def _check_widths(numbers: Iterable[str]) -> None:
    for n in numbers:
        if n.isdigit() and (len(n) > 8 or int(n) > MAX_OUTPUT):
            raise TemplateLimit(f"a format width of {n[:20]}, more than {MAX_OUTPUT:,}")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would pass a bound, before computing it."""
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and _is_int(n) and len(seq) * max(n, 0) > MAX_OUTPUT:
                raise _too_long(len(seq) * n)
        if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateLimit(f"an integer of more than {MAX_INT_BITS:,} bits")
    elif operator == "**":
        if _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1 \
                and right * (abs(left).bit_length() - 1) > MAX_INT_BITS:
            raise TemplateLimit(f"an integer of more than {MAX_INT_BITS:,} bits")
    elif operator == "%" and isinstance(left, str):
        specs = _PRINTF_SPEC.findall(left)
        _check_widths(n for spec in specs for n in spec)
        if any("*" in spec for spec in specs):
            args = right if isinstance(right, tuple) else (right,)
            _check_args(args, {})


def _check_args(args: tuple, kwargs: dict) -> None:
    for value in (*args, *kwargs.values()):
        if _is_int(value) and value > MAX_OUTPUT:
            raise TemplateLimit(f"an argument of {value:,}, more than {MAX_OUTPUT:,}")


_GROWS_WITH_ARGUMENT = frozenset({"ljust", "rjust", "center", "zfill", "to_bytes"})


def _check_call(obj: Any, args: tuple, kwargs: dict) -> None:
    """Refuse a built-in method call whose result grows with its arguments past a bound."""
    wrapped = getattr(obj, "__wrapped__", None)  # the sandbox's wrapper around str.format
    if isinstance(wrapped, types.BuiltinMethodType) and wrapped.__name__ in ("format", "format_map"):
        fmt = wrapped.__self__
        if isinstance(fmt, str):
            try:
                specs = [spec for _text, _field, spec, _conv in string.Formatter().parse(fmt) if spec]
            except ValueError:
                specs = []
            _check_widths(n for spec in specs for n in _NUMBER.findall(spec))
            if any("{" in spec for spec in specs):  # '{:{}}'.format(x, width): the width is an argument
                _check_args(args, kwargs)
        return
    if not isinstance(obj, types.BuiltinMethodType):
        return
    owner, name = obj.__self__, obj.__name__
    if name in _GROWS_WITH_ARGUMENT:
        _check_args(args, kwargs)  # 'x'.ljust(10**9), (1).to_bytes(10**9)
    if isinstance(owner, str):
        if name == "join" and args:
            _check_join(owner, args[0])
        elif name == "replace" and len(args) >= 2:
            _check_replace(owner, args[0], args[1])
        elif name == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            if _is_int(size) and owner.count("\t") * size + len(owner) > MAX_OUTPUT:
                raise _too_long(owner.count("\t") * size + len(owner))


def _check_join(sep: str, items: Any) -> None:
    if isinstance(items, (list, tuple)):
        total = len(sep) * max(len(items) - 1, 0) + sum(len(i) if isinstance(i, str) else 1 for i in items)
        if total > MAX_OUTPUT:
            raise _too_long(total)


def _check_replace(s: str, old: Any, new: Any) -> None:
    if isinstance(old, str) and isinstance(new, str):
        hits = len(s) + 1 if old == "" else s.count(old)
        if len(s) + hits * (len(new) - len(old)) > MAX_OUTPUT:
            raise _too_long(len(s) + hits * (len(new) - len(old)))


# --------------------------------------------------------------------------- the environment


class _CodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # `a ~ b`: each part is bounded already, so checking the joined result stops any growth
        self.write("environment.bounded(")
        super().visit_Concat(node, frame)
        self.write(")")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in list(tree.find_all(nodes.For)):
            # an ImportedName cannot be written in a template, so no template can undo this
            loop.iter = nodes.Call(nodes.ImportedName(f"{__name__}._counted"), [loop.iter], [], None, None,
                                   lineno=loop.iter.lineno)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return _bounded(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        _check_call(__obj, args, kwargs)
        return _bounded(super().call(__context, __obj, *args, **kwargs))

    @staticmethod
    def bounded(value: Any) -> Any:
        return _bounded(value)


def _tojson(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _guard(original: Callable[..., Any], check: Callable[..., None]) -> Callable[..., Any]:
    """A filter that checks its arguments first; keeps the original's pass_* marks."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return _bounded(original(*args, **kwargs))

    return update_wrapper(guarded, original)


def _width_arg(position: int, name: str, limit: int = MAX_OUTPUT, *, per_line: bool = False) -> Callable[..., None]:
    def check(*args: Any, **kwargs: Any) -> None:
        value: Any = args[position] if len(args) > position else kwargs.get(name)
        if _is_int(value) and value > limit:
            raise TemplateLimit(f"'{name}' of {value:,}, more than {limit:,}")
        if per_line and args and isinstance(args[0], str):  # indent: the width is paid once per line
            width: int = value if _is_int(value) else len(value) if isinstance(value, str) else 4
            total = (args[0].count("\n") + 1) * width + len(args[0])
            if total > MAX_OUTPUT:
                raise _too_long(total)

    return check


def _filter_join_check(eval_ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> None:
    if isinstance(d, str) and attribute is None:
        _check_join(d, value)


def _filter_replace_check(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> None:
    _check_replace(str(s), old, new)


def _filter_format_check(value: Any, *args: Any, **kwargs: Any) -> None:
    _check_binop("%", str(value), kwargs or args)


def _make_env(*, slack: bool) -> _BoundedEnvironment:
    env = _BoundedEnvironment(autoescape=False, undefined=Undefined, keep_trailing_newline=True,
                              finalize=_slack_finalize if slack else None)
    env.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs: nothing a rule needs
    env.filters["tojson"] = _tojson
    env.policies["json.dumps_function"] = _tojson
    f = env.filters
    f["center"] = _guard(f["center"], _width_arg(1, "width"))
    f["indent"] = _guard(f["indent"], _width_arg(1, "width", per_line=True))
    f["batch"] = _guard(f["batch"], _width_arg(1, "linecount", MAX_RANGE))
    f["slice"] = _guard(f["slice"], _width_arg(1, "slices", MAX_RANGE))
    f["join"] = _guard(f["join"], _filter_join_check)
    f["replace"] = _guard(f["replace"], _filter_replace_check)
    f["format"] = _guard(f["format"], _filter_format_check)
    if slack:
        f["slack_raw"] = SlackRaw
    return env


# --------------------------------------------------------------------------- Slack escaping


class SlackRaw(str):
    """A value the rules author chose to insert as Slack markup, unescaped (`| slack_raw`)."""


def slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_finalize(value: Any) -> Any:
    if isinstance(value, SlackRaw) or value is None or isinstance(value, Undefined):
        return value
    return slack_escape(str(value))


_env = _make_env(slack=False)
_slack_env = _make_env(slack=True)


# --------------------------------------------------------------------------- templates


class Template:
    __slots__ = ("source", "_compiled", "is_constant")

    def __init__(self, source: str, *, slack: bool = False):
        self.source = source
        env = _slack_env if slack else _env
        try:
            tree = env.parse(source)
            _static_check(env, tree)
            self._compiled = env.from_string(tree)
        except TemplateSyntaxError as exc:
            where = f" (template line {exc.lineno})" if exc.lineno and exc.lineno > 1 else ""
            raise TemplateError(f"template does not parse: {exc.message}{where}") from None
        except TemplateLimit as exc:
            raise TemplateError(f"template would exceed its limits: {exc}") from None
        self.is_constant = "{{" not in source and "{%" not in source

    def render(self, context: dict[str, Any]) -> str:
        if self.is_constant:
            return self.source
        outer = getattr(_local, "budget", None)
        _local.budget = _Budget()
        try:
            out: list[str] = []
            size = 0
            for chunk in self._compiled.generate(context):
                size += len(chunk)
                if size > MAX_OUTPUT:
                    raise TemplateLimit(f"output of more than {MAX_OUTPUT:,} characters")
                out.append(chunk)
            return "".join(out)
        except TemplateLimit as exc:
            raise TemplateError(f"template exceeded its limits: {exc}") from None
        except Exception as exc:  # sandbox violations, type errors, undefined attribute use
            raise TemplateError(f"template failed to render: {type(exc).__name__}: {exc}") from None
        finally:
            _local.budget = outer

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


_UNKNOWN = object()


def _static_check(env: _BoundedEnvironment, tree: nodes.Template) -> None:
    """Refuse, at load, what is bound to pass a limit whatever the event: constant expressions
    too large to build, constant ranges over the sandbox's limit, nested constant loops."""
    eval_ctx = nodes.EvalContext(env)

    def fold(node: nodes.Node) -> Any:
        if isinstance(node, nodes.Const):
            return node.value
        if isinstance(node, nodes.BinExpr) and node.operator in env.intercepted_binops:
            left, right = fold(node.left), fold(node.right)
            if left is _UNKNOWN or right is _UNKNOWN:
                return _UNKNOWN
            _check_binop(node.operator, left, right)
            try:
                return _bounded(env.binop_table[node.operator](left, right))
            except TemplateLimit:
                raise
            except Exception:
                return _UNKNOWN
        if isinstance(node, nodes.Expr):
            try:
                return node.as_const(eval_ctx)
            except Exception:
                return _UNKNOWN
        return _UNKNOWN

    def range_length(node: nodes.Node) -> int | None:
        if not (isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "range"):
            return None
        args = [fold(a) for a in node.args]
        if node.kwargs or node.dyn_args or node.dyn_kwargs or not args or not all(_is_int(a) for a in args):
            return None
        try:
            return len(range(*args))
        except (TypeError, ValueError, OverflowError):
            return None

    for binop in tree.find_all(nodes.BinExpr):
        fold(binop)
    for call in tree.find_all(nodes.Call):
        n = range_length(call)
        if n is not None and n > MAX_RANGE:
            raise TemplateLimit(f"a range of {n:,} items, more than {MAX_RANGE:,}")
        if isinstance(call.node, nodes.Getattr):
            owner = fold(call.node.node)
            args = [fold(a) for a in call.args]
            if isinstance(owner, str) and _UNKNOWN not in args:
                method = getattr(owner, call.node.attr, None)
                if isinstance(method, types.BuiltinMethodType):
                    _check_call(method, tuple(args), {})

    def loops(node: nodes.Node, product: int) -> None:
        for child in node.iter_child_nodes():
            if isinstance(child, nodes.For):
                n = range_length(child.iter.args[0]) if isinstance(child.iter, nodes.Call) and child.iter.args else None
                total = product * (n if n is not None else 1)
                if total > MAX_STEPS:
                    raise TemplateLimit(f"nested loops of {total:,} iterations, more than {MAX_STEPS:,}")
                loops(child, total)
            else:
                loops(child, product)

    loops(tree, 1)


class StructuredTemplate:
    """A YAML/JSON structure whose string leaves are templates (Slack `blocks`, a JSON body).

    With `slack=True`, the strings under a `text` key (Slack's text objects) escape what they
    substitute; other strings (URLs, ids) are sent as rendered."""

    def __init__(self, value: Any, *, slack: bool = False):
        self._value = self._compile(value, slack, False)

    @classmethod
    def _compile(cls, value: Any, slack: bool, is_text: bool) -> Any:
        if isinstance(value, str):
            return Template(value, slack=slack and is_text)
        if isinstance(value, list):
            return [cls._compile(v, slack, False) for v in value]
        if isinstance(value, dict):
            return {k: cls._compile(v, slack, k == "text") for k, v in value.items()}
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
