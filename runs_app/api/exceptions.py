"""One error shape for every 4xx and every failure of the service: ``{"error": {message, code, param, request_id}}``.

- DRF's own errors (authentication, permissions, 404, parse errors, body validation) keep their status.
- Django ``ValidationError`` from the services: 400, ``param`` naming the field.
- ``RunStateConflict``: 409 (a run not in the state the action needs).
- The service's errors (``AssistantsError``): its message, code, param and request id; its 4xx status is
  passed through, except 401/403 (the service refused *our* credentials: a server-side problem) and 5xx,
  timeouts and broken connections, which are 502.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from runs_app.assistants import APIStatusError, AssistantsError, RateLimited, StreamError


class RunStateConflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "run_state_conflict"
    default_detail = "The run is not in a state that allows this action."

    def __init__(self, detail=None, *, param: str | None = None):
        super().__init__(detail)
        self.param = param


class UnknownConnection(exceptions.ValidationError):
    """A ``connection`` query parameter naming no configured connection."""


def error_body(message: str, *, code: str | None = None, param: str | None = None,
               request_id: str | None = None) -> dict:
    return {"error": {"message": message, "code": code, "param": param, "request_id": request_id}}


def api_exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(_django_errors(exc), code="invalid")
    if isinstance(exc, AssistantsError):
        return _service_error_response(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        param, message, code = _first_error(exc.detail, exc.get_codes())
        response.data = error_body(message, code=code or "invalid", param=param)
    else:
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else None
        message = str(exc.detail) if isinstance(exc, exceptions.APIException) else str(exc)
        response.data = error_body(message, code=codes if isinstance(codes, str) else None,
                                   param=getattr(exc, "param", None))
    return response


def _service_error_response(exc: AssistantsError) -> Response:
    code = getattr(exc, "code", None)
    param = getattr(exc, "param", None)
    headers = {}
    if isinstance(exc, APIStatusError) and 400 <= exc.status < 500 and exc.status not in (401, 403):
        http_status = exc.status
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    else:
        http_status = status.HTTP_502_BAD_GATEWAY
        if code is None and not isinstance(exc, StreamError):
            code = "service_unavailable" if not isinstance(exc, APIStatusError) else f"service_{exc.status}"
    return Response(error_body(str(exc), code=code, param=param, request_id=exc.request_id), status=http_status,
                    headers=headers)


def _django_errors(exc: DjangoValidationError):
    if hasattr(exc, "error_dict"):
        return exc.message_dict
    return {"non_field_errors": exc.messages}


def _first_error(detail, codes, path: str = "") -> tuple[str | None, str, str | None]:
    """(param, message, code) of the first error: nested fields as ``a.b`` and list items as ``a[0]``."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
                name = f"{path}[{key}]"  # an item of a list field
            else:
                name = f"{path}.{key}" if path else str(key)
            if key in ("non_field_errors", "__all__"):
                name = path or None
            return _first_error(value, codes.get(key) if isinstance(codes, dict) else None, name)
    if isinstance(detail, list):
        messages = [d for d in detail if not isinstance(d, dict | list)]
        if messages:
            code = codes[0] if isinstance(codes, list) and codes and isinstance(codes[0], str) else None
            return path or None, " ".join(str(m) for m in messages), code
        for index, item in enumerate(detail):
            if item:
                sub = codes[index] if isinstance(codes, list) and len(codes) > index else None
                return _first_error(item, sub, f"{path}[{index}]")
    if isinstance(detail, str):
        return path or None, str(detail), codes if isinstance(codes, str) else None
    return path or None, "Invalid request.", None
