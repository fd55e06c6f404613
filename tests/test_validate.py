"""`router validate`: a table of broken rules files, each with its fault marked `#!` on the line it stands.

Every case must exit 1, name the marked line as FILE:LINE:COL, say what is wrong, print no traceback,
and never print the secret that the file reads from the environment.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import PROJECT_ROOT, run_cli

SECRET = "s3cr3t-value-xyz"
ENV = {"UNITARY_SECRET": SECRET, "VIDEOID_TOKEN": None, "NOPE_UNSET_VAR_4711": None, "SLACK_WEBHOOK_URL": None}
MARK = "#!"

HEAD = """\
version: 1
settings:
  store: var/router.db
  max_body_bytes: 65536
"""
PROVIDERS = """\
providers:
  dubbing: {type: panjaya}
  moderation:
    type: unitary
    secret: "${UNITARY_SECRET}"
"""
ACTIONS = """\
actions:
  archive:
    type: file
    path: "{{ provider }}.jsonl"
  ops-slack:
    type: slack
    webhook_url: "https://hooks.slack.invalid/services/x"
    text: "{{ payload.event }} on {{ payload.asset_id }}"
"""
RULES = """\
rules:
  - name: dub-failures
    provider: dubbing
    when: {event: {in: [asset_failed, version_failed]}}
    actions: [archive]
  - name: high-risk
    provider: moderation
    when:
      data.result.policy_categories[*].risk_level: HIGH
    actions: [ops-slack]
