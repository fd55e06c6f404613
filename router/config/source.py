"""The rules file as YAML: plain Python values, plus the line and column where every node stands.

Loaded with PyYAML's safe loader only (libyaml's when present; no tags that build objects), node by
node, so that each value and each key keeps its mark for `FILE:LINE:COL` messages, duplicate keys
are caught, alias cycles and alias bombs are refused, and the raw text of a key is kept (`on:` stays
"on", not True). Size is bounded three ways, each with its own message: bytes before parsing, nodes
as written, and nodes that aliases add.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from router.errors import Problem

PathT = tuple  # a path into the file: ("rules", 2, "when", "event")

@dataclass
class Source:
    """The parsed file: plain Python values plus where each node stands."""

    filename: str
    data: Any
    value_marks: dict[PathT, tuple[int, int]]
    key_marks: dict[PathT, tuple[int, int]]


# A 4.6 MB file of 60,000 rules is about 1,080,000 nodes and takes some 6 s of CPU and 0.5 GB to
# load, so past these a file is refused rather than read for minutes: bytes first, before any
# parsing; nodes once composed, for a file denser than rules usually are.
MAX_BYTES = 8 * 1024 * 1024  # about 100,000 rules
MAX_NODES = 2_500_000  # nodes as written (each scalar, list and mapping once)
MAX_ALIAS_NODES = 200_000  # nodes that aliases add when expanded: an alias bomb passes this, no honest file does

# libyaml's parser is three to four times faster than PyYAML's own, and refuses nesting deeper than
# 1000 levels itself; the marks and the safe constructor are the same
_Loader: Any = getattr(yaml, "CSafeLoader", None) if getattr(yaml, "__with_libyaml__", False) else None
_Loader = _Loader or yaml.SafeLoader
_STR_TAG = "tag:yaml.org,2002:str"


class _TooBig(Exception):
    pass


def _written_nodes(root: yaml.Node, limit: int) -> int:
    """How many distinct nodes the document has as written (an alias is the node it names);
    stops counting past `limit`."""
    seen: set[int] = set()
    stack = [root]
    while stack and len(seen) <= limit:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append(key)
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return len(seen)


def parse_yaml(text: str, filename: str, problems: list[Problem]) -> Source | None:
    value_marks: dict[PathT, tuple[int, int]] = {}
    key_marks: dict[PathT, tuple[int, int]] = {}
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        problems.append(Problem(filename, 1, 1, "yaml", f"the file is {size:,} bytes, more than the {MAX_BYTES:,} "
                                "a rules file may be"))
        return None
    try:
        loader = _Loader(text)
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
            pure = _pure_parser_error(text)
            if pure is not None and not isinstance(pure, yaml.MarkedYAMLError):
                problems.append(_yaml_problem(filename, pure))  # e.g. a control character
                return None
            line, col, msg = explain_syntax_error(pure or exc, text)
            problems.append(Problem(filename, line, col, "yaml", f"YAML syntax error: {msg}"))
            return None
        except yaml.YAMLError as exc:
            pure = _pure_parser_error(text)
            if pure is not None:
                problems.append(_yaml_problem(filename, pure))
            else:
                problems.append(Problem(filename, 1, 1, "yaml", f"YAML error: {exc}"))
            return None
        if root is None:
            return Source(filename, None, value_marks, key_marks)
        written = _written_nodes(root, MAX_NODES)
        if written > MAX_NODES:
            problems.append(Problem(filename, 1, 1, "yaml", f"the file has more than {MAX_NODES:,} YAML nodes "
                                    "(scalars, lists and mappings as written), the most a rules file may have"))
            return None
        expanded_limit = written + MAX_ALIAS_NODES

        def pos(node: yaml.Node) -> tuple[int, int]:
            return node.start_mark.line + 1, node.start_mark.column + 1

        count = [0]
        on_path: set[int] = set()  # the nodes being converted: meeting one again is an alias cycle

        def convert(node: yaml.Node, path: PathT) -> Any:
            count[0] += 1
            if count[0] > expanded_limit:
                raise _TooBig()
            if id(node) in on_path:
                line, col = pos(node)
                problems.append(Problem(filename, line, col, fmt_path(path), "recursive alias: a node that contains itself"))
                return None
            value_marks[path] = pos(node)
            if not isinstance(node, yaml.ScalarNode):
                on_path.add(id(node))
                try:
                    return convert_collection(node, path)
                finally:
                    on_path.discard(id(node))
            if node.tag == _STR_TAG:
                return node.value  # what the constructor would return, without its bookkeeping
            try:
                return loader.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError, OverflowError) as exc:
                line, col = pos(node)
                problems.append(Problem(filename, line, col, fmt_path(path), f"invalid value: {str(exc)[:200]}"))
                return None

        def convert_collection(node: yaml.Node, path: PathT) -> Any:
            if isinstance(node, yaml.MappingNode):
                loader.flatten_mapping(node)  # honours `<<: *anchor` merges
                out: dict[str, Any] = {}
                for key_node, value_node in node.value:
                    if not isinstance(key_node, yaml.ScalarNode):
                        line, col = pos(key_node)
                        problems.append(Problem(filename, line, col, fmt_path(path), "mapping keys must be plain strings"))
                        continue
                    key = key_node.value  # raw text, so `on:` stays "on" rather than True
                    if key in out:
                        line, col = pos(key_node)
                        problems.append(Problem(filename, line, col, fmt_path(path + (key,)), f"duplicate key '{key}'"))
                        continue
                    key_marks[path + (key,)] = pos(key_node)
                    out[key] = convert(value_node, path + (key,))
                return out
            return [convert(item, path + (i,)) for i, item in enumerate(node.value)]

        try:
            data = convert(root, ())
        except _TooBig:
            problems.append(Problem(filename, 1, 1, "yaml", f"aliases expand the file by more than {MAX_ALIAS_NODES:,} "
                                    f"nodes beyond the {written:,} written (aliases repeated inside aliases?)"))
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


def _pure_parser_error(text: str) -> yaml.YAMLError | None:
    """The same fault as PyYAML's own parser words it: explain_syntax_error reads its messages
    ("expected <block end>", the mark where a bracket opened), which libyaml words differently.
    A broken file is read twice; a good one once."""
    if _Loader is yaml.SafeLoader:
        return None
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # the reader refuses a character before parsing starts
        return exc
    try:
        loader.get_single_node()
    except yaml.YAMLError as exc:
        return exc
    except RecursionError:
        return None
    finally:
        loader.dispose()
    return None


_OPENERS = {"flow mapping": "'{'", "flow sequence": "'['", "quoted scalar": "quoted string"}


def explain_syntax_error(exc: yaml.MarkedYAMLError, text: str) -> tuple[int, int, str]:
    """(line, column, message) of a YAML syntax error, placed where the fault began (the bracket or
    quote never closed, the line indented wrongly) rather than only where the parser gave up."""
    problem, context = exc.problem or "", exc.context or ""
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    gave_up = f"line {line}, column {col}"
    opened = next((what for key, what in _OPENERS.items() if key in context), None)
    if opened and exc.context_mark is not None:
        start = exc.context_mark
        return (start.line + 1, start.column + 1,
                f"the {opened} opened here is never closed (the parser gave up at {gave_up}: {problem})")
    lines = text.splitlines()

    def indent_of(n: int) -> int:  # n is 1-based
        return len(lines[n - 1]) - len(lines[n - 1].lstrip(" ")) if 0 < n <= len(lines) else 0

    def previous_content(n: int) -> int:
        n -= 1
        while n > 0 and (not lines[n - 1].strip() or lines[n - 1].lstrip().startswith("#")):
            n -= 1
        return n

    if "expected <block end>" in problem or "mapping values are not allowed" in problem:
        here, before = indent_of(line), previous_content(line)
        if before:
            prev = lines[before - 1]
            # where the previous line's key starts (after a "- ")
            key_col = len(prev) - len(prev.lstrip(" -"))
            if "mapping values" in problem and here > key_col:
                return (line, here + 1, f"line {line} is indented {here} spaces, deeper than the key on line "
                        f"{before} ({key_col}): YAML reads it as part of that line's value; indent it as that key is")
            if "expected <block end>" in problem:
                levels = sorted({indent_of(n) for n in range(1, line) if lines[n - 1].strip()
                                 and not lines[n - 1].lstrip().startswith("#")})
                return (line, here + 1, f"line {line} is indented {here} spaces, which matches no enclosing block "
                        f"(the lines above are indented {', '.join(map(str, levels))})")
        if "mapping values" in problem:
            return line, col, f"{problem}: a ': ' inside a plain value starts a mapping; quote the value"
    msg = problem or context or "invalid YAML"
    if context and problem:
        msg = f"{problem} ({context})"
    return line, col, msg


def _yaml_problem(filename: str, exc: Exception) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    if mark is None and hasattr(exc, "position"):  # ReaderError: a character position in the text
        line, col = 1, 1
    text = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return Problem(filename, line, col, "yaml", f"YAML error: {text}")


def fmt_path(path: PathT) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"
