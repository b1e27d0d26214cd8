"""The service's assistants, for choosing one: read through a short-lived cache, with a short timeout and no retry,
so a page never waits long on the service."""

from __future__ import annotations

from django.core.cache import cache

from runs_app.assistants import AssistantsClient, AssistantsError
from runs_app.models import Run

CACHE_SECONDS = 60
TIMEOUT_SECONDS = 3.0


def assistant_choices(connection: str) -> tuple[list[dict], str | None]:
    """The service's assistants (first page, cached ``CACHE_SECONDS``), else the ones the mirror has seen run on the
    connection, with the reason."""
    key = f"runs_app:assistants:{connection}"
    choices = cache.get(key)
    if choices is not None:
        return choices, None
    try:
        client = AssistantsClient(connection, max_retries=0, connect_timeout=TIMEOUT_SECONDS,
                                  read_timeout=TIMEOUT_SECONDS)
        page = client.list_assistants(limit=100)
    except AssistantsError as exc:
        seen = (Run.objects.filter(connection=connection).exclude(assistant_id="")
                .values_list("assistant_id", flat=True).distinct()[:100])
        return [{"id": a, "name": "", "model": ""} for a in seen], f"Could not list the service's assistants: {exc}"
    choices = [{"id": a["id"], "name": a.get("name") or "", "model": a.get("model") or ""}
               for a in page.get("data", [])]
    cache.set(key, choices, CACHE_SECONDS)
    return choices, None
