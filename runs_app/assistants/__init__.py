"""The Assistants client: the only package in runs_app that speaks HTTP (requests, sseclient-py)."""

from runs_app.assistants.client import REQUEST_TAG, AssistantsClient
from runs_app.assistants.errors import (
    APIStatusError,
    AssistantsError,
    AuthenticationError,
    BadRequest,
    ConfigurationError,
    Conflict,
    ConnectionError,  # noqa: A004 (the ladder's own name)
    MalformedResponse,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    StreamError,
    StreamInterrupted,
    Timeout,
)
from runs_app.assistants.streaming import Event, EventStream

__all__ = [
    "REQUEST_TAG", "APIStatusError", "AssistantsClient", "AssistantsError", "AuthenticationError", "BadRequest",
    "ConfigurationError", "Conflict", "ConnectionError", "Event", "EventStream", "MalformedResponse", "NotFound",
    "PermissionDenied", "RateLimited", "ServerError", "StreamError", "StreamInterrupted", "Timeout",
]
