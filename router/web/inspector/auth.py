"""Who may use the inspector: HTTP Basic over the configured credentials, and CSRF tokens.

Every comparison is constant-time. A password hash (scrypt or PBKDF2) costs tens of
milliseconds by design, far beyond a page's budget, so once a request has proved a password
this process remembers a keyed digest of what was sent (never the password) and later requests
with the same credentials compare that digest instead.

The CSRF token is derived from the credential (an HMAC keyed by it), so every worker process
agrees on it without sharing state, and changing the password changes it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading

from router.config.inspector import InspectorSettings

_CACHE_SIZE = 32
# scrypt takes 32 MiB and ~50 ms a try: a flood of wrong passwords waits its turn rather than
# taking every thread and the memory with it
_HASHING = threading.BoundedSemaphore(2)


class Guard:
    def __init__(self) -> None:
        self._key = os.urandom(32)  # this process's: the remembered digests mean nothing elsewhere
        self._proved: dict[bytes, None] = {}
        self._lock = threading.Lock()

    def allows(self, settings: InspectorSettings, username: str | None, password: str | None) -> bool:
        if username is None or password is None:
            return False
        user_ok = hmac.compare_digest(username.encode("utf-8", "surrogateescape"), settings.username.encode("utf-8"))
        given = password.encode("utf-8", "surrogateescape")
        if settings.password is not None:
            # digests first, so the comparison takes as long whatever the length sent
            want = hashlib.sha256(settings.password.reveal().encode("utf-8")).digest()
            return hmac.compare_digest(hashlib.sha256(given).digest(), want) and user_ok
        hashed = settings.password_hash
        if hashed is None:
            return False
        stamp = hmac.new(self._key, hashed.digest + b"\0" + username.encode("utf-8", "surrogateescape") + b"\0" + given,
                         hashlib.sha256).digest()
        with self._lock:
            if stamp in self._proved:
                return True
        with _HASHING:  # hashed whatever the username, so the time taken does not tell a right one
            verified = hashed.verify(password)
        if not (verified and user_ok):
            return False
        with self._lock:
            self._proved[stamp] = None
            while len(self._proved) > _CACHE_SIZE:
                self._proved.pop(next(iter(self._proved)))
        return True


def csrf_token(settings: InspectorSettings) -> str:
    if settings.password is not None:
        material = settings.password.reveal().encode("utf-8")
    elif settings.password_hash is not None:
        material = settings.password_hash.digest
    else:
        material = b""
    key = hashlib.sha256(b"router-inspector-csrf\0" + material).digest()
    mac = hmac.new(key, b"csrf\0" + settings.username.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def csrf_ok(settings: InspectorSettings, sent: str | None) -> bool:
    if not sent:
        return False
    return hmac.compare_digest(sent.encode("utf-8", "surrogateescape"), csrf_token(settings).encode("ascii"))
