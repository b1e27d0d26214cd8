"""Helpers for the admin tests: operators with chosen permissions, runs in a given state on the emulator."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission

from runs_app import services
from runs_app.assistants import AssistantsClient
from runs_app.models import Run
from tests.client_helpers import connection_settings, wait_for
from tests.run_sequences import FUNCTION_TOOL

TERMINAL_OR_WAITING = ("completed", "failed", "cancelled", "expired", "incomplete", "requires_action")


@pytest.fixture
def remote(emulator):
    return AssistantsClient("remote", settings=connection_settings("azure_openai", emulator))


@pytest.fixture
def assistant(remote):
    return remote._request("POST", "/assistants", json={"model": "gpt-4o", "name": "ops", "tools": [FUNCTION_TOOL]})


def staff_user(django_user_model, name="viewer", perms=("view_run", "view_thread")):
    user = django_user_model.objects.create_user(name, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="runs_app", codename__in=perms))
    return user


def settle(run, statuses=TERMINAL_OR_WAITING):
    return wait_for(lambda: (r := services.run_poll(run=Run.objects.get(pk=run.pk))).status in statuses and r)


def start_run(assistant, text, **kwargs) -> Run:
    return services.thread_and_run_create(assistant_id=assistant["id"],
                                          thread={"messages": [{"role": "user", "content": text}]}, **kwargs)


def waiting_run(assistant) -> Run:
    run = settle(start_run(assistant, "get_weather in Oslo"))
    assert run.status == "requires_action"
    return run


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []
