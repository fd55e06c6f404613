"""Signing as each provider does, key material, and the secrets the test rules files use."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import textwrap
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

UNITARY_SECRET = "unitary-test-secret-7f3a9c"
HMAC_SECRET = "hmac-test-secret-51d2e8"
VIDEOID_TOKEN = "videoid-token-a8b9c0d1"
SECRET_ENV = {"UNITARY_SECRET": UNITARY_SECRET, "HMAC_SECRET": HMAC_SECRET, "VIDEOID_TOKEN": VIDEOID_TOKEN}


def new_p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def sign_panjaya(body: bytes, key: ec.EllipticCurvePrivateKey, raw: bool = False) -> str:
    """The `X-Signature` value Panjaya sends: hex of the DER ES256 signature, or of raw r||s (JWS form)."""
    der = key.sign(body, ec.ECDSA(hashes.SHA256()))
    if not raw:
        return der.hex()
    r, s = decode_dss_signature(der)
    return (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()


def sign_hmac(body: bytes, secret: str, algorithm: str = "sha256", encoding: str = "hex", prefix: str = "") -> str:
    digest = hmac.new(secret.encode("utf-8"), body, getattr(hashlib, algorithm)).digest()
    text = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode("ascii")
    return prefix + text


def sign_unitary(body: bytes, secret: str) -> str:
    """The `X-Hub-Signature-256` value Unitary sends: base64 of HMAC-SHA256 over the raw body."""
    return sign_hmac(body, secret, "sha256", "base64")


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode("utf-8")


def indent(text: str, spaces: int) -> str:
    return textwrap.indent(text.strip("\n"), " " * spaces)
