"""The router's exceptions, one small tree.

    RouterError
    ├── ConfigError        the rules file is invalid (carries every Problem found)
    ├── RequestError       an incoming request is refused; carries its HTTP status and error code
    │   ├── AuthError      401 / 403: not from who it claims to be
    │   └── PayloadError   400 / 413 / 422: not something we can accept
    ├── StoreError         the store failed (a driver's error, translated at the store's boundary)
    │   └── StoreUnavailable   an event could not be committed; the request gets 503 and nothing was written
    └── DeliveryError      one delivery attempt failed; `retryable` says whether to try again

HTTP and CLI turn these into answers at the edge, nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass


class RouterError(Exception):
    pass


@dataclass(frozen=True)
class Problem:
    """One fault in a rules file, at the line and column where it stands."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.path}: {self.message}"


class ConfigError(RouterError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class RequestError(RouterError):
    """`check` names the step that refused (allow-list, token, signature, size, parse, schema) and
    `facts` say what it saw (a header's name, never its value), for the log line."""

    status = 400
    code = "bad_request"
    check = "request"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 check: str | None = None, **facts: str):
        super().__init__(message)
        self.message = message
        self.facts = facts
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if check is not None:
            self.check = check


class AuthError(RequestError):
    status = 401
    code = "unauthorized"
    check = "signature"


class PayloadError(RequestError):
    status = 400
    code = "invalid_body"
    check = "parse"


class SchemaError(PayloadError):
    """The payload broke its JSON Schema; `detail` is the 422 body Panjaya documents."""

    status = 422
    code = "invalid_payload"
    check = "schema"

    def __init__(self, detail: list[dict]):
        super().__init__(f"{len(detail)} schema violation(s)")
        self.detail = detail


class StoreError(RouterError):
    pass


class StoreUnavailable(StoreError):
    pass


class DeliveryError(RouterError):
    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
        response: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.response = response  # the first bytes of the destination's answer, when there was one
