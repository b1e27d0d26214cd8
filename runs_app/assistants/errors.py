"""The client's one error ladder, after openai-python's.

    AssistantsError
    ├── ConfigurationError        the connection cannot be used as configured
    ├── MalformedResponse         the service answered with a body that is not the protocol's JSON
    ├── StreamError               an ``error`` event inside a stream
    ├── APIStatusError            an HTTP error status
    │   ├── BadRequest (400, 422)   ├── AuthenticationError (401)   ├── PermissionDenied (403)
    │   ├── NotFound (404)          ├── Conflict (409)              ├── RateLimited (429)
    │   └── ServerError (5xx)
    └── ConnectionError           no (complete) answer
        ├── Timeout               connect, read or stream-idle timeout
        └── StreamInterrupted     a stream ended before its ``done`` event

Every error carries what an operator needs: the connection, the request, the service's own message
and code, and the request id to quote to the provider. Secrets are never part of it.
"""

from __future__ import annotations

import builtins


class AssistantsError(Exception):
    """Base of every error the client raises."""

    def __init__(self, message: str, *, connection: str | None = None, method: str | None = None,
                 path: str | None = None, request_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.connection = connection
        self.method = method
        self.path = path
        self.request_id = request_id

    def _where(self) -> str:
        parts = []
        if self.method and self.path:
            parts.append(f"{self.method} {self.path}")
        if self.connection:
            parts.append(f"connection {self.connection!r}")
        return f" ({', '.join(parts)})" if parts else ""

    def __str__(self) -> str:
        suffix = f" Request id: {self.request_id}." if self.request_id else ""
        return f"{self.message}{self._where()}.{suffix}"


class ConfigurationError(AssistantsError):
    """The connection's settings cannot work (e.g. Entra ID without azure-identity)."""

    def __str__(self) -> str:
        return self.message


class MalformedResponse(AssistantsError):
    """The service's answer could not be read as the protocol's JSON."""

    def __init__(self, message: str, *, status: int | None = None, body_excerpt: str = "", **kwargs):
        super().__init__(message, **kwargs)
        self.status = status
        self.body_excerpt = body_excerpt


class StreamError(AssistantsError):
    """The service sent an ``error`` event in a stream."""

    def __init__(self, message: str, *, code: str | None = None, data: dict | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.code = code
        self.data = data or {}


class APIStatusError(AssistantsError):
    """The service answered with an HTTP error status."""

    def __init__(self, message: str, *, status: int, code: str | None = None, param: str | None = None,
                 type: str | None = None, body: dict | str | None = None, **kwargs):  # noqa: A002 (protocol name)
        super().__init__(message, **kwargs)
        self.status = status
        self.code = code
        self.param = param
        self.type = type
        self.body = body

    def __str__(self) -> str:
        details = []
        if self.code:
            details.append(f"code {self.code}")
        if self.param:
            details.append(f"param {self.param}")
        detail = f" [{', '.join(details)}]" if details else ""
        suffix = f" Request id: {self.request_id}." if self.request_id else ""
        hint = f" {self.hint}" if self.hint else ""
        return f"The service answered {self.status}: {self.message}{detail}{self._where()}.{hint}{suffix}"

    hint = ""


class BadRequest(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    @property
    def hint(self) -> str:
        if self.connection:
            return (f"Check the credentials of RUNS_APP['CONNECTIONS'][{self.connection!r}] "
                    "(API_KEY, or the Entra ID identity).")
        return "Check the connection's credentials."


class PermissionDenied(APIStatusError):
    hint = "The identity is authenticated but lacks a role on this resource."


class NotFound(APIStatusError):
    pass


class Conflict(APIStatusError):
    pass


class RateLimited(APIStatusError):
    """429. ``retry_after`` is the delay the service asked for, in seconds, when it said one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after

    @property
    def hint(self) -> str:
        if self.retry_after is not None:
            return f"The service asked to retry after {self.retry_after:g} s."
        return ""


class ServerError(APIStatusError):
    pass


class ConnectionError(AssistantsError, builtins.ConnectionError):  # noqa: A001 (the ladder's own name)
    """No complete answer: refused, reset, or cut off."""

    def __init__(self, message: str, *, maybe_applied: bool = False, **kwargs):
        super().__init__(message, **kwargs)
        #: True when the request may have reached the service and taken effect.
        self.maybe_applied = maybe_applied


class Timeout(ConnectionError):
    pass


class StreamInterrupted(ConnectionError):
    """The stream ended before ``done``. Streams cannot be resumed: poll the run instead."""


STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: BadRequest,
    429: RateLimited,
}


def error_class_for(status: int) -> type[APIStatusError]:
    if status >= 500:
        return ServerError
    return STATUS_ERRORS.get(status, APIStatusError)


def parse_error_body(body) -> tuple[str | None, str | None, str | None, str | None]:
    """(message, code, param, type) from OpenAI's or Azure's error envelope.

    OpenAI: {"error": {"message", "type", "param", "code"}}. Azure throttling/routing errors carry only
    {"error": {"code": "429", "message"}} with a numeric-string code; content-filter errors add
    "innererror"/"inner_error" and "status".
    """
    if not isinstance(body, dict):
        return None, None, None, None
    error = body.get("error", body)
    if not isinstance(error, dict):
        return (str(error) if error else None), None, None, None
    message = error.get("message")
    code = error.get("code")
    inner = error.get("innererror") or error.get("inner_error")
    if isinstance(inner, dict) and inner.get("code") and code:
        code = f"{code} ({inner['code']})"
    return (
        str(message) if message is not None else None,
        str(code) if code is not None else None,
        str(error["param"]) if error.get("param") is not None else None,
        str(error["type"]) if error.get("type") is not None else None,
    )
