"""`router validate` that catches typos at load time (issue 15): paths, template variables and dedupe keys
the provider's schema says cannot exist are warnings with a did-you-mean from the schema; an unused action
is a warning; `--strict` makes warnings fail; a template that does not parse is one problem; a YAML syntax
error points at where the fault began.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import VALIDATE_LINE, run_cli

BASE = """\
version: 1
providers:
  moderation:
    type: unitary
    dedupe: {key: "{{ payload.data.jobid }}"}
  dubbing: {type: panjaya}
  anything: {type: none}
actions:
  page:
    type: slack
    webhook_url: "http://127.0.0.1:9/slack"
    text: "job {{ paylod.data.job_id }} category {{ payload.data.result.policy_categories[0].nme }}"
  archive: {type: file, path: "{{ provider }}.jsonl"}
  forgotten: {type: file, path: "x.jsonl"}
rules:
  - name: typo-in-path
    provider: moderation
    when:
      data.is_eror: false
      data.result.policy_categories[*].risk_levl: HIGH
    actions: [page]
  - name: dubbing-typo
    provider: dubbing
    when: {evnt: version_generated}
    actions: [archive]
  - name: free-form
    provider: anything
    when: {whatever.you.like: 1}
    actions: [archive]
"""


def validate(tmp_path: Path, text: str, *extra: str):
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    return rules, run_cli("validate", rules, *extra)


def warnings_of(result) -> dict[str, str]:
    """path in the file -> its warnings, joined."""
    out: dict[str, str] = {}
    for line in result.stdout.splitlines():
        m = VALIDATE_LINE.match(line)
        if m and m["msg"].startswith("warning: "):
            out[m["path"]] = out.get(m["path"], "") + m["msg"] + "\n"
    return out


def test_typos_the_schema_rules_out_are_warnings_with_did_you_mean(tmp_path: Path) -> None:
    rules, result = validate(tmp_path, BASE)
    assert result.code == 0, result
    assert result.stdout.rstrip().endswith("(7 warnings)"), result
    w = warnings_of(result)
    assert "did you mean 'is_error'?" in w["rules[0].when.data.is_eror"]
    assert "did you mean 'risk_level'?" in w["rules[0].when.data.result.policy_categories[*].risk_levl"]
    assert "did you mean 'event'?" in w["rules[1].when.evnt"]
    assert "did you mean 'job_id'?" in w["providers.moderation.dedupe.key"]
    text = w["actions.page.text"]
    assert "'paylod' is never given (did you mean 'payload'?)" in text
    assert "policy_categories[0].nme }}: 'nme' is not a field" in text and "did you mean 'name'?" in text
    assert "action 'forgotten' is not used by any rule" in w["actions.forgotten"]
    assert not any(k.startswith("rules[2]") for k in w), w  # a provider without a schema: nothing to say
    # each at the line of the culprit
    line = next(ln for ln in result.stdout.splitlines() if "data.is_eror" in ln)
    assert line.startswith(f"{rules}:{BASE.splitlines().index('      data.is_eror: false') + 1}:7:")


def test_warnings_come_in_file_order(tmp_path: Path) -> None:
    _, result = validate(tmp_path, BASE)
    lines = [(int(m["line"]), int(m["col"])) for ln in result.stdout.splitlines() if (m := VALIDATE_LINE.match(ln))]
    assert lines == sorted(lines) and len(lines) == 7, result


def test_strict_turns_warnings_into_a_failure(tmp_path: Path) -> None:
    _, result = validate(tmp_path, BASE, "--strict")
    assert result.code == 1, result
    assert "warning(s), failing because of --strict" in result.stderr


def test_a_clean_file_has_no_warnings_even_with_strict(tmp_path: Path) -> None:
    from support import PROJECT_ROOT

    result = run_cli("validate", "--strict", PROJECT_ROOT / "rules.example.yaml")
    assert result.code == 0, result
    assert "warning" not in result.stdout


def test_a_template_that_does_not_parse_is_one_problem(tmp_path: Path) -> None:
    text = """\
version: 1
providers:
  p: {type: none}
actions:
  s: {type: slack, webhook_url: "http://127.0.0.1:9/x", text: "{{ payload.x "}
rules:
  - {name: r, actions: [s]}
"""
    _, result = validate(tmp_path, text)
    assert result.code == 1, result
    problems = [ln for ln in result.stdout.splitlines() if VALIDATE_LINE.match(ln)]
    assert len(problems) == 1, result
    assert "template does not parse" in problems[0]
    assert "needs 'text'" not in result.output


@pytest.mark.parametrize("text, where, phrase", [
    ("version: 1\nproviders:\n  a: {type: none\nactions: {}\nrules: []\n", (3, 6), r"'\{' opened here is never closed"),
    ("version: 1\nrules:\n  - name: x\n    actions: [a, b\n  - name: y\n", (4, 14), r"'\[' opened here is never closed"),
    ("version: 1\nproviders:\n  a: {type: none}\n b: {type: none}\nrules: []\n", (4, 2),
     r"line 4 is indented 1 spaces, which matches no enclosing block"),
    ("version: 1\nrules:\n  - name: a\n     actions: [x]\n", (4, 6), r"line 4 is indented 5 spaces, deeper than the key"),
    ('version: 1\nrules:\n  - name: "a\n    actions: [x]\n', (3, 11), r"quoted string opened here is never closed"),
], ids=["unclosed-brace", "unclosed-bracket", "dedented-key", "over-indented-key", "unclosed-quote"])
def test_a_yaml_syntax_error_points_where_it_began(tmp_path: Path, text: str, where: tuple[int, int],
                                                   phrase: str) -> None:
    rules, result = validate(tmp_path, text)
    assert result.code == 1, result
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"{rules}:{where[0]}:{where[1]}: yaml: "), first
    assert re.search(phrase, first), first
