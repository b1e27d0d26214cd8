"""The client for a connection: the services' one way to the service."""

from __future__ import annotations

from runs_app.assistants import AssistantsClient


def get_client(connection: str | None = None) -> AssistantsClient:
    return AssistantsClient(connection)
