"""Twilio: `X-Twilio-Signature: <base64 HMAC-SHA1>` keyed with the account's auth token.

The signed string is the URL Twilio requested: the public `url` it is configured with (behind a
proxy the router cannot know it), then the query string exactly as received; then, for a form
body, every parameter's name and value in sorted name order. A JSON body is covered instead by a
`bodySHA256` query parameter, the hex SHA-256 of the body. Twilio is inconsistent about writing
the default port, so, as its own validator does, the URL is tried with and without it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit, urlunsplit

from router.config.fields import Ctx, Field, as_secret, as_url
from router.config.source import PathT
from router.errors import AuthError
from router.pipeline.payload import FORM, MAX_FORM_FIELDS, is_form
from router.providers.base import Provider
from router.providers.signing import b64, empty_secrets, from_base64
from router.secret import Secret

MAX_FIELDS = MAX_FORM_FIELDS


def _as_public_url(ctx: Ctx, value: Any, path: PathT) -> str | None:
    url = as_url(ctx, value, path)
    if url is None:
        return None
    if "?" in url or "#" in url:
        ctx.error(path, "url is the public URL without a query string (the one received is appended)")
        return None
    return url


def url_variants(uri: str) -> list[str]:
    """The URI as given, and with its default port written or removed (Twilio's validator does both)."""
    parts = urlsplit(uri)
    if not parts.hostname:
        return [uri]
    if parts.port is not None:
        netloc = parts.netloc.rsplit(":", 1)[0]
    else:
        netloc = f"{parts.netloc}:{443 if parts.scheme == 'https' else 80}"
    return [uri, urlunsplit(parts._replace(netloc=netloc))]


def signed_string(uri: str, params: list[tuple[str, str]]) -> str:
    by_name: dict[str, set[str]] = {}
    for name, value in params:
        by_name.setdefault(name, set()).add(value)
    return uri + "".join(name + value for name in sorted(by_name) for value in sorted(by_name[name]))


class TwilioProvider(Provider):
    type_name = "twilio"
    bundled_schema = "twilio.json"
    options = {"auth_token": Field(as_secret, required=True), "url": Field(_as_public_url, required=True)}
    form_bodies = True
    signature_headers = frozenset({"x-twilio-signature"})

    def __init__(self, name: str, options: dict[str, Any]):
        super().__init__(name, options)
        self.token: Secret = options["auth_token"]
        self.url: str = options["url"]

    @classmethod
    def check(cls, options: dict[str, Any]) -> list[tuple[str | None, str]]:
        return empty_secrets(options, "auth_token")

    def digest(self, text: str) -> bytes:
        return hmac.new(self.token.reveal().encode("utf-8"), text.encode("utf-8"), hashlib.sha1).digest()

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        self.verify_request(body, headers, "")

    def verify_request(self, body: bytes, headers: Mapping[str, str], query_string: str) -> None:
        value = headers.get("x-twilio-signature")
        if not value or not value.strip():
            raise AuthError("missing X-Twilio-Signature header")
        given = from_base64(value)
        if given is None:
            raise AuthError("X-Twilio-Signature is not base64")
        # WSGI hands the query string over as latin-1 text of the bytes received
        query = query_string.encode("latin-1", "replace").decode("utf-8", "replace")
        uri = self.url + ("?" + query if query else "")
        form = is_form(headers.get("content-type"))
        params: list[tuple[str, str]] = []
        try:
            body_hash = parse_qs(query, keep_blank_values=True, max_num_fields=MAX_FIELDS).get("bodySHA256")
            if form:
                params = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
        except ValueError:  # more fields than any Twilio request has: nothing to verify
            raise AuthError("the request has too many parameters to verify") from None
        if not form and not body_hash:
            raise AuthError("a body that is not a form must be covered by the bodySHA256 query parameter")
        if body_hash is not None:
            actual = hashlib.sha256(body).hexdigest()
            if len(body_hash) != 1 or not hmac.compare_digest(body_hash[0].lower().encode(), actual.encode()):
                raise AuthError("bodySHA256 does not match the body")
        matched = False
        for candidate in url_variants(uri):
            matched |= hmac.compare_digest(self.digest(signed_string(candidate, params)), given)
        if not matched:
            raise AuthError("X-Twilio-Signature does not match the request")

    def sign_query(self, body: bytes) -> str:
        return "" if _looks_like_form(body) else f"bodySHA256={hashlib.sha256(body).hexdigest()}"

    def sign(self, body: bytes, private_key: bytes | None = None, *, timestamp: int | None = None) -> dict[str, str]:
        if _looks_like_form(body):
            params = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            return {"Content-Type": FORM, "X-Twilio-Signature": b64(self.digest(signed_string(self.url, params)))}
        uri = f"{self.url}?{self.sign_query(body)}"
        return {"X-Twilio-Signature": b64(self.digest(signed_string(uri, [])))}


def _looks_like_form(body: bytes) -> bool:
    # only `router sign` guesses: the service goes by the request's Content-Type
    return not body.lstrip().startswith((b"{", b"["))
