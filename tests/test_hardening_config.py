"""Issue 14, the rules half, in process: what `router validate` says about regexes RE2 cannot run,
templates bound to pass a limit, dedupe key lists and big rules files; what a template that passes a
limit at render time fails with; and how much schema work a body with 54,000 violations costs.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from support import run_cli

from router.config import source
from router.config.loader import loads
from router.errors import ConfigError
from router.pipeline import payload as payloads
from router.templates import MAX_OUTPUT, MAX_STEPS, Template, TemplateError

HEAD = """\
version: 1
providers:
  src: {type: none}
actions:
  a: {type: file, path: x.jsonl}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loads(text, "rules.yaml")
    return [str(p) for p in caught.value.problems]


# --------------------------------------------------------------------------- regexes RE2 cannot run

# pattern -> a phrase the message must hold (the construct, named)
UNSUPPORTED = {
    r"(a)\1": r"backreference \\1 at character 4",
    r"(?P<x>a)(?P=x)": r"named backreference",
    r"^(?=.*a)": r"lookahead .* at character 2",
    r"^(?!a)": r"negative lookahead",
    r"(?<=a)b": r"lookbehind",
    r"(?<!a)b": r"negative lookbehind",
    r"(?>a+)b": r"atomic group",
    r"a++b": r"possessive quantifier \+\+",
    r"a{2}+": r"possessive quantifier",
    r"end\Z": r"\\Z.*write \\z",
    r"(?x) a b": r"inline flag 'x'",
    r"(?#note)a": r"comment",
    r"(a)?(?(1)b|c)": r"conditional",
    r"a{1001}": r"up to 1000",
    r"([a-z": r"does not compile",
}


def test_validate_reports_every_regex_re2_cannot_run_at_its_line_and_column(tmp_path):
    rules = ["rules:"]
    expected: dict[int, str] = {}
    for i, (pattern, phrase) in enumerate(UNSUPPORTED.items()):
        quoted = "'" + pattern.replace("'", "''") + "'"
        rules += [f"  - name: r{i}", f"    when: {{value: {{regex: {quoted}}}}}", "    actions: [a]"]
        expected[HEAD.count("\n") + len(rules) - 1] = phrase  # the `when:` line just added
    path = tmp_path / "rules.yaml"
    path.write_text(HEAD + "\n".join(rules) + "\n")
    result = run_cli("validate", path)
    assert result.code == 1, result
    assert "Traceback" not in result.output and "re2.cc" not in result.output, result  # nothing from RE2's own logger
    found = {int(m.group(1)): (int(m.group(2)), m.group(3)) for m in
             re.finditer(rf"^{re.escape(str(path))}:(\d+):(\d+): (.+)$", result.stdout + result.stderr, re.MULTILINE)}
    for line, phrase in expected.items():
        assert line in found, f"nothing reported at line {line} (expected {phrase!r}):\n{result}"
        col, message = found[line]
        assert col == 27, (line, col, message)  # the column where the pattern's quote opens
        assert message.startswith(f"rules[{list(expected).index(line)}].when.value.regex: "), message
        assert re.search(phrase, message), (phrase, message)
    assert len(found) == len(UNSUPPORTED), result


def test_ordinary_regexes_still_validate():
    config = loads(HEAD + """\
rules:
  - name: ok
    when:
      a: {regex: '^A-\\d+$'}
      b: {regex: '(?i)report'}
      c: {regex: '\\.mp4\\z'}
      d: {regex: '^(?P<year>\\d{4})-(?:0[1-9]|1[0-2])'}
      e: {regex: '\\pL+'}
    actions: [a]
""", "rules.yaml")
    assert [r.name for r in config.rules] == ["ok"]


# --------------------------------------------------------------------------- templates bound to pass a limit

AT_LOAD = {
    "fifty-megabytes": ("{{ 'a' * 50000000 }}", "50,000,000 characters"),
    "nested-constant-loops": ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
                              "nested loops of 10,000,000,000"),
    "range-over-the-sandbox-limit": ("{{ range(10**7) | list }}", "a range of 10,000,000"),
    "padding": ("{{ 'x'.ljust(10**9) }}", "1,000,000,000"),
    "printf-width": ("{{ '%0999999999d' % 1 }}", "format width"),
}


@pytest.mark.parametrize("template, phrase", list(AT_LOAD.values()), ids=list(AT_LOAD))
def test_a_template_bound_to_pass_a_limit_is_a_validation_error(template, phrase):
    text = HEAD.replace("  a: {type: file, path: x.jsonl}\n", f"  a:\n    type: file\n    path: {_yaml_str(template)}\n")
    [problem] = problems_of(text + "rules: []\n")
    assert problem.startswith("rules.yaml:7:11: actions.a.path: template would exceed its limits"), problem
    assert phrase in problem, problem


