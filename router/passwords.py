"""Password hashes for the inspector's login, with hashlib only.

Two schemes, each one line of text so it fits an environment variable:

    scrypt$<log2 n>$<r>$<p>$<salt, base64>$<hash, base64>
    pbkdf2_sha256$<iterations>$<salt, base64>$<hash, base64>

`python -m router.passwords` reads a password (twice, without echo; or one line from a pipe) and
prints a scrypt hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

SCHEMES = ("scrypt", "pbkdf2_sha256")
SCRYPT_DEFAULT = (15, 8, 1)  # n = 2**15: about 50 ms and 32 MiB, OWASP's floor
PBKDF2_MIN_ITERATIONS = 100_000
_MAX_WORK = {"scrypt_log2n": 20, "pbkdf2": 10_000_000}  # a hash that would take minutes is a typo or an attack


@dataclass(frozen=True)
class PasswordHash:
    scheme: str
    params: tuple[int, ...]
    salt: bytes
    digest: bytes

    def compute(self, password: str) -> bytes:
        raw = password.encode("utf-8")
        if self.scheme == "scrypt":
            log2n, r, p = self.params
            n = 1 << log2n
            return hashlib.scrypt(raw, salt=self.salt, n=n, r=r, p=p, dklen=len(self.digest),
                                  maxmem=256 * n * r * p + (1 << 20))
        return hashlib.pbkdf2_hmac("sha256", raw, self.salt, self.params[0], dklen=len(self.digest))

    def verify(self, password: str) -> bool:
        return hmac.compare_digest(self.compute(password), self.digest)


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def parse(text: str) -> PasswordHash:
    """The hash in `text`; ValueError saying what is wrong (never quoting the text)."""
    parts = text.strip().split("$")
    scheme = parts[0]
    if scheme not in SCHEMES:
        raise ValueError(f"unknown password hash scheme (expected {' or '.join(SCHEMES)}, as "
                         "`python -m router.passwords` prints)")
    try:
        if scheme == "scrypt":
            if len(parts) != 6:
                raise ValueError
            log2n, r, p = (int(x) for x in parts[1:4])
            if not (1 <= log2n <= _MAX_WORK["scrypt_log2n"] and 1 <= r <= 32 and 1 <= p <= 16):
                raise ValueError
            params: tuple[int, ...] = (log2n, r, p)
        else:
            if len(parts) != 4:
                raise ValueError
            iterations = int(parts[1])
            if not (PBKDF2_MIN_ITERATIONS <= iterations <= _MAX_WORK["pbkdf2"]):
                raise ValueError(f"pbkdf2_sha256 needs {PBKDF2_MIN_ITERATIONS:,} to {_MAX_WORK['pbkdf2']:,} "
                                 "iterations")
            params = (iterations,)
        salt, digest = _b64(parts[-2]), _b64(parts[-1])
    except ValueError as exc:
        raise ValueError(str(exc) or f"malformed {scheme} hash (see `python -m router.passwords`)") from None
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError(f"{scheme} hash: salt or digest too short")
    return PasswordHash(scheme, params, salt, digest)


def hash_password(password: str, scheme: str = "scrypt") -> str:
    salt = os.urandom(16)
    if scheme == "scrypt":
        h = PasswordHash("scrypt", SCRYPT_DEFAULT, salt, b"\0" * 32)
        params = "$".join(str(x) for x in SCRYPT_DEFAULT)
    else:
        h = PasswordHash("pbkdf2_sha256", (600_000,), salt, b"\0" * 32)
        params = "600000"
    digest = h.compute(password)
    enc = base64.b64encode
    return f"{scheme}${params}${enc(salt).decode()}${enc(digest).decode()}"


def main() -> None:
    import getpass
    import sys

    scheme = sys.argv[1] if len(sys.argv) > 1 else "scrypt"
    if scheme not in SCHEMES:
        sys.exit(f"usage: python -m router.passwords [{'|'.join(SCHEMES)}]")
    if sys.stdin.isatty():
        password = getpass.getpass("inspector password: ")
        if password != getpass.getpass("again: "):
            sys.exit("the passwords differ")
    else:  # piped in, for scripts: one line
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        sys.exit("the password is empty")
    print(hash_password(password, scheme))


if __name__ == "__main__":
    main()