"""


@dataclass
class Case:
    id: str
    phrase: str  # a regex the problem line must contain (searched case-insensitively)
    head: str = HEAD
    providers: str = PROVIDERS
    actions: str = ACTIONS
    rules: str = RULES
    path: str | None = None  # the `path.in.file` part must start with this
    files: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()  # more values that must not be printed

    def text(self) -> str:
        return self.head + self.providers + self.actions + self.rules

    def marked_lines(self) -> list[int]:
        return [i for i, line in enumerate(self.text().splitlines(), 1) if line.rstrip().endswith(MARK)]


CASES = [
    # YAML syntax
    Case("yaml-mapping-values-not-allowed", r"yaml|syntax|mapping values",
         rules=RULES.replace("    when: {event: {in: [asset_failed, version_failed]}}",
                             "    when: event: asset_failed  #!")),
    Case("yaml-tab-indent", r"yaml|syntax|tab|\\t",
         providers=PROVIDERS + "\tstray: {type: none}  #!\n"),
    # unknown keys, with hints
    Case("unknown-top-level-key", r"unknown.*rulez.*did you mean 'rules'", head=HEAD + "rulez: []  #!\n",
         path="rulez"),
    Case("unknown-settings-key", r"max_body_byte\b.*did you mean 'max_body_bytes'",
         head=HEAD.replace("  max_body_bytes: 65536", "  max_body_byte: 65536  #!"), path="settings"),
    Case("unknown-provider-key", r"secrett.*did you mean 'secret'",
         providers=PROVIDERS.replace('    secret: "${UNITARY_SECRET}"', '    secrett: "${UNITARY_SECRET}"  #!'),
         path="providers.moderation"),
    Case("unknown-action-key", r"webhook_uri.*did you mean 'webhook_url'",
         actions=ACTIONS.replace("    webhook_url:", "    webhook_uri:").replace(
             '"https://hooks.slack.invalid/services/x"', '"https://hooks.slack.invalid/services/x"  #!'),
         path="actions.ops-slack"),
    Case("unknown-rule-key", r"stp.*did you mean 'stop'",
         rules=RULES + "    stp: true  #!\n", path="rules[1]"),
    Case("unknown-provider-option-on-panjaya", r"secret",
         providers=PROVIDERS.replace("  dubbing: {type: panjaya}", "  dubbing: {type: panjaya, secret: abcd1234}  #!"),
         path="providers.dubbing"),
    # unknown types
    Case("unknown-provider-type", r"panjya.*panjaya",
         providers=PROVIDERS.replace("  dubbing: {type: panjaya}", "  dubbing: {type: panjya}  #!"),
         path="providers.dubbing"),
    Case("unknown-action-type", r"slak.*slack",
         actions=ACTIONS.replace("    type: slack", "    type: slak  #!"), path="actions.ops-slack"),
    # conditions
    Case("unknown-operator", r"regx.*did you mean 'regex'",
         rules=RULES.replace("    when: {event: {in: [asset_failed, version_failed]}}",
                             '    when: {event: {regx: "^asset"}}  #!'),
         path="rules[0].when"),
    Case("unknown-operator-in-block-style", r"startwith.*did you mean 'startswith'",
         rules=RULES.replace("      data.result.policy_categories[*].risk_level: HIGH",
                             "      data.result.policy_categories[*].name:\n        startwith: ARMS  #!"),
         path="rules[1].when"),
    Case("bad-regex", r"regex|regular expression|unterminated|missing \)",
         rules=RULES.replace("    when: {event: {in: [asset_failed, version_failed]}}",
                             '    when: {asset_id: {regex: "([a-z"}}  #!'),
         path="rules[0].when"),
    # references
    Case("undefined-action", r"archiv\b",
         rules=RULES.replace("    actions: [archive]", "    actions: [archive, archiv]  #!"),
         path="rules[0].actions"),
    Case("undefined-provider", r"dubing",
         rules=RULES.replace("    provider: dubbing", "    provider: dubing  #!"), path="rules[0].provider"),
    Case("undefined-provider-in-list", r"moderaton",
         rules=RULES.replace("    provider: moderation", "    provider: [dubbing, moderaton]  #!"),
         path="rules[1].provider"),
    Case("duplicate-rule-name", r"duplicate",
         rules=RULES.replace("  - name: high-risk", "  - name: dub-failures  #!"), path="rules[1]"),
    Case("rule-without-actions", r"actions",
         rules=RULES + "  - {name: lonely, provider: dubbing}  #!\n", path="rules[2]"),
    # templates
    Case("template-syntax-error", r"template",
         actions=ACTIONS.replace('    text: "{{ payload.event }} on {{ payload.asset_id }}"',
                                 '    text: "{{ payload.x "  #!'),
         path="actions.ops-slack.text"),
    Case("template-syntax-error-in-file-path", r"template",
         actions=ACTIONS.replace('    path: "{{ provider }}.jsonl"', '    path: "{% if provider %}x.jsonl"  #!'),
         path="actions.archive.path"),
    Case("template-syntax-error-in-dedupe-key", r"template",
         providers=PROVIDERS + '  dedup:\n    type: none\n    dedupe: {key: "{{ payload.id ", window: 1h}  #!\n',
         path="providers.dedup.dedupe"),
    # environment variables
    Case("unset-env-var", r"NOPE_UNSET_VAR_4711",
         providers=PROVIDERS + '  videoid:\n    type: namirial-oneshot\n    token: "${NOPE_UNSET_VAR_4711}"  #!\n',
         path="providers.videoid.token"),
    Case("unset-env-var-in-action", r"NOPE_UNSET_VAR_4711",
         actions=ACTIONS.replace('"https://hooks.slack.invalid/services/x"',
                                 '"https://hooks.slack.invalid/${NOPE_UNSET_VAR_4711}"  #!'),
         path="actions.ops-slack.webhook_url"),
    # schemas
    Case("missing-schema-file", r"missing\.json",
         providers=PROVIDERS + "  orders:\n    type: none\n    schema: schemas/missing.json  #!\n",
         path="providers.orders"),
    Case("invalid-json-schema", r"schema",
         providers=PROVIDERS + "  orders:\n    type: none\n    schema: schemas/bad.json  #!\n",
         files={"schemas/bad.json": json.dumps({"type": "objekt", "required": "order_id"})},
         path="providers.orders"),
    Case("schema-file-not-json", r"json|schema",
         providers=PROVIDERS + "  orders:\n    type: none\n    schema: schemas/broken.json  #!\n",
         files={"schemas/broken.json": "{not json"}, path="providers.orders"),
    Case("hmac-without-schema", r"schema",
         providers=PROVIDERS + "  gh: {type: hmac, secret: abcd1234, header: X-Sig}  #!\n", path="providers.gh"),
    # values
    Case("bad-duration", r"duration",
         providers=PROVIDERS + '  dedup:\n    type: none\n    dedupe: {key: "{{ payload.id }}", window: soon}  #!\n',
         path="providers.dedup.dedupe"),
    Case("bad-cidr", r"10\.0\.0\.0/33|cidr|address|network",
         providers=PROVIDERS + "  videoid:\n    type: namirial-oneshot\n    allow_from: [10.0.0.0/33]  #!\n",
         path="providers.videoid.allow_from"),
    Case("bad-durability", r"fsynk.*fsync", head=HEAD + "  durability: fsynk  #!\n", path="settings.durability"),
    Case("bad-hmac-algorithm", r"sha384|algorithm",
         providers=PROVIDERS + "  gh:\n    type: hmac\n    secret: abcd1234\n    header: X-Sig\n"
                               "    algorithm: sha384  #!\n    schema: s.json\n",
         files={"s.json": "{}"}, path="providers.gh.algorithm"),
    Case("rules-not-a-list", r"list", rules="rules: {a: 1}  #!\n", path="rules"),
    # secrets that reach a faulty value must still not be printed
    Case("secret-env-in-bad-url", r"url",
         actions=ACTIONS + '  media:\n    type: forward\n    url: "${UNITARY_SECRET}"  #!\n',
         path="actions.media.url"),
    Case("secret-env-in-bad-template", r"template",
         actions=ACTIONS.replace('    text: "{{ payload.event }} on {{ payload.asset_id }}"',
                                 '    text: "{{ payload.x ${UNITARY_SECRET}"  #!'),
         path="actions.ops-slack.text"),
    Case("secret-env-in-bad-cidr", r"cidr|address|network|ip",
         providers=PROVIDERS + '  videoid:\n    type: namirial-oneshot\n    allow_from: ["${UNITARY_SECRET}"]  #!\n',
         path="providers.videoid.allow_from"),
    Case("secret-env-as-unknown-type", r"type",
         providers=PROVIDERS + '  odd:\n    type: "${UNITARY_SECRET}"  #!\n', path="providers.odd"),
    # several problems: every one is reported
    Case("two-problems", r".",
         rules=RULES.replace("    actions: [archive]", "    actions: [archivez]  #!").replace(
             "    provider: moderation", "    provider: moderashun  #!")),
]


def problem_lines(output: str, filename: str) -> list[tuple[int, int, str, str]]:
    """Parse `FILE:LINE:COL: path: message` lines."""
    pattern = re.compile(rf"^{re.escape(filename)}:(\d+):(\d+): (\S+): (.+)$")
    out = []
    for line in output.splitlines():
        m = pattern.match(line.strip())
        if m:
            out.append((int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)))
    return out


def assert_no_fragment_of(secret: str, output: str, size: int = 6) -> None:
    """Not even part of a secret: a parser that splits it into tokens must not quote a piece of it."""
    for i in range(len(secret) - size + 1):
        piece = secret[i:i + size]
        assert piece not in output, f"a piece of the secret ({piece!r}) is in the output:\n{output}"


def write_case(tmp_path: Path, case: Case) -> Path:
    for rel, content in case.files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)
    rules = tmp_path / "rules.yaml"
    rules.write_text(case.text())
    return rules


def test_cases_are_well_formed():
    assert len({c.id for c in CASES}) == len(CASES)
    for case in CASES:
        assert case.marked_lines(), f"{case.id} has no {MARK} marker"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_rules_file(tmp_path, case):
    rules = write_case(tmp_path, case)
    result = run_cli("validate", rules, env=ENV)
    assert result.code == 1, result
    assert "Traceback" not in result.output, result
    for secret in (SECRET, *case.secrets):
        assert secret not in result.output, f"secret leaked:\n{result}"
    assert_no_fragment_of(SECRET, result.output)

    problems = problem_lines(result.output, str(rules))
    assert problems, f"no FILE:LINE:COL: path: message line in output:\n{result}"
    reported_lines = {line for line, _col, _path, _msg in problems}
    for expected_line in case.marked_lines():
        assert expected_line in reported_lines, (
            f"expected a problem at line {expected_line}, got {sorted(reported_lines)}\n{result}")

    at_line = [p for p in problems if p[0] in case.marked_lines()]
    assert any(re.search(case.phrase, f"{path}: {msg}", re.IGNORECASE) for _l, _c, path, msg in at_line), (
        f"no problem at the marked line matches {case.phrase!r}:\n{result}")
    if case.path is not None:
        assert any(path.startswith(case.path) for _l, _c, path, _m in at_line), (
            f"no problem at the marked line has a path starting {case.path!r}:\n{result}")
    for _line, col, _path, _msg in problems:
        assert col >= 1


def test_problem_lines_are_in_file_order(tmp_path):
    case = next(c for c in CASES if c.id == "two-problems")
    rules = write_case(tmp_path, case)
    result = run_cli("validate", rules, env=ENV)
    lines = [p[0] for p in problem_lines(result.output, str(rules))]
    assert lines == sorted(lines), result


# --------------------------------------------------------------------------- valid files

VALID = """\
version: 1
settings:
  store: var/router.db
  files_root: var/files
  max_body_bytes: 65536
  durability: process
  retention: 7d
  retry: {schedule: [10s, 1m, 5m], jitter: 0.2}
  trusted_proxies: [10.0.0.1/32]
