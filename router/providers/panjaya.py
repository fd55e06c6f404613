"""Panjaya (video dubbing): ES256 over the raw body, hex in X-Signature.

The signature is DER, as Python's `cryptography` produces and Panjaya's sample verifies; the raw
64-byte r||s form of JWS is accepted too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from router.config.fields import Ctx, Field, as_path, as_str
from router.config.source import PathT
from router.errors import AuthError
from router.providers.base import Provider

PANJAYA_PUBLIC_KEY = b"""-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZbUzbbuVyzSv7zVmH6rKypr6ojSS
/86W9dU6mwbdfAtUAx+QI7GNxl/4H1QV2BuBrysabh56O/YXhnFJMh7Lng==
-----END PUBLIC KEY-----
"""

_ECDSA = ec.ECDSA(hashes.SHA256())


def load_p256_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not a P-256 (ES256) public key")
    return key


def _as_public_key(ctx: Ctx, value: Any, path: PathT) -> Any:
    text = as_str(ctx, value, path)
    if text is None:
        return None
    try:
        return load_p256_public_key(text.strip().encode() + b"\n")
    except (ValueError, TypeError) as exc:
        ctx.error(path, f"public_key is not a PEM P-256 public key: {exc}")
        return None


def _as_public_key_file(ctx: Ctx, value: Any, path: PathT) -> Any:
    file = as_path(ctx, value, path)
    if file is None:
        return None
    try:
        return load_p256_public_key(file.read_bytes())
    except OSError as exc:
        ctx.error(path, f"cannot read public_key_file {file}: {exc.strerror or exc}")
    except (ValueError, TypeError) as exc:
        ctx.error(path, f"public_key_file {file} is not a PEM P-256 public key: {exc}")
    return None


class PanjayaProvider(Provider):
    type_name = "panjaya"
    bundled_schema = "panjaya.json"
    options = {"public_key": Field(_as_public_key), "public_key_file": Field(_as_public_key_file)}

    def __init__(self, name: str, options: dict[str, Any]):
        super().__init__(name, options)
        self.public_key = options.get("public_key") or options.get("public_key_file") or load_p256_public_key(PANJAYA_PUBLIC_KEY)

    @classmethod
    def check(cls, options: dict[str, Any]) -> list[tuple[str | None, str]]:
        if options.get("public_key") is not None and options.get("public_key_file") is not None:
            return [("public_key_file", "give public_key or public_key_file, not both")]
        return []

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        algorithm = headers.get("x-signature-algorithm")
        if algorithm is not None and algorithm.strip().upper() not in ("ES256", "ECDSA-SHA256"):
            raise AuthError("unsupported X-Signature-Algorithm; expected ES256")
        value = headers.get("x-signature")
        if not value:
            raise AuthError("missing X-Signature header")
        try:
            signature = bytes.fromhex(value.strip())
        except ValueError:
            raise AuthError("X-Signature is not hexadecimal") from None
        candidates = [signature]
        if len(signature) == 64:  # JWS form: r||s, 32 bytes each
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            candidates.insert(0, encode_dss_signature(r, s))
        for candidate in candidates:
            try:
                self.public_key.verify(candidate, body, _ECDSA)
                return
            except (InvalidSignature, ValueError):
                continue
        raise AuthError("X-Signature does not verify")

    def sign(self, body: bytes, private_key: bytes | None = None, *, timestamp: int | None = None) -> dict[str, str]:
        if private_key is None:
            raise ValueError("signing as Panjaya needs --private-key (a PEM P-256 private key)")
        key = serialization.load_pem_private_key(private_key, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("--private-key is not an EC private key")
        return {"X-Signature": key.sign(body, _ECDSA).hex(), "X-Signature-Algorithm": "ES256"}
