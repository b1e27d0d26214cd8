"""The API's exception handler: DRF's own errors (authentication, permissions, parse errors, body validation) keep
their status; everything the layers below raise is answered by ``runs_app.errors``, the one mapping every door
shares, in its one body ``{"error": {message, code, param, request_id}}``."""

from __future__ import annotations

from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from runs_app import errors


def api_exception_handler(exc, context):
    answer = errors.answer_for(exc)
    if answer is not None:
        return Response(answer.body, status=answer.status, headers=answer.headers)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        param, message, code = errors.first_error(exc.detail, exc.get_codes())
        response.data = errors.error_body(message, code=code or "invalid", param=param)
    else:
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else None
        message = str(exc.detail) if isinstance(exc, exceptions.APIException) else str(exc)
        response.data = errors.error_body(message, code=codes if isinstance(codes, str) else None,
                                          param=getattr(exc, "param", None))
    return response