def _yaml_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# at render: the limit depends on the event, so it can only be seen then
AT_RENDER = {
    "repeat": ("{{ payload.s * payload.n }}", {"s": "a", "n": 50_000_000}, "50,000,000 characters"),
    "output": ("{% for i in range(payload.n) %}{{ payload.s }}{% endfor %}", {"s": "x" * 1000, "n": 10_000},
               f"output of more than {MAX_OUTPUT:,}"),
    "concat-doubling": ("{% set ns = namespace(s='ab') %}{% for i in range(payload.n) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}", {"n": 60}, "characters or items"),
    "power": ("{{ payload.n ** payload.n }}", {"n": 99_999}, "bits"),
    "nested-loops": ("{% for i in range(payload.n) %}{% for j in range(payload.n) %}{% endfor %}{% endfor %}",
                     {"n": 100_000}, f"{MAX_STEPS:,} loop iterations"),
    "recursive-macro": ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(payload.n) }}",
                        {"n": 40}, "limits"),
    "center": ("{{ payload.s | center(payload.n) }}", {"s": "x", "n": 10**9}, "'width' of 1,000,000,000"),
    "join": ("{{ (payload.s * 1000000).join(payload.parts) }}", {"s": "ab", "parts": ["x"] * 1000},
             "characters or items"),
    "replace": ("{{ (payload.s * 100000) | replace('', payload.s * 1000) }}", {"s": "ab"}, "characters or items"),
    "batch-fill": ("{{ payload.parts | batch(payload.n, 'x') | list }}", {"parts": [1], "n": 10**9}, "linecount"),
    "format": ("{{ ('{:>' ~ payload.n ~ '}').format(1) }}", {"n": 10**9}, "format width"),
    "format-nested-width": ("{{ '{:>{}}'.format(1, payload.n) }}", {"n": 10**9}, "an argument of 1,000,000,000"),
    "expandtabs": ("{{ (payload.s * 100).expandtabs(payload.n) }}", {"s": "\t", "n": 10**6}, "characters or items"),
}


@pytest.mark.parametrize("template, payload, phrase", list(AT_RENDER.values()), ids=list(AT_RENDER))
def test_a_template_that_passes_a_limit_at_render_fails_with_the_limit_it_passed(template, payload, phrase):
    compiled = Template(template)
    started = time.thread_time()
    with pytest.raises(TemplateError) as caught:
        compiled.render({"payload": payload})
    assert "exceeded its limits" in str(caught.value), caught.value
    assert phrase in str(caught.value), caught.value
    # the CPU bound (1 s) is the longest any of these may take; nothing was built first and cut after
    assert time.thread_time() - started < 3.0


def test_templates_within_the_limits_render_as_before():
    payload = {"items": [{"name": "a", "risk": "HIGH"}, {"name": "b", "risk": "LOW"}], "s": "x" * 1000}
    template = Template("{% for c in payload['items'] if c.risk == 'HIGH' %}{{ c.name }} {% endfor %}"
                        "{{ payload.s | length }} {{ '%05d' % 42 }} {{ 2 ** 10 }} {{ payload | tojson | length }} "
                        "{% for i in range(3) %}{{ loop.index }}/{{ loop.length }},{% endfor %}")
    size = len(json.dumps(payload, separators=(",", ":")))
    assert template.render({"payload": payload}) == f"a 1000 00042 1024 {size} 1/3,2/3,3/3,"


def test_a_big_number_is_not_a_big_value():
    """Only an argument that sizes the result (a width, a count) is held to the output bound."""
    payload = {"bytes": 123_456_789_012, "ids": {"a": 1}}
    template = Template("{{ '{:,}'.format(payload.bytes) }} {{ payload.ids.get('b', payload.bytes) }} "
                        "{{ payload.bytes * 1000 }} {{ '%d' % payload.bytes }}")
    assert template.render({"payload": payload}) == "123,456,789,012 123456789012 123456789012000 123456789012"


# --------------------------------------------------------------------------- forward headers known at load


def test_a_header_that_could_never_be_sent_is_a_validation_error():
    text = HEAD.replace("  a: {type: file, path: x.jsonl}\n", """\
  a:
    type: forward
    url: http://127.0.0.1:9/x
    headers:
      X Bad Name: ok
      X-Tab: "a\\tb"
      X-Feed: "a\\fb"
      X-Templated: "{{ payload.x }}"
""")
    problems = problems_of(text + "rules: [{name: r, actions: [a]}]\n")
    assert problems == [
        "rules.yaml:9:7: actions.a.headers.X Bad Name: 'X Bad Name' is not a header name "
        "(letters, digits and !#$%&'*+-.^_`|~ only)",
        "rules.yaml:11:15: actions.a.headers.X-Feed: the value would contain a control character (U+000C), "
        "which no header may hold",
    ], problems


# --------------------------------------------------------------------------- dedupe key lists


def test_a_dedupe_key_list_is_checked_item_by_item():
    text = HEAD.replace("  src: {type: none}\n", "  src:\n    type: none\n    dedupe:\n      key:\n"
                                                   "        - '{{ payload.a }}'\n        - '{{ payload.b'\n")
    [problem] = problems_of(text + "rules: []\n")
    assert problem.startswith("rules.yaml:8:11: providers.src.dedupe.key[1]: template does not parse"), problem
    [problem] = problems_of(HEAD.replace("  src: {type: none}", "  src: {type: none, dedupe: {key: []}}") + "rules: []\n")
    assert "dedupe.key is an empty list" in problem, problem


