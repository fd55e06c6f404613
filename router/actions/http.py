"""Sending HTTP requests for actions: pooled sessions, bounded reads, errors without URLs."""

from __future__ import annotations

import threading
from typing import Any

import requests

from router import __version__
from router.actions.base import is_retryable_status, parse_retry_after
from router.errors import DeliveryError

USER_AGENT = f"router/{__version__}"
MAX_ERROR_BODY = 512

_local = threading.local()


def session() -> requests.Session:
    s = getattr(_local, "session", None)
    if s is None:
        s = _local.session = requests.Session()
        s.trust_env = False  # no proxies or .netrc from the environment: send exactly where configured
        adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=16, max_retries=0)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
    return s


def _describe(exc: Exception) -> str:
    """A reason that names the failure but not the URL (which may carry a credential)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "timed out waiting for the response"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error"
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc).lower()
        if "refused" in text:
            return "connection refused"
        if "reset" in text or "aborted" in text or "remotedisconnected" in text:
            return "connection reset"
        if "name or service" in text or "resolve" in text or "nodename" in text:
            return "host name did not resolve"
        return "connection failed"
    if isinstance(exc, requests.exceptions.TooManyRedirects):
        return "too many redirects"
    return type(exc).__name__


def send(
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    data: bytes,
    timeout: float,
    follow_redirects: bool = False,
) -> requests.Response:
    """Send; raise DeliveryError (retryable) on transport failures. The body is read up to a bound."""
    try:
        response = session().request(
            method,
            url,
            headers=headers,
            data=data,
            timeout=(min(timeout, 10.0), timeout),
            allow_redirects=follow_redirects,
            stream=True,
        )
    except requests.exceptions.InvalidHeader as exc:
        raise DeliveryError(f"invalid header: {exc}", retryable=False) from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
        raise DeliveryError("invalid URL", retryable=False) from None
    except requests.exceptions.RequestException as exc:
        raise DeliveryError(_describe(exc), retryable=True) from None
    try:
        response._content = response.raw.read(MAX_ERROR_BODY, decode_content=True) or b""
    except Exception:
        response._content = b""
    finally:
        response.close()
    return response


def snippet(response: requests.Response) -> str:
    text = response.content[:200].decode("utf-8", "replace").strip().replace("\n", " ")
    return text


def raise_for_status(response: requests.Response, cap: float) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    detail = snippet(response)
    reason = f"HTTP {status}" + (f": {detail}" if detail else "")
    if 300 <= status < 400:
        raise DeliveryError(f"{reason} (redirect not followed)", retryable=False, status=status)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if retry_after is not None:
        retry_after = min(retry_after, cap)
    raise DeliveryError(reason, retryable=is_retryable_status(status), status=status, retry_after=retry_after)


def has_line_break(values: dict[str, Any]) -> str | None:
    for key, value in values.items():
        if any(c in str(key) for c in "\r\n\0") or any(c in str(value) for c in "\r\n\0"):
            return str(key)
    return None