providers:
  dubbing: {type: panjaya}
  moderation:
    type: unitary
    secret: "${UNITARY_SECRET}"
  videoid:
    type: namirial-oneshot
    token: "${VIDEOID_TOKEN:-fallback-token-value}"
    allow_from: [10.0.0.0/8, "2001:db8::/32"]
    dedupe: {key: "{{ payload.request.pk }}-{{ payload.request.status }}", window: 1h}
    paths: [/videoid]
  orders:
    type: hmac
    secret: "${UNITARY_SECRET}"
    header: X-Signature
    algorithm: sha512
    encoding: base64
    prefix: "sha512="
    schema: schemas/order.json
  anything: {type: none}
actions:
  ops-slack:
    type: slack
    webhook_url: "${SLACK_WEBHOOK_URL:-https://hooks.slack.invalid/services/x}"
    text: "Dubbing {{ payload.event }} for {{ payload.asset_id }} ({{ payload.version_locale }})"
  archive:
    type: file
    path: "{{ provider }}/{{ received_at[:10] }}.jsonl"
  media:
    type: forward
    url: "http://127.0.0.1:9/events"
    headers: {Authorization: "Bearer ${UNITARY_SECRET}"}
    timeout: 10s
rules:
  - name: dub-failures
    provider: dubbing
    when: {event: {in: [asset_failed, version_failed, version_generate_failed]}}
    actions: [ops-slack, archive]
  - name: high-risk
    provider: [moderation]
    when:
      data.is_error: false
      data.result.policy_categories[*].risk_level: HIGH
    actions: [ops-slack]
    stop: true
  - name: combined
    when:
      any:
        - {"data.items[*].kind": video}
        - not: {event: {regex: "^version_"}}
        - all: [{$provider: videoid}, {$headers.x-tenant: acme}, {$query.filename: {exists: true}}]
    actions: [media]
  - name: everything
    actions: [archive]