def test_a_dedupe_key_list_renders_as_a_json_array_and_a_single_template_as_before():
    config = loads(HEAD.replace("  src: {type: none}", "  src: {type: none, dedupe: {key: ['{{ payload.a }}', "
                                "'{{ payload.b }}']}}\n  one: {type: none, dedupe: {key: '{{ payload.a }}:{{ payload.b }}'}}")
                   + "rules: []\n", "rules.yaml")
    listed, single = config.providers["src"].dedupe, config.providers["one"].dedupe
    assert listed is not None and single is not None
    assert listed.render({"payload": {"a": "a:b", "b": "c"}}) == '["a:b","c"]'
    assert listed.render({"payload": {"a": "a", "b": "b:c"}}) == '["a","b:c"]'
    assert listed.render({"payload": {}}) is None  # nothing to deduplicate on
    assert single.render({"payload": {"a": "x", "b": "y"}}) == "x:y"


# --------------------------------------------------------------------------- schema work stops at the cap


def test_a_body_with_54000_violations_computes_about_100_of_them():
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "integer"}}}}
    validator = payloads.SchemaValidator(schema, payloads.js_validators.Draft7Validator)
    reference = validator.reference

    class Counting:
        pulled = 0

        def iter_errors(self, instance):
            for error in reference.iter_errors(instance):
                Counting.pulled += 1
                yield error

    validator.reference = Counting()
    body = {"items": ["x" * 10] * 54_000}  # 756 KB, the size of the reported body
    with pytest.raises(payloads.SchemaError) as caught:
        payloads.validate(validator, body)
    assert len(caught.value.detail) == payloads.MAX_DETAIL
    assert Counting.pulled <= payloads.MAX_DETAIL + 1, f"{Counting.pulled} violations computed for a 100-entry answer"
    assert sum(1 for _ in reference.iter_errors(body)) == 54_000  # the body really has that many


# --------------------------------------------------------------------------- big rules files


def generated_rules(n: int) -> str:
    lines = [HEAD, "rules:"]
    lines += [f"  - {{name: r-{i}, provider: src, when: {{event: e-{i % 500}}}, actions: [a]}}" for i in range(n)]
    return "\n".join(lines) + "\n"


def test_a_large_honest_rules_file_loads():
    """30,000 rules are 210,000 nodes, past the old limit, which took them for an alias bomb."""
    config = loads(generated_rules(30_000), "rules.yaml")
    assert len(config.rules) == 30_000
    assert [r.name for r in config.router.match(_view({"event": "e-7"}))][:2] == ["r-7", "r-507"]


def _view(payload: dict):
    from router.pipeline.conditions import EventView

    return EventView(payload, {}, {}, "src")


def test_a_file_over_the_byte_limit_is_refused_before_it_is_parsed():
    text = generated_rules(10) + "# " + "x" * source.MAX_BYTES + "\n"
    started = time.process_time()
    [problem] = problems_of(text)
    assert time.process_time() - started < 2.0  # parsing 32 MB would take far longer
    assert f"more than the {source.MAX_BYTES:,} a rules file may be" in problem, problem


def test_a_file_with_too_many_nodes_names_that_limit(monkeypatch):
    monkeypatch.setattr(source, "MAX_NODES", 10_000)
    [problem] = problems_of(generated_rules(2_000))
    assert "more than 10,000 YAML nodes (scalars, lists and mappings as written)" in problem, problem
    assert "alias" not in problem


def test_an_alias_bomb_is_still_refused_as_one():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for name, prev in zip("bcdefgh", "abcdefg"):
        bomb += f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]\n"
    [problem] = problems_of("version: 1\n" + bomb.replace("a: &a", "providers: &a"))
    assert "aliases expand the file by more than 200,000 nodes" in problem, problem


@pytest.mark.parametrize("url, phrase", [
    ("http://[127.0.0.1:9/slack", "host or port is not valid"),  # what the rules fuzzer found: a traceback
    ("https://hooks.example:99999/x", "host or port is not valid"),
    ("https://hooks.example:0/x", "port 0"),
])
def test_a_url_no_request_could_be_sent_to_is_a_validation_error_that_does_not_quote_it(tmp_path, url, phrase):
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""\
version: 1
providers:
  src: {{type: none}}
actions:
  tell: {{type: slack, webhook_url: "${{HOOK:-{url}}}", text: "hi"}}
  send: {{type: forward, url: "{url}"}}
rules:
  - name: all
    actions: [tell, send]
""")
    result = run_cli("validate", rules, env={"HOOK": None})
    assert result.code == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if phrase in line]
    assert [line.split(": ")[1] for line in lines] == ["actions.tell.webhook_url", "actions.send.url"], result.stdout
    assert url not in result.stdout  # the Slack URL is a secret: never echoed
