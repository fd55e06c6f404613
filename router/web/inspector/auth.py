"""Who may use the inspector: HTTP Basic over the configured credentials, and CSRF tokens.

Every comparison is constant-time. A password hash (scrypt or PBKDF2) costs tens of
milliseconds by design, far beyond a page's budget, so once a request has proved a password
this process remembers a keyed digest of what was sent (never the password) and later requests
with the same credentials compare that digest instead.

The CSRF token is derived from the credential and the UTC day (an HMAC keyed by the credential),
so every worker process agrees on it without sharing state, changing the password changes it,
and a token that leaks stops working within two days.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
import time

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


def _csrf_for_day(settings: InspectorSettings, day: int) -> str:
    if settings.password is not None:
        material = settings.password.reveal().encode("utf-8")
    elif settings.password_hash is not None:
        material = settings.password_hash.digest
    else:
        material = b""
    key = hashlib.sha256(b"router-inspector-csrf\0" + material).digest()
    mac = hmac.new(key, f"csrf\0{settings.username}\0{day}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def _today() -> int:
    return int(time.time() // 86400)


def csrf_token(settings: InspectorSettings) -> str:
    """Today's token (UTC days): one that leaks stops working by the day after tomorrow."""
    return _csrf_for_day(settings, _today())


def csrf_ok(settings: InspectorSettings, sent: str | None) -> bool:
    """Today's token, or yesterday's (a page loaded before midnight still submits after it)."""
    if not sent:
        return False
    given = sent.encode("utf-8", "surrogateescape")
    today = _today()
    results = [hmac.compare_digest(given, _csrf_for_day(settings, day).encode("ascii")) for day in (today, today - 1)]
    return any(results)
