"""Rule regexes, matched by RE2: time linear in the input whatever the pattern (as Alertmanager and
Prometheus do), so `^(a+)+$` against a long value costs microseconds, not a worker.

RE2 has no backtracking, so it leaves out the constructs that need it (backreferences, lookaround,
atomic groups, possessive quantifiers, ...). `compile_regex` turns RE2's terse complaint into a
message that names the construct, where it stands in the pattern, and what to write instead.
"""

from __future__ import annotations

from typing import Any

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print every refused pattern to stderr, outside our logs

# (prefix of the construct as written, what it is, what to do instead); longest prefixes first
UNSUPPORTED: tuple[tuple[str, str, str], ...] = (
    ("(?<=", "lookbehind (?<=...)", "match the text itself, or a second condition"),
    ("(?<!", "negative lookbehind (?<!...)", "use a second condition with `not:`"),
    ("(?P=", "named backreference (?P=name)", "RE2 cannot refer back to a group"),
    ("(?P>", "recursion (?P>name)", "RE2 has no recursion"),
    ("(?=", "lookahead (?=...)", "match the text itself, or a second condition"),
    ("(?!", "negative lookahead (?!...)", "use a second condition with `not:`"),
    ("(?>", "atomic group (?>...)", "RE2 never backtracks, so a plain group (?:...) behaves the same"),
    ("(?#", "comment (?#...)", "put the comment in YAML after #"),
    ("(?(", "conditional group (?(...)...)", "use `any:` with two conditions"),
    ("(?|", "branch reset (?|...)", "use a plain group"),
    ("\\Z", "\\Z", "write \\z for the end of the text"),
    ("\\G", "\\G", "RE2 has no \\G"),
    ("\\K", "\\K", "RE2 has no \\K"),
    ("\\R", "\\R", "write (?:\\r\\n|\\n|\\r)"),
    ("\\X", "\\X", "RE2 has no grapheme clusters"),
    ("\\h", "\\h", "write [ \\t]"),
    ("\\N", "\\N", "write [^\\n]"),
)
_FLAGS = "imsU"  # the inline flags RE2 knows


class RegexError(ValueError):
    """A pattern RE2 cannot compile; the message says why and what to write instead."""


def compile_regex(pattern: str) -> Any:
    """The compiled pattern (with `.search`), or RegexError.

    Every pattern is compiled by RE2, which decides what is valid. A pattern that is plain text,
    perhaps anchored (`failed$`, `^push`, `^ping$`), is then matched with str's own
    methods instead: the same answer as RE2's, without the cost of a call into it (a quarter of the
    routing time of a one-rule event)."""
    try:
        compiled = re2.compile(pattern, options=_OPTIONS)
    except re2.error as exc:
        raise RegexError(explain(pattern, _text(exc))) from None
    return _literal(pattern) or compiled


_SPECIAL = set("\\.^$|?*+()[]{}")


class Literal:
    """A plain-text pattern: `^text`, `text$`, `^text$` or `text`, matched as RE2 matches it
    (without flags `$` is the end of the text only, never before a final newline)."""

    __slots__ = ("text", "start", "end")

    def __init__(self, text: str, start: bool, end: bool):
        self.text, self.start, self.end = text, start, end

    def search(self, value: str) -> bool | None:
        text = self.text
        if self.start and self.end:
            found = value == text
        elif self.start:
            found = value.startswith(text)
        elif self.end:
            found = value.endswith(text)
        else:
            found = text in value
        return True if found else None


def _literal(pattern: str) -> Literal | None:
    start = pattern.startswith("^")
    body = pattern[1:] if start else pattern
    end = body.endswith("$")
    body = body[:-1] if end else body
    if not body or any(c in _SPECIAL for c in body) or not body.isprintable():
        return None
    return Literal(body, start, end)


def _text(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else str(exc)
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def explain(pattern: str, re2_message: str) -> str:
    """A message for a refused pattern: the unsupported construct and its position, else RE2's own words."""
    found = find_unsupported(pattern)
    if found is not None:
        offset, what, instead = found
        return (f"{what} at character {offset + 1} of the pattern is not supported: rule regexes use RE2 syntax, "
                f"which matches in linear time ({instead})")
    if "invalid repetition size" in re2_message:
        return f"regex does not compile: {re2_message} (RE2 allows repetition counts up to 1000)"
    if "pattern too large" in re2_message:
        return "regex does not compile: the pattern is too large for RE2 (simplify it or split it into several rules)"
    return f"regex does not compile: {re2_message}"


def find_unsupported(pattern: str) -> tuple[int, str, str] | None:
    """The first construct RE2 refuses that has a name: (offset, what, what instead), or None."""
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1: i + 2]
            if not in_class:
                if nxt.isdigit() and nxt != "0":
                    return i, f"backreference \\{nxt}", "RE2 cannot refer back to a group"
                for prefix, what, instead in UNSUPPORTED:
                    if prefix.startswith("\\") and pattern.startswith(prefix, i):
                        return i, f"escape {what}", instead
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            i += 1
            continue
        if c == "[":
            in_class = True
            i += 2 if pattern[i + 1: i + 2] == "]" or pattern[i + 1: i + 3] == "^]" else 1
            continue
        if c == "(" and pattern.startswith("(?", i):
            for prefix, what, instead in UNSUPPORTED:
                if prefix.startswith("(") and pattern.startswith(prefix, i):
                    return i, what, instead
            j = i + 2
            while j < len(pattern) and (pattern[j].isalpha() or pattern[j] == "-"):
                if pattern[j].isalpha() and pattern[j] not in _FLAGS and pattern[j] != "P":
                    return i, f"inline flag '{pattern[j]}'", f"RE2 knows only the flags {', '.join(_FLAGS)}"
                j += 1
        if c in "*+?}" and pattern[i + 1: i + 2] == "+":
            return i + 1, "possessive quantifier " + (c if c != "}" else "{n}") + "+", \
                "RE2 never backtracks, so the plain quantifier behaves the same"
        i += 1
    return None
