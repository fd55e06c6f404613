"""Authenticity under attack: malformed signatures, tokens near the real one, replays, forged addresses.

A module server (`trusted_proxies: [127.0.0.1/32]`, so the test client at 127.0.0.1 plays a reverse
proxy; a socket bound to 127.0.0.2 plays a client reaching the router directly) and a second one
without `trusted_proxies`. Every refused request is checked against the store: nothing written.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import json
import uuid

import pytest
import requests
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from support import (
    HMAC_SECRET,
    SECRET_ENV,
    UNITARY_SECRET,
    VIDEOID_TOKEN,
    RouterServer,
    dumps,
    events_count,
    indent,
    jobs_count,
    post_head,
    raw_request,
    sign_hmac,
    sign_panjaya,
    sign_unitary,
)

ORDER_SCHEMA = {
    "type": "object",
    "required": ["order_id", "amount"],
    "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
}


def rules(public_pem: str, *, trusted: bool) -> str:
    return f"""\
version: 1
settings:
  durability: process
{"  trusted_proxies: [127.0.0.1/32]" if trusted else ""}
providers:
  dubbing:
    type: panjaya
    public_key: |
{indent(public_pem, 6)}
  moderation: {{type: unitary, secret: "${{UNITARY_SECRET}}"}}
  shop-hex:
    type: hmac
    secret: "${{HMAC_SECRET}}"
    header: X-Shop-Signature
    prefix: "sha256="
    schema: schemas/order.json
  shop-b64:
    type: hmac
    secret: "${{HMAC_SECRET}}"
    header: X-B64-Signature
    algorithm: sha512
    encoding: base64
    schema: schemas/order.json
  deduped:
    type: hmac
    secret: "${{HMAC_SECRET}}"
    schema: schemas/order.json
    dedupe: {{key: "{{{{ payload.order_id }}}}", window: 1h}}
  videoid: {{type: namirial-oneshot, token: "${{VIDEOID_TOKEN}}"}}
  office: {{type: namirial-oneshot, allow_from: [10.0.0.0/8]}}
  second-loopback: {{type: none, allow_from: [127.0.0.2/32]}}
actions:
  archive: {{type: file, path: "{{{{ provider }}}}.jsonl"}}
rules:
  - name: all
    actions: [archive]
