"""Sending HTTP requests for actions: one pooled urllib3 manager per process, bounded reads,
errors described without the URL (a Slack webhook URL is itself a credential).

urllib3 (which requests is built on) is used directly: it costs half as much CPU per request as
requests, and delivery throughput is bound by exactly that.
"""

from __future__ import annotations

import email.utils
import os
import threading
import time
import unicodedata
from dataclasses import dataclass, field

import urllib3
from urllib3 import exceptions as ue

from router import __version__
from router.actions import client
from router.errors import DeliveryError

USER_AGENT = f"router/{__version__}"
MAX_ERROR_BODY = 512
MAX_DRAIN = 64 * 1024  # read the rest of an answer this small so its connection can be reused

# what a destination's answer means: retry (these and every 5xx), else permanent
RETRYABLE_STATUS = {408, 425, 429}


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


_lock = threading.Lock()
_pool: urllib3.PoolManager | None = None
_pool_pid = 0


def pool() -> urllib3.PoolManager:
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        with _lock:
            if _pool is None or _pool_pid != os.getpid():
                _pool = urllib3.PoolManager(num_pools=64, maxsize=32, block=False, retries=False)
                _pool_pid = os.getpid()
    return _pool


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""


def _describe(exc: BaseException) -> str:
    """A reason that names the failure but not the URL (which may carry a credential)."""
    if isinstance(exc, ue.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    # NewConnectionError is a subclass of ConnectTimeoutError in urllib3: ask about it first
    if isinstance(exc, ue.NewConnectionError) and "timed out" not in str(exc).lower():
        text = str(exc).lower()
        if "refused" in text:
            return "connection refused"
        if "name or service" in text or "resolve" in text or "nodename" in text:
            return "host name did not resolve"
        return "connection failed"
    if isinstance(exc, ue.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(exc, (ue.ReadTimeoutError, TimeoutError)):
        return "timed out waiting for the response"
    if isinstance(exc, ue.SSLError):
        return "TLS error"
    if isinstance(exc, ue.NameResolutionError):
        return "host name did not resolve"
    if isinstance(exc, (ue.ProtocolError, ConnectionError)):
        text = str(exc).lower()
        if "reset" in text or "aborted" in text or "disconnected" in text or "closed" in text:
            return "connection reset"
        return "connection broken"
    if isinstance(exc, ue.MaxRetryError):
        return "too many redirects"
    return type(exc).__name__


def send(method: str, url: str, *, headers: dict[str, str], data: bytes, timeout: float,
         follow_redirects: bool = False) -> Answer:
    """Send; raise DeliveryError (retryable) on transport failures. At most MAX_ERROR_BODY bytes
    of the answer are kept.

    A request that follows redirects goes through urllib3 (its redirect rules: 303 becomes GET,
    credentials are dropped across hosts, at most 5 hops); every other one through `client.py`,
    our own pooled HTTP/1.1 client, which costs a tenth of urllib3's CPU per request."""
    if not follow_redirects:
        try:
            status, answer_headers, content = client.request(method, url, headers, data, timeout, MAX_ERROR_BODY,
                                                             MAX_DRAIN)
        except client.InvalidURL as exc:
            raise DeliveryError(f"invalid request: {exc}", retryable=False) from None
        except client.TransportError as exc:
            raise DeliveryError(str(exc), retryable=True) from None
        return Answer(status, answer_headers, content)
    retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5,
                            raise_on_redirect=True, raise_on_status=False)
    try:
        response = pool().request(
            method, url, body=data, headers=headers, retries=retries, redirect=True,
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout, total=timeout),
            preload_content=False,
        )
    except (ue.LocationValueError, ue.URLSchemeUnknown, ValueError) as exc:
        raise DeliveryError(f"invalid request: {type(exc).__name__}", retryable=False) from None
    except (ue.HTTPError, OSError) as exc:
        raise DeliveryError(_describe(exc), retryable=True) from None
    try:
        content = response.read(MAX_ERROR_BODY) or b""
        remaining = response.headers.get("Content-Length")
        if remaining is not None and remaining.isdigit() and int(remaining) - len(content) <= MAX_DRAIN:
            response.drain_conn()
            response.release_conn()
        else:
            response.close()  # too much, or unknown: drop the connection rather than read it all
    except (ue.HTTPError, OSError):
        content = b""
        response.close()
    return Answer(response.status, {k.lower(): v for k, v in response.headers.items()}, content)


def snippet(answer: Answer) -> str:
    return answer.content[:200].decode("utf-8", "replace").strip().replace("\n", " ").replace("\r", " ")


def raise_for_status(answer: Answer, cap: float) -> None:
    status = answer.status
    if 200 <= status < 300:
        return
    detail = snippet(answer)
    reason = f"HTTP {status}" + (f": {detail}" if detail else "")
    if 300 <= status < 400:
        raise DeliveryError(f"{reason} (redirect not followed)", retryable=False, status=status, response=detail)
    retry_after = parse_retry_after(answer.headers.get("retry-after"))
    if retry_after is not None:
        retry_after = min(retry_after, cap)
    raise DeliveryError(reason, retryable=is_retryable_status(status), status=status, retry_after=retry_after,
                        response=detail)


def forbidden_header_char(values: dict[str, str]) -> tuple[str, str] | None:
    """(header name, what is wrong) for the first header whose name or value holds a control
    character, else None. Horizontal tab is field content (RFC 9110 5.5); every other control
    character (C0, DEL, C1) is refused: a receiver may read a vertical tab or form feed as a line
    break, or a NUL as the end of the value."""
    for key, value in values.items():
        for c in f"{key}{value}":
            if c != "\t" and unicodedata.category(c) == "Cc":
                what = "a line break" if c in "\r\n" else "NUL" if c == "\0" else "a control character"
                return str(key), f"{what} (U+{ord(c):04X})"
    return None
