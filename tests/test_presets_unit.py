"""Provider presets in-process: the providers' published test vectors, our signing checked by their
official libraries, the options `router validate` knows, form parsing, `router sign` and `router test`.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import run_cli
from support.presets import (
    FORM,
    SLACK_COMMAND,
    STRIPE_SECRET,
    SW_NEW,
    SW_OLD,
    TWILIO_TOKEN,
    TWILIO_URL,
    slack_event_body,
    stripe_body,
    sw_body,
    twilio_params,
)

from router.config.loader import loads
from router.errors import AuthError, ConfigError, PayloadError
from router.pipeline.payload import parse_form, parse_payload
from router.providers import PROVIDER_TYPES


def provider(entry: str, env: dict[str, str] | None = None) -> Any:
    config = loads(f"providers:\n  p: {entry}\nrules: []\n", env=env or {})
    return config.providers["p"].impl


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


# --------------------------------------------------------------------------- published test vectors


def test_github_documented_vector() -> None:
    """GitHub's "Validating webhook deliveries" example."""
    gh = provider("""{type: github, secret: "It's a Secret to Everybody"}""")
    sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    gh.verify(b"Hello, World!", {"x-hub-signature-256": sig})
    assert gh.sign(b"Hello, World!") == {"X-Hub-Signature-256": sig}
    with pytest.raises(AuthError):
        gh.verify(b"Hello, World?", {"x-hub-signature-256": sig})


SLACK_VECTOR_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)


def test_slack_documented_vector() -> None:
    """Slack's "Verifying requests from Slack" example (also slack_sdk's test), at its own time."""
    sl = provider("{type: slack, signing_secret: 8f742231b10e8888abcd99yyyzzz85a5}")
    headers = {"x-slack-request-timestamp": "1531420618",
               "x-slack-signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"}
    with pytest.raises(AuthError, match="tolerance"):
        sl.verify(SLACK_VECTOR_BODY, headers)  # years old: a replay
    sl.clock = lambda: 1531420618 + 299.0  # the past cannot be run here: only the clock is stood in for
    sl.verify(SLACK_VECTOR_BODY, headers)
    assert sl.sign(SLACK_VECTOR_BODY, timestamp=1531420618)["X-Slack-Signature"] == headers["x-slack-signature"]
    sl.clock = lambda: 1531420618 + 301.0
    with pytest.raises(AuthError, match="tolerance"):
        sl.verify(SLACK_VECTOR_BODY, headers)
    sl.clock = lambda: 1531420618 - 301.0
    with pytest.raises(AuthError, match="tolerance"):
        sl.verify(SLACK_VECTOR_BODY, headers)


def test_standard_webhooks_reference_vector() -> None:
    """The reference library's test_sign_function: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw."""
    sw = provider("{type: standard-webhooks, secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}")
    sw.clock = lambda: 1614265330.0
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    sw.verify(b'{"test": 2432232314}', headers)
    with pytest.raises(AuthError):  # the library's "invalid signature" case: one character changed
        sw.verify(b'{"test": 2432232314}', {**headers, "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="})
    svix = {k.replace("webhook-", "svix-"): v for k, v in headers.items()}
    sw.verify(b'{"test": 2432232314}', svix)


TWILIO_VECTOR_PARAMS = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309",
                        "To": "+18005551212", "Caller": "+14158675309"}