"""


@pytest.fixture(scope="module")
def server(start_router, panjaya_public_pem) -> RouterServer:
    return start_router(rules(panjaya_public_pem, trusted=True), env=SECRET_ENV,
                        files={"schemas/order.json": json.dumps(ORDER_SCHEMA)}, name="hostile-auth")


@pytest.fixture(scope="module")
def direct_server(start_router, panjaya_public_pem) -> RouterServer:
    """The same providers, but no `trusted_proxies`: X-Forwarded-For must never count."""
    return start_router(rules(panjaya_public_pem, trusted=False), env=SECRET_ENV,
                        files={"schemas/order.json": json.dumps(ORDER_SCHEMA)}, name="hostile-auth-direct")


def uid() -> str:
    return uuid.uuid4().hex[:12]


def panjaya_body() -> bytes:
    return dumps({"event": "version_failed", "asset_id": f"a-{uid()}", "version_id": f"v-{uid()}"})


def order_body() -> bytes:
    return dumps({"order_id": f"o-{uid()}", "amount": 12.5})


def unitary_body() -> bytes:
    return dumps({"data": {"job_id": uid(), "is_error": True, "result": {"error": "boom"}}})


def namirial_body() -> bytes:
    return dumps({"event_type": "status", "sent_at": "20261123070000", "request": {"status": "ENROLLREADY", "pk": 7}})


def post(server: RouterServer, session: requests.Session, path: str, body: bytes, headers: dict[str, str] | None = None,
         params: dict[str, str] | None = None) -> requests.Response:
    return session.post(server.url + path, data=body, headers={"Content-Type": "application/json", **(headers or {})},
                        params=params, timeout=20)


def assert_unauthorized(server: RouterServer, r, before: int, *, status: int = 401, secret_text: str = "") -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.json()["error"] == ("unauthorized" if status == 401 else "forbidden")
    if secret_text:
        assert secret_text not in r.text, "the error answer echoes the credential"
    assert events_count(server) == before, "an unauthenticated request was stored"


# --------------------------------------------------------------------------- panjaya (ES256, hex)


def _raw_rs(der_hex: str) -> str:
    r, s = decode_dss_signature(bytes.fromhex(der_hex))
    return (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()


@pytest.mark.parametrize("form", ["upper", "mixed", "raw-upper"])
def test_panjaya_hex_is_case_insensitive(server, session, panjaya_key, form):
    """Hex decoding is case-insensitive, so an upper-case rendering of a valid signature is the same
    signature and verifies."""
    body = panjaya_body()
    sig = sign_panjaya(body, panjaya_key)
    value = {
        "upper": sig.upper(),
        "mixed": "".join(c.upper() if i % 2 else c for i, c in enumerate(sig)),
        "raw-upper": _raw_rs(sig).upper(),
    }[form]
    r = post(server, session, "/hooks/dubbing", body, {"X-Signature": value})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("padding", [" ", "\t", "  \t "])
def test_panjaya_whitespace_around_a_valid_signature_is_ignored(server, panjaya_key, padding):
    """Leading/trailing whitespace is not part of an HTTP field value (RFC 9110 5.5): same signature."""
    body = panjaya_body()
    sig = sign_panjaya(body, panjaya_key)
    head = post_head("/hooks/dubbing", content_length=len(body), headers={"X-Signature": padding + sig + padding})
    r = raw_request(server, head, [body])
    assert r.status == 200, r


WRONG_LENGTHS = {
    "one-byte-short": lambda sig: sig[:-2],
    "one-nibble-short": lambda sig: sig[:-1],
    "one-byte-long": lambda sig: sig + "00",
    "doubled": lambda sig: sig + sig,
    "half": lambda sig: sig[: len(sig) // 2],
    "one-byte": lambda sig: sig[:2],
    "raw-63-bytes": lambda sig: _raw_rs(sig)[:-2],
    "raw-65-bytes": lambda sig: _raw_rs(sig) + "00",
    "zeros-64": lambda sig: "00" * 64,
    "zeros-72": lambda sig: "00" * 72,
    "huge": lambda sig: sig * 50,  # ~7 KB, under the server's 8 KB header-field limit
    "0x-prefix": lambda sig: "0x" + sig,
    "base64-instead-of-hex": lambda sig: base64.b64encode(bytes.fromhex(sig)).decode(),
    "non-hex": lambda sig: "zz" + sig[2:],
    "non-ascii": lambda sig: sig[:-2] + "é",
}


@pytest.mark.parametrize("mutate", list(WRONG_LENGTHS.values()), ids=list(WRONG_LENGTHS))
def test_panjaya_malformed_signature_is_401(server, panjaya_key, mutate):
    body = panjaya_body()
    value = mutate(sign_panjaya(body, panjaya_key))
    before = events_count(server)
    head = post_head("/hooks/dubbing", content_length=len(body), headers={"X-Signature": value})
    r = raw_request(server, head, [body])
    assert r.status == 401, r
    assert r.json()["error"] == "unauthorized"
    assert value.encode("utf-8", "replace")[:40] not in r.body
    assert events_count(server) == before


@pytest.mark.parametrize("algorithm", ["HS256", "none", "RS256", "ES256K", ""])
def test_panjaya_valid_signature_with_foreign_algorithm_header_is_401(server, session, panjaya_key, algorithm):
    """An X-Signature-Algorithm other than ES256 is refused even when the signature itself verifies:
    no algorithm confusion."""
    body = panjaya_body()
    before = events_count(server)
    r = post(server, session, "/hooks/dubbing", body,
             {"X-Signature": sign_panjaya(body, panjaya_key), "X-Signature-Algorithm": algorithm})
    if algorithm == "":
        # an empty header is as good as absent (RFC 9110 allows empty field values)
        assert r.status_code in (200, 401), r.text
        return
    assert_unauthorized(server, r, before)


# --------------------------------------------------------------------------- hmac (hex with prefix, base64) and unitary


def test_hmac_hex_upper_case_is_the_same_signature(server, session):
    """README: signatures are compared as bytes ("the bytes compared are the same"); hex digits in
    upper case decode to the same bytes, so they verify."""
    body = order_body()
    digest = sign_hmac(body, HMAC_SECRET)
    r = post(server, session, "/hooks/shop-hex", body, {"X-Shop-Signature": "sha256=" + digest.upper()})
    assert r.status_code == 200, r.text


def _hex_digest(body: bytes, secret: str = HMAC_SECRET, algorithm: str = "sha256") -> bytes:
    return hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).digest()


HEX_MUTATIONS = {
    "truncated-16-bytes": lambda body: "sha256=" + _hex_digest(body)[:16].hex(),
    "truncated-31-bytes": lambda body: "sha256=" + _hex_digest(body)[:31].hex(),
    "one-byte-long": lambda body: "sha256=" + _hex_digest(body).hex() + "00",
    "sha1-digest": lambda body: "sha256=" + _hex_digest(body, algorithm="sha1").hex(),
    "sha512-digest": lambda body: "sha256=" + _hex_digest(body, algorithm="sha512").hex(),
    "empty-after-prefix": lambda body: "sha256=",
    "prefix-only-missing": lambda body: _hex_digest(body).hex(),
    "wrong-prefix": lambda body: "sha1=" + _hex_digest(body).hex(),
    "prefix-twice": lambda body: "sha256=sha256=" + _hex_digest(body).hex(),
    "base64-instead-of-hex": lambda body: "sha256=" + base64.b64encode(_hex_digest(body)).decode(),
    "other-secret": lambda body: "sha256=" + _hex_digest(body, UNITARY_SECRET).hex(),
    "empty-secret": lambda body: "sha256=" + _hex_digest(body, "").hex(),
    "body-with-newline": lambda body: "sha256=" + _hex_digest(body + b"\n").hex(),
    "space-inside": lambda body: "sha256=" + _hex_digest(body).hex()[:10] + " " + _hex_digest(body).hex()[11:],
}


@pytest.mark.parametrize("mutate", list(HEX_MUTATIONS.values()), ids=list(HEX_MUTATIONS))
def test_hmac_hex_wrong_signature_is_401(server, session, mutate):
    body = order_body()
    value = mutate(body)
    before = events_count(server)
    r = post(server, session, "/hooks/shop-hex", body, {"X-Shop-Signature": value})
    assert_unauthorized(server, r, before, secret_text=value if len(value) > 10 else "")


def test_hmac_whitespace_around_a_valid_signature_is_ignored(server):
    body = order_body()
    value = sign_hmac(body, HMAC_SECRET, prefix="sha256=")
    r = raw_request(server, post_head("/hooks/shop-hex", content_length=len(body),
                                      headers={"X-Shop-Signature": "  " + value + "\t"}), [body])
    assert r.status == 200, r


B64_MUTATIONS = {
    "truncated": lambda body: base64.b64encode(_hex_digest(body, algorithm="sha512")[:32]).decode(),
    "sha256-digest": lambda body: base64.b64encode(_hex_digest(body)).decode(),
    "hex-instead-of-base64": lambda body: _hex_digest(body, algorithm="sha512").hex(),
    "junk-inside": lambda body: "!" + base64.b64encode(_hex_digest(body, algorithm="sha512")).decode(),
    "space-inside": lambda body: (lambda s: s[:20] + " " + s[20:])(
        base64.b64encode(_hex_digest(body, algorithm="sha512")).decode()),
    "empty-secret": lambda body: base64.b64encode(_hex_digest(body, "", algorithm="sha512")).decode(),
}


@pytest.mark.parametrize("mutate", list(B64_MUTATIONS.values()), ids=list(B64_MUTATIONS))
def test_hmac_base64_wrong_signature_is_401(server, session, mutate):
    body = order_body()
    before = events_count(server)
    r = post(server, session, "/hooks/shop-b64", body, {"X-B64-Signature": mutate(body)})
    assert_unauthorized(server, r, before)


def test_hmac_base64_valid_signature_is_accepted(server, session):
    body = order_body()
    r = post(server, session, "/hooks/shop-b64", body,
             {"X-B64-Signature": sign_hmac(body, HMAC_SECRET, "sha512", "base64")})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("form", ["plain", "github-prefix"])
def test_unitary_documented_forms_verify(server, session, form):
    body = unitary_body()
    sig = sign_unitary(body, UNITARY_SECRET)
    r = post(server, session, "/hooks/moderation", body,
             {"X-Hub-Signature-256": sig if form == "plain" else "sha256=" + sig})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("value", [
    lambda body: _hex_digest(body, UNITARY_SECRET).hex(),  # hex where base64 is expected
    lambda body: base64.b64encode(_hex_digest(body, UNITARY_SECRET)[:16]).decode(),
    lambda body: "sha256=",
    lambda body: "sha1=" + sign_unitary(body, UNITARY_SECRET),
    lambda body: base64.b64encode(_hex_digest(body, "")).decode(),
], ids=["hex", "truncated", "prefix-only", "other-prefix", "empty-secret"])
def test_unitary_wrong_signature_is_401(server, session, value):
    body = unitary_body()
    before = events_count(server)
    r = post(server, session, "/hooks/moderation", body, {"X-Hub-Signature-256": value(body)})
    assert_unauthorized(server, r, before)


# --------------------------------------------------------------------------- empty secrets: the config refuses them

EMPTY_SECRET_RULES = {
    "unitary-secret": 'providers:\n  p: {type: unitary, secret: ""}',
    "hmac-secret": 'providers:\n  p: {type: hmac, secret: "", schema: s.json}',
    "token": 'providers:\n  p: {type: none, token: ""}',
    "secret-from-empty-env": 'providers:\n  p: {type: unitary, secret: "${ROUTER_TEST_EMPTY}"}',
    "secret-from-empty-default": 'providers:\n  p: {type: unitary, secret: "${ROUTER_TEST_UNSET:-}"}',
    "token-from-empty-env": 'providers:\n  p: {type: namirial-oneshot, token: "${ROUTER_TEST_EMPTY}"}',
}


@pytest.mark.parametrize("providers", list(EMPTY_SECRET_RULES.values()), ids=list(EMPTY_SECRET_RULES))
def test_empty_secret_or_token_is_a_validation_error(tmp_path, providers):
    from router.cli import cli

    (tmp_path / "s.json").write_text('{"type": "object"}')
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(f"version: 1\n{providers}\nactions:\n  a: {{type: file, path: x.jsonl}}\n"
                          "rules:\n  - name: r\n    actions: [a]\n")
    result = CliRunner(env={"ROUTER_TEST_EMPTY": "", "ROUTER_TEST_UNSET": None}).invoke(
        cli, ["validate", str(rules_file)])
    assert result.exit_code == 1, result.output
    assert "providers.p." in result.output, result.output
    assert "Traceback" not in result.output


def test_non_empty_secret_control_case_validates(tmp_path):
    from router.cli import cli

    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text('version: 1\nproviders:\n  p: {type: unitary, secret: "${ROUTER_TEST_SET}"}\n'
                          "actions:\n  a: {type: file, path: x.jsonl}\nrules:\n  - name: r\n    actions: [a]\n")
    result = CliRunner(env={"ROUTER_TEST_SET": "s3cret-value"}).invoke(cli, ["validate", str(rules_file)])
    assert result.exit_code == 0, result.output
    assert "s3cret-value" not in result.output


# --------------------------------------------------------------------------- replay under dedupe


def test_replayed_signed_request_is_a_duplicate_with_no_new_jobs(server, session):
    body = order_body()
    headers = {"X-Signature": sign_hmac(body, HMAC_SECRET)}
    first = post(server, session, "/hooks/deduped", body, headers)
    assert first.status_code == 200, first.text
    assert first.json()["deliveries"] == 1
    events, jobs = events_count(server), jobs_count(server)
    for _ in range(3):
        again = post(server, session, "/hooks/deduped", body, headers)
        assert again.status_code == 200, again.text
        assert again.json() == {"event_id": first.json()["event_id"], "duplicate": True,
                                "matched": first.json()["matched"], "deliveries": 0}
    assert (events_count(server), jobs_count(server)) == (events, jobs)


# --------------------------------------------------------------------------- tokens


def test_token_comparison_is_constant_time_in_code():
    """Code-level: the token check goes through Secret.matches, which uses hmac.compare_digest."""
    from router import secret
    from router.pipeline import ingest
    from router.providers import hmac as hmac_provider

    assert "hmac.compare_digest" in inspect.getsource(secret.Secret.matches)
    auth = inspect.getsource(ingest.authenticate)
    assert "spec.token.matches(" in auth
    assert "== spec.token" not in auth and "spec.token ==" not in auth
    assert "compare_digest" in inspect.getsource(hmac_provider.HmacProvider.verify)


def test_token_comparison_calls_compare_digest(monkeypatch):
    """Behavioural at the unit level: every comparison, right or wrong, goes through compare_digest."""
    from router import secret

    calls = []
    real = secret.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(secret.hmac, "compare_digest", spy)
    token = secret.Secret("abcdef")
    assert token.matches("abcdef") and not token.matches("abc") and not token.matches("abcdefg")
    assert len(calls) == 3


NEAR_TOKENS = {
    "prefix": VIDEOID_TOKEN[:-1],
    "half": VIDEOID_TOKEN[: len(VIDEOID_TOKEN) // 2],
    "appended": VIDEOID_TOKEN + "x",
    "appended-nul": VIDEOID_TOKEN + "\x00",
    "appended-space": VIDEOID_TOKEN + " ",
    "upper-case": VIDEOID_TOKEN.upper(),
    "last-char-changed": VIDEOID_TOKEN[:-1] + chr(ord(VIDEOID_TOKEN[-1]) + 1),
    "non-ascii-appended": VIDEOID_TOKEN + "é",
    "empty": "",
}


def _sendable_as_header(token: str) -> bool:
    return token == token.strip() and "\x00" not in token and token.isascii()


NEAR_TOKEN_CASES = [pytest.param(where, token, id=f"{name}-{where}") for name, token in NEAR_TOKENS.items()
                    for where in ("query", "header") if where == "query" or _sendable_as_header(token)]


@pytest.mark.parametrize("where, token", NEAR_TOKEN_CASES)
def test_token_near_the_real_one_is_401(server, session, where, token):
    before = events_count(server)
    if where == "query":
        r = post(server, session, "/hooks/videoid", namirial_body(), params={"token": token})
    else:
        r = post(server, session, "/hooks/videoid", namirial_body(), {"X-Router-Token": token})
    assert_unauthorized(server, r, before)
    assert VIDEOID_TOKEN[:6] not in r.text


@pytest.mark.parametrize("where", ["query", "header"])
def test_the_real_token_is_accepted(server, session, where):
    kw = {"params": {"token": VIDEOID_TOKEN}} if where == "query" else {"headers": {"X-Router-Token": VIDEOID_TOKEN}}
    r = post(server, session, "/hooks/videoid", namirial_body(), **kw)
    assert r.status_code == 200, r.text


def test_a_wrong_query_token_is_not_rescued_by_a_right_header(server, session):
    before = events_count(server)
    r = post(server, session, "/hooks/videoid", namirial_body(), {"X-Router-Token": VIDEOID_TOKEN},
             params={"token": "wrong"})
    assert_unauthorized(server, r, before)


# --------------------------------------------------------------------------- allow_from and X-Forwarded-For


def from_proxy(server: RouterServer, session: requests.Session, path: str, body: bytes, xff: str | None):
    """From 127.0.0.1 (a trusted proxy on `server`, an ordinary client on `direct_server`)."""
    return post(server, session, path, body, {"X-Forwarded-For": xff} if xff is not None else {})


def from_second_loopback(server: RouterServer, path: str, body: bytes, xff: str | None = None):
    """From 127.0.0.2: a peer that is not a trusted proxy on either server."""
    headers = {"X-Forwarded-For": xff} if xff is not None else {}
    return raw_request(server, post_head(path, content_length=len(body), headers=headers), [body],
                       source="127.0.0.2")


@pytest.mark.parametrize("xff, status", [
    ("10.1.2.3", 200),                       # the proxy vouches for an allowed client
    ("198.51.100.7, 10.1.2.3", 200),         # the left entry is the client's to forge; the proxy saw 10.1.2.3
    ("10.1.2.3, 127.0.0.1", 200),            # a chain of trusted proxies in front of the client
    (None, 403),                             # the proxy itself is not an allowed client
    ("10.1.2.3, 198.51.100.7", 403),         # forged: the client wrote 10.1.2.3, the proxy saw 198.51.100.7
    ("10.1.2.3, 198.51.100.7, 127.0.0.1", 403),
    ("garbage", 403),
    ("10.1.2.3, garbage", 403),
    ("10.1.2.3:4711", 403),
    ("", 403),
])
def test_x_forwarded_for_from_a_trusted_proxy(server, session, xff, status):
    before = events_count(server)
    r = from_proxy(server, session, "/hooks/office", namirial_body(), xff)
    assert r.status_code == status, (xff, r.status_code, r.text)
    assert events_count(server) == before + (1 if status == 200 else 0)


def test_forged_x_forwarded_for_from_an_untrusted_peer_is_ignored(server):
    before = events_count(server)
    r = from_second_loopback(server, "/hooks/office", namirial_body(), "10.1.2.3")
    assert r.status == 403, r
    assert events_count(server) == before


def test_allow_from_matches_the_real_peer(server):
    r = from_second_loopback(server, "/hooks/second-loopback", b'{"a": 1}')
    assert r.status == 200, r


@pytest.mark.parametrize("xff", ["10.1.2.3", "127.0.0.1, 10.1.2.3", "10.0.0.1, 10.1.2.3"])
def test_without_trusted_proxies_x_forwarded_for_never_counts(direct_server, session, xff):
    before = events_count(direct_server)
    r = from_proxy(direct_server, session, "/hooks/office", namirial_body(), xff)
    assert r.status_code == 403, r.text
    assert events_count(direct_server) == before


def test_without_trusted_proxies_x_forwarded_for_cannot_claim_an_allowed_peer(direct_server, session):
    before = events_count(direct_server)
    r = from_proxy(direct_server, session, "/hooks/second-loopback", b'{"a": 1}', "127.0.0.2")
    assert r.status_code == 403, r.text
    assert events_count(direct_server) == before
    assert from_second_loopback(direct_server, "/hooks/second-loopback", b'{"a": 1}', "203.0.113.9").status == 200
