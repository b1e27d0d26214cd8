"""One error body for every door — the API, the live pages' endpoints, ``/metrics`` —, and one mapping from what the
layers below raise to the HTTP answer::

    {"error": {"message": "...", "code": "...", "param": "field or null", "request_id": "the service's or null"}}

- bad input (``django.core.exceptions.ValidationError`` from the services, or a DRF serializer's errors): 400,
  ``param`` naming the first wrong field (``content[1].text``, ``metadata``);
- ``RunStateConflict`` (the run or thread is not in the state the action needs): 409;
- a remote id the mirror does not hold: 404; held on several connections: 400 naming ``connection``;
- the service's own refusals (``APIStatusError`` 4xx): its status, message, code, param and request id, a 429 with
  ``Retry-After`` rounded up; its 401/403 (it refused *our* credentials), 5xx, timeouts and broken connections: 502.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from django.core.exceptions import ObjectDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError

from runs_app.assistants import APIStatusError, AssistantsError, RateLimited, StreamError
from runs_app.models import AmbiguousRemoteId
from runs_app.services import RunStateConflict


def error_body(message: str, *, code: str | None = None, param: str | None = None,
               request_id: str | None = None) -> dict:
    return {"error": {"message": message, "code": code, "param": param, "request_id": request_id}}


@dataclass
class ErrorAnswer:
    status: int
    body: dict
    headers: dict = field(default_factory=dict)


def answer_for(exc: BaseException) -> ErrorAnswer | None:
    """The HTTP answer to an error raised below the doors; None for anything else (a bug: let it be a 500)."""
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
        param, message, code = first_error(detail)
        return ErrorAnswer(400, error_body(message, code=code or "invalid", param=param))
    if isinstance(exc, RunStateConflict):
        return ErrorAnswer(409, error_body(exc.message, code=exc.code, param=exc.param))
    if isinstance(exc, AmbiguousRemoteId):
        return ErrorAnswer(400, error_body(str(exc), code="ambiguous_id", param="connection"))
    if isinstance(exc, ObjectDoesNotExist):
        return ErrorAnswer(404, error_body(str(exc), code="not_found"))
    if isinstance(exc, AssistantsError):
        return _service_error(exc)
    return None


def _service_error(exc: AssistantsError) -> ErrorAnswer:
    code, param = getattr(exc, "code", None), getattr(exc, "param", None)
    if isinstance(exc, APIStatusError) and 400 <= exc.status < 500 and exc.status not in (401, 403):
        headers = {}
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))  # never earlier than the service said
        return ErrorAnswer(exc.status, error_body(exc.message, code=code or "service_error", param=param,
                                                  request_id=exc.request_id), headers)
    if code is None and not isinstance(exc, StreamError):
        code = f"service_{exc.status}" if isinstance(exc, APIStatusError) else "service_unavailable"
    return ErrorAnswer(502, error_body(f"The service failed: {exc}", code=code, param=param,
                                       request_id=exc.request_id))


def first_error(detail, codes=None, path: str = "") -> tuple[str | None, str, str | None]:
    """(param, message, code) of the first error in a nested error structure (a DRF serializer's ``detail`` or a
    ``ValidationError``'s ``message_dict``): nested fields as ``a.b``, list items as ``a[0]``; keys that already
    are paths (the services name ``content[1].text``) stay as they are."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
                name = f"{path}[{key}]"  # an item of a list field
            else:
                name = f"{path}.{key}" if path else str(key)
            if key in ("non_field_errors", "__all__"):
                name = path or None
            return first_error(value, codes.get(key) if isinstance(codes, dict) else None, name)
    if isinstance(detail, list):
        messages = [d for d in detail if not isinstance(d, dict | list)]
        if messages:
            code = codes[0] if isinstance(codes, list) and codes and isinstance(codes[0], str) else None
            return path or None, " ".join(str(m) for m in messages), code
        for index, item in enumerate(detail):
            if item:
                sub = codes[index] if isinstance(codes, list) and len(codes) > index else None
                return first_error(item, sub, f"{path}[{index}]")
    if isinstance(detail, str):
        return path or None, str(detail), codes if isinstance(codes, str) else None
    return path or None, "Invalid request.", None