"""


def test_valid_file_ok(tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "order.json").write_text(json.dumps({"type": "object", "required": ["id"]}))
    rules = tmp_path / "rules.yaml"
    rules.write_text(VALID)
    result = run_cli("validate", rules, env=ENV)
    assert result.code == 0, result
    assert "OK" in result.stdout
    assert SECRET not in result.output
    assert "Traceback" not in result.output


def test_valid_file_from_another_working_directory(tmp_path):
    """Relative paths (the schema) resolve against the rules file's folder, not the cwd."""
    (tmp_path / "conf" / "schemas").mkdir(parents=True)
    (tmp_path / "conf" / "schemas" / "order.json").write_text(json.dumps({"type": "object"}))
    rules = tmp_path / "conf" / "rules.yaml"
    rules.write_text(VALID)
    (tmp_path / "elsewhere").mkdir()
    result = run_cli("validate", rules, env=ENV, cwd=tmp_path / "elsewhere")
    assert result.code == 0, result


def test_unset_env_var_in_valid_file_is_reported_at_its_line(tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "order.json").write_text("{}")
    rules = tmp_path / "rules.yaml"
    rules.write_text(VALID)
    result = run_cli("validate", rules, env={**ENV, "UNITARY_SECRET": None})
    assert result.code == 1, result
    lines = VALID.splitlines()
    expected = {i for i, line in enumerate(lines, 1) if "${UNITARY_SECRET}" in line}
    problems = problem_lines(result.output, str(rules))
    reported = {p[0] for p in problems if "UNITARY_SECRET" in p[3]}
    assert expected <= reported, result