@pytest.mark.parametrize(("url", "signature"), [
    ("https://mycompany.com/myapp.php", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
    ("https://mycompany.com/myapp.php", "kvajT1Ptam85bY51eRf/AJRuM3w="),  # signed with :443 written
    ("https://mycompany.com:1234/myapp.php", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),  # signed without the port
    ("http://mycompany.com:1234/myapp.php", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
    ("http://mycompany.com/myapp.php", "0ZXoZLH/DfblKGATFgpif+LLRf4="),  # signed with :80 written
])
def test_twilio_library_vectors(url: str, signature: str) -> None:
    """twilio-python's test_request_validator: token 12345, ?foo=1&bar=2, and its port variants."""
    from urllib.parse import urlencode

    tw = provider(f"{{type: twilio, auth_token: '12345', url: '{url}'}}")
    headers = {"content-type": FORM, "x-twilio-signature": signature}
    tw.verify_request(urlencode(TWILIO_VECTOR_PARAMS).encode(), headers, "foo=1&bar=2")
    with pytest.raises(AuthError):
        tw.verify_request(urlencode(TWILIO_VECTOR_PARAMS).encode(), headers, "foo=1&bar=3")


def test_twilio_library_json_body_vector() -> None:
    tw = provider("{type: twilio, auth_token: '12345', url: 'https://mycompany.com/myapp.php'}")
    body = b'{"property": "value", "boolean": true}'
    query = "foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
    headers = {"content-type": "application/json", "x-twilio-signature": "a9nBmqA0ju/hNViExpshrM61xv4="}
    tw.verify_request(body, headers, query)
    with pytest.raises(AuthError, match="bodySHA256"):
        tw.verify_request(body.replace(b"true", b"false"), headers, query)


# --------------------------------------------------------------------------- our signing, checked by official libraries


def test_stripe_sign_verifies_with_the_stripe_library() -> None:
    import stripe

    st = provider(f"{{type: stripe, secret: '{STRIPE_SECRET}'}}")
    body = stripe_body()
    header = st.sign(body)["Stripe-Signature"]
    assert stripe.WebhookSignature.verify_header(body.decode(), header, STRIPE_SECRET, tolerance=300)
    st.verify(body, {"stripe-signature": stripe.WebhookSignature.generate_signature_header(body.decode(), STRIPE_SECRET)})


def test_slack_sign_verifies_with_slack_sdk() -> None:
    from slack_sdk.signature import SignatureVerifier

    sl = provider("{type: slack, signing_secret: s3cr3t-signing}")
    for body in (slack_event_body(), SLACK_COMMAND):
        assert SignatureVerifier("s3cr3t-signing").is_valid_request(body, sl.sign(body))


def test_standard_webhooks_sign_verifies_with_the_reference_library() -> None:
    from standardwebhooks.webhooks import Webhook

    sw = provider(f"{{type: standard-webhooks, secret: [{SW_OLD}, {SW_NEW}]}}")
    body = sw_body()
    headers = sw.sign(body)
    for secret in (SW_OLD, SW_NEW):  # signed with every listed key, as a sender mid-rotation does
        assert Webhook(secret).verify(body, headers) == json.loads(body)


def test_twilio_sign_verifies_with_the_twilio_library() -> None:
    from urllib.parse import urlencode

    from twilio.request_validator import RequestValidator

    tw = provider(f"{{type: twilio, auth_token: {TWILIO_TOKEN}, url: '{TWILIO_URL}'}}")
    validator = RequestValidator(TWILIO_TOKEN)
    params = twilio_params()
    form = urlencode(params).encode()
    assert validator.validate(TWILIO_URL, params, tw.sign(form)["X-Twilio-Signature"])
    body = b'{"Body": "hi"}'
    uri = f"{TWILIO_URL}?{tw.sign_query(body)}"
    assert validator.validate(uri, body.decode(), tw.sign(body)["X-Twilio-Signature"])


# --------------------------------------------------------------------------- options, as `router validate` sees them


PRESET_ENTRIES = {
    "github": "{type: github, secret: s}",
    "stripe": "{type: stripe, secret: whsec_s, tolerance: 10m}",
    "slack": "{type: slack, signing_secret: s, tolerance: 1m}",
    "standard-webhooks": f"{{type: standard-webhooks, secret: {SW_NEW}, tolerance: 30s}}",
    "shopify": "{type: shopify, secret: s}",
    "twilio": "{type: twilio, auth_token: t, url: 'https://example.com/sms'}",
}


@pytest.mark.parametrize("type_name", sorted(PRESET_ENTRIES))
def test_each_preset_loads_and_misspelt_options_get_a_hint(type_name: str) -> None:
    impl = provider(PRESET_ENTRIES[type_name])
    assert impl.type_name == type_name
    option = next(iter(PROVIDER_TYPES[type_name].options))
    misspelt = PRESET_ENTRIES[type_name].replace(f" {option}:", f" {option[:-1]}:", 1)
    with pytest.raises(ConfigError) as err:
        provider(misspelt)
    assert f"unknown key '{option[:-1]}' (did you mean '{option}'?)" in str(err.value)
    assert f"missing required key '{option}'" in str(err.value)


def test_tolerance_is_a_duration_defaulting_to_five_minutes() -> None:
    assert provider("{type: stripe, secret: whsec_s}").tolerance == 300.0
    assert provider("{type: stripe, secret: whsec_s, tolerance: 10m}").tolerance == 600.0
    with pytest.raises(ConfigError, match="expected a duration"):
        provider("{type: slack, signing_secret: s, tolerance: soon}")
    with pytest.raises(ConfigError, match="at least 1s"):
        provider(f"{{type: standard-webhooks, secret: {SW_NEW}, tolerance: 0}}")


@pytest.mark.parametrize(("entry", "message"), [
    ("{type: githb, secret: s}", "unknown provider type 'githb' (did you mean 'github'?)"),
    ("{type: standard-webhooks, secret: 'whsec_not base64!'}", "'whsec_' followed by base64"),
    ("{type: standard-webhooks, secret: []}", "at least one secret"),
    ("{type: twilio, auth_token: t, url: 'https://example.com/sms?x=1'}", "without a query string"),
    ("{type: twilio, auth_token: t, url: 'example.com/sms'}", "http:// or https://"),
    ("{type: shopify, secret: ''}", "secret is empty"),
    ("{type: slack, signing_secret: ''}", "signing_secret is empty"),
    ("{type: github, secret: s, dedupe: true}", "dedupe must be a mapping with 'key' and 'window', or off"),
])
def test_preset_option_errors(entry: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        provider(entry)
    assert message in str(err.value)


def test_secrets_are_not_quoted_in_errors() -> None:
    with pytest.raises(ConfigError) as err:
        provider("{type: standard-webhooks, secret: '${SW}'}", env={"SW": "whsec_*leaked-secret-value*"})
    assert "leaked-secret-value" not in str(err.value)


@pytest.mark.parametrize("value", ["off", '"off"', "false"])
def test_dedupe_off(value: str) -> None:
    config = loads(f"providers:\n  p: {{type: github, secret: s, dedupe: {value}}}\nrules: []\n", env={})
    assert config.providers["p"].default_dedupe is False and config.providers["p"].dedupe is None


def test_router_validate_names_the_option(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("providers:\n  sl: {type: slack, signing_secert: hunter2-secret}\nrules: []\n")
    result = run_cli("validate", rules)
    assert result.code == 1
    assert "providers.sl.signing_secert: unknown key 'signing_secert' (did you mean 'signing_secret'?)" in result.stdout + result.stderr
    assert "hunter2" not in result.stdout + result.stderr


# --------------------------------------------------------------------------- form bodies


def test_form_becomes_an_object_of_names_to_values() -> None:
    assert parse_form(SLACK_COMMAND)["response_url"] == "https://hooks.slack.com/commands/T1/1/x"
    assert parse_form(b"a=1&b=&c=x+y%2Bz") == {"a": "1", "b": "", "c": "x y+z"}
    assert parse_form(b"") == {}
    assert parse_form(b"payload=%7B%22type%22%3A%22block_actions%22%7D", {"payload"}) == {
        "payload": {"type": "block_actions"}}
    assert parse_form(b"payload=%7B%7D") == {"payload": "{}"}  # JSON only where the provider says so


@pytest.mark.parametrize("body", [b"a=1&a=2", b"a", b"a=%ff", b"\xff=1", b"payload=%5B1%5D", b"payload=nope",
                                  b"&".join(b"f%d=1" % i for i in range(1001))])
def test_bad_forms_are_refused(body: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_form(body, {"payload"})


def test_form_parsing_is_chosen_by_the_provider_not_the_content_type_alone() -> None:
    assert parse_payload(b"a=1", "application/x-www-form-urlencoded; charset=utf-8", forms=True) == {"a": "1"}
    with pytest.raises(PayloadError, match="JSON"):
        parse_payload(b"a=1", FORM, forms=False)
    assert parse_payload(b'{"a": 1}', "application/json", forms=True) == {"a": 1}


# --------------------------------------------------------------------------- event types and delivery ids


@pytest.mark.parametrize(("type_name", "headers", "payload", "event_type", "delivery_id"), [
    ("github", {"x-github-event": "push", "x-github-delivery": "d-1"}, {}, "push", "d-1"),
    ("stripe", {}, {"id": "evt_1", "type": "charge.refunded"}, "charge.refunded", "evt_1"),
    ("slack", {}, {"type": "event_callback", "event_id": "Ev1", "event": {"type": "app_mention"}}, "app_mention",
     "Ev1"),
    ("slack", {}, {"command": "/deploy", "text": "x"}, "/deploy", None),
    ("slack", {}, {"payload": {"type": "view_submission"}}, "view_submission", None),
    ("standard-webhooks", {"webhook-id": "msg_1"}, {"type": "user.created"}, "user.created", "msg_1"),
    ("standard-webhooks", {"svix-id": "msg_2"}, {"type": 5}, None, "msg_2"),
    ("shopify", {"x-shopify-topic": "orders/create", "x-shopify-webhook-id": "w-1"}, {}, "orders/create", "w-1"),
    ("twilio", {}, {"Body": "hi"}, None, None),
])
def test_event_type_and_delivery_id(type_name: str, headers: dict, payload: dict, event_type: str | None,
                                    delivery_id: str | None) -> None:
    impl = provider(PRESET_ENTRIES[type_name])
    assert impl.event_type(headers, payload) == event_type
    assert impl.delivery_id(headers, payload) == delivery_id


# --------------------------------------------------------------------------- the command line


def _rules(tmp_path: Path) -> Path:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "providers:\n"
        f"  st: {{type: stripe, secret: '{STRIPE_SECRET}'}}\n"
        f"  tw: {{type: twilio, auth_token: '{TWILIO_TOKEN}', url: '{TWILIO_URL}'}}\n"
        "  sl: {type: slack, signing_secret: slack-cli-secret}\n"
        "actions:\n  log: {type: file, path: log.jsonl}\n"
        "rules:\n"
        "  - {name: deploy, provider: sl, when: {$event: /deploy}, actions: [log]}\n"
        "  - {name: paid, provider: st, when: {$event: payment_intent.succeeded}, actions: [log]}\n"
    )
    return rules


def test_router_sign_with_timestamp_verifies_with_stripe(tmp_path: Path) -> None:
    import stripe

    body = tmp_path / "event.json"
    body.write_bytes(stripe_body())
    result = run_cli("sign", "--rules", _rules(tmp_path), "--provider", "st", "--timestamp", "1700000000", body)
    assert result.code == 0, result.stderr
    headers = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert headers["Stripe-Signature"].startswith("t=1700000000,v1=")
    assert stripe.WebhookSignature.verify_header(body.read_text(), headers["Stripe-Signature"], STRIPE_SECRET)
    assert STRIPE_SECRET not in result.stdout + result.stderr


def test_router_sign_twilio_json_puts_body_sha256_on_the_curl_url(tmp_path: Path) -> None:
    body = tmp_path / "event.json"
    body.write_bytes(b'{"Body": "hi"}')
    result = run_cli("sign", "--rules", _rules(tmp_path), "--provider", "tw", "--curl",
                     "http://127.0.0.1:8080/hooks/tw", body)
    assert result.code == 0, result.stderr
    assert "http://127.0.0.1:8080/hooks/tw?bodySHA256=" in result.stdout
    assert "X-Twilio-Signature: " in result.stdout


def test_router_test_parses_a_slack_form_and_matches_on_event(tmp_path: Path) -> None:
    payload = tmp_path / "command.txt"
    payload.write_bytes(SLACK_COMMAND)
    result = run_cli("test", _rules(tmp_path), "--provider", "sl", payload, "--header", f"Content-Type:{FORM}",
                     "--expect", "deploy")
    assert result.code == 0, result.stdout + result.stderr
    assert "expectation met" in result.stdout


def test_every_preset_has_a_bundled_schema_and_a_readme_row() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text("utf-8")
    for type_name in PRESET_ENTRIES:
        cls = PROVIDER_TYPES[type_name]
        assert cls.bundled_schema and (root / "schemas" / cls.bundled_schema).is_file()
        table = readme.split("### Providers", 1)[1].split("Options every provider takes", 1)[0]
        [row] = [line for line in table.splitlines() if line.startswith(f"| `{type_name}` |")]
        for option in cls.options:  # every option the loader knows is documented in the row
            assert f"`{option}`" in row, (type_name, option)
        assert f"type: {type_name}" in readme  # a rules snippet


def test_standard_webhooks_unpadded_secret_as_the_library_accepts() -> None:
    key = base64.b64encode(b"k" * 20).decode().rstrip("=")
    sw = provider(f"{{type: standard-webhooks, secret: whsec_{key}}}")
    assert sw.keys == [b"k" * 20]


def test_readme_preset_snippets_validate() -> None:
    import re

    import yaml

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    section = readme.split("### Presets: GitHub", 1)[1].split("\n## ", 1)[0]
    snippets = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(snippets) == 6
    for text in snippets:
        doc = yaml.safe_load(text)
        names = {a for rule in doc["rules"] for a in rule["actions"]}
        doc["actions"] = {name: {"type": "file", "path": f"{name}.jsonl"} for name in names}
        env = {name: "whsec_" + base64.b64encode(b"k" * 24).decode() for name in re.findall(r"\$\{(\w+)\}", text)}
        config = loads(yaml.safe_dump(doc), env=env)
        assert {spec.type for spec in config.providers.values()} <= set(PRESET_ENTRIES)
        assert config.warnings == [], [str(w) for w in config.warnings]  # `router validate` says nothing


def test_validate_warns_about_a_misspelt_stripe_field_but_not_open_payloads() -> None:
    config = loads(
        "providers:\n  st: {type: stripe, secret: whsec_x}\n  gh: {type: github, secret: s}\n"
        "  tw: {type: twilio, auth_token: t, url: 'https://example.com/sms'}\n"
        "actions:\n  a: {type: file, path: 'x/{{ event_type }}.jsonl'}\n"
        "rules:\n"
        "  - {name: typo, provider: st, when: {typ: x}, actions: [a]}\n"
        "  - {name: fine, provider: st, when: {data.object.amount: {gt: 1}}, actions: [a]}\n"
        "  - {name: push, provider: gh, when: {ref: refs/heads/main, head_commit.message: {regex: x}}, actions: [a]}\n"
        "  - {name: sms, provider: tw, when: {NumMedia: '1'}, actions: [a]}\n",
        env={},
    )
    assert [w.path for w in config.warnings] == ["rules[0].when.typ"]
    assert "did you mean 'type'?" in config.warnings[0].message


def test_event_path_in_rules() -> None:
    from router.pipeline.conditions import EventView

    config = loads(
        "providers:\n  gh: {type: github, secret: s}\n  plain: {type: none}\n"
        "actions:\n  log: {type: file, path: log.jsonl}\n"
        "rules:\n"
        + "".join(f"  - {{name: r{i}, provider: gh, when: {{$event: e{i}}}, actions: [log]}}\n" for i in range(8))
        + "  - {name: untyped, when: {$event: {exists: false}}, actions: [log]}\n",
        env={},
    )
    assert [r.name for r in config.router.match(EventView({}, {}, {}, "gh", "e5"))] == ["r5"]  # through the index
    assert [r.name for r in config.router.match(EventView({}, {}, {}, "plain"))] == ["untyped"]
    with pytest.raises(ConfigError, match=r"unknown path '\$evnt' \(did you mean '\$event'\?\)"):
        loads("providers:\n  gh: {type: github, secret: s}\nactions:\n  log: {type: file, path: l}\n"
              "rules:\n  - {name: r, when: {$evnt: push}, actions: [log]}\n", env={})


# --------------------------------------------------------------------------- properties

_FORM_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_FORM_TEXT, _FORM_TEXT, max_size=8))
def test_a_form_parses_back_to_what_was_encoded(fields: dict[str, str]) -> None:
    from urllib.parse import urlencode

    assert parse_form(urlencode(fields).encode()) == fields


_SIGNED = {
    "github": lambda p, b: (p.sign(b), ""),
    "stripe": lambda p, b: (p.sign(b), ""),
    "slack": lambda p, b: (p.sign(b), ""),
    "standard-webhooks": lambda p, b: (p.sign(b), ""),
    "shopify": lambda p, b: (p.sign(b), ""),
    "twilio": lambda p, b: (p.sign(b), p.sign_query(b)),
}


@settings(max_examples=60, deadline=None)
@given(type_name=st.sampled_from(sorted(_SIGNED)), body=st.binary(min_size=1, max_size=64).map(lambda b: b"{" + b),
       position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_changed_byte_of_a_signed_body_is_refused(type_name: str, body: bytes, position: int, flip: int) -> None:
    impl = provider(PRESET_ENTRIES[type_name])
    headers, query = _SIGNED[type_name](impl, body)
    headers = lower(headers)
    impl.verify_request(body, headers, query)  # as signed: authentic
    i = position % len(body)
    changed = body[:i] + bytes([body[i] ^ flip]) + body[i + 1:]
    with pytest.raises(AuthError):
        impl.verify_request(changed, headers, query)