def test_rules_example_validates(tmp_path):
    example = PROJECT_ROOT / "rules.example.yaml"
    if not example.exists():
        pytest.skip("rules.example.yaml not written yet")
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", example.read_text()))
    env = {name: "https://example.invalid/placeholder-value" for name in names}
    result = run_cli("validate", example, env=env)
    assert result.code == 0, result


# --------------------------------------------------------------------------- files that are not rules files


@pytest.mark.parametrize(
    "content,phrase",
    [
        ("", r"empty|providers"),
        ("- a\n- b\n", r"mapping"),
        ("just a string\n", r"mapping"),
        (b"version: 1\nproviders: {p: {type: none}}\n# caf\xe9\n", r"utf-8|utf8|encoding|decode"),
    ],
    ids=["empty", "list", "scalar", "not-utf8"],
)
def test_not_a_rules_file(tmp_path, content, phrase):
    rules = tmp_path / "rules.yaml"
    rules.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run_cli("validate", rules, env=ENV)
    assert result.code == 1, result
    assert "Traceback" not in result.output
    problems = problem_lines(result.output, str(rules))
    assert problems, result
    assert any(re.search(phrase, msg, re.IGNORECASE) for *_x, msg in problems), result


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_path(tmp_path, kind):
    target = tmp_path / "nope.yaml"
    if kind == "directory":
        target.mkdir()
    result = run_cli("validate", target, env=ENV)
    assert result.code in (1, 2), result
    assert "Traceback" not in result.output
    assert "nope.yaml" in result.output


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    "args",
    [
        ["validate"],
        ["validate", "--no-such-flag", "rules.yaml"],
        ["validate", "a.yaml", "b.yaml"],
        ["no-such-command"],
        ["test", "rules.yaml", "payload.json"],  # --provider is required
    ],
    ids=["validate-no-file", "unknown-flag", "two-files", "unknown-command", "test-without-provider"],
)
def test_usage_errors_exit_2(tmp_path, args):
    (tmp_path / "rules.yaml").write_text(VALID)
    (tmp_path / "payload.json").write_text("{}")
    result = run_cli(*args, env=ENV, cwd=tmp_path)
    assert result.code == 2, result
    assert "Traceback" not in result.output
    assert re.search(r"usage", result.output, re.IGNORECASE), result


@pytest.mark.parametrize(
    "command",
    [[], ["validate"], ["test"], ["serve"], ["worker"], ["events"], ["dead-letters"], ["replay"], ["sign"]],
    ids=lambda c: " ".join(c) or "router",
)
def test_help_on_every_command(command):
    result = run_cli(*command, "--help")
    assert result.code == 0, result
    assert "Usage" in result.stdout
