"""Builders for the tests, one way each: a client straight to the emulator, assistants, users, runs in a state.

Plain functions; ``tests/conftest.py`` exposes the common ones as fixtures (``remote``, ``assistant``,
``operator``, ``api``). A test that needs a variant calls the function here with its own arguments.

Passwords carry the log canary ``cnry7`` like every other secret the tests configure (see tests/conftest.py).
"""

from __future__ import annotations

from rest_framework.test import APIClient

from runs_app import services
from runs_app.assistants import AssistantsClient
from runs_app.models import Run
from tests.client_helpers import connection_settings, wait_for

TERMINAL = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
SETTLED = TERMINAL | {"requires_action"}

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

VIEW_PERMISSIONS = ("view_thread", "view_run", "view_message", "view_runstep", "view_runevent", "view_connectionstate")
# Every runs_app permission an operator of the admin, the API and the live pages can hold.
OPERATOR_PERMISSIONS = (*VIEW_PERMISSIONS, "add_thread", "add_run", "add_message", "cancel_run",
                        "submit_tool_outputs", "change_run_metadata", "refresh_run")


# --- the service's side -----------------------------------------------------------------------------------------

def remote_client(emulator, kind: str = "azure_openai") -> AssistantsClient:
    """A client straight to the emulator, outside runs_app's services: the service's own view of things, or
    another application using the same service. It logs as ``remote``."""
    return AssistantsClient("remote", settings=connection_settings(kind, emulator))


def weather_assistant(remote: AssistantsClient, *, name: str = "ops") -> dict:
    """An assistant with the get_weather function tool: a message naming get_weather makes its run wait for
    tool outputs (requires_action); any other message completes."""
    return remote.create_assistant(model="gpt-4o", name=name, tools=[WEATHER_TOOL])


def plain_assistant(remote: AssistantsClient, *, name: str = "plain") -> dict:
    """An assistant without tools: every run answers with text."""
    return remote.create_assistant(model="gpt-4o", name=name)


# --- users ------------------------------------------------------------------------------------------------------

def password_for(name: str) -> str:
    return f"pw-{name}-cnry7-word"


def staff_user(django_user_model, name: str = "operator", *, permissions=OPERATOR_PERMISSIONS):
    """A staff user ``name`` (password ``password_for(name)``) holding exactly these runs_app permission
    codenames."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(name, password=password_for(name), is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="runs_app",
                                                        codename__in=permissions))
    return user


def non_staff_user(django_user_model, name: str = "clerk"):
    """A signed-up user who is not staff: every page and endpoint of runs_app refuses them."""
    return django_user_model.objects.create_user(name, password=password_for(name), is_staff=False)


def superuser(django_user_model, name: str = "boss"):
    return django_user_model.objects.create_superuser(name, f"{name}@example.com", password_for(name))


def api_client(user) -> APIClient:
    """A DRF test client authenticated as ``user``."""
    client = APIClient()
    client.force_authenticate(user)
    return client


# --- runs through runs_app's services ---------------------------------------------------------------------------

def start_run(assistant: dict, text: str, **kwargs) -> Run:
    """A new thread with the user's message ``text`` and a run on it, through the services (mirrored)."""
    return services.thread_and_run_create(assistant_id=assistant["id"],
                                          thread={"messages": [{"role": "user", "content": text}]}, **kwargs)


def settled(run: Run, statuses=SETTLED) -> Run:
    """Poll the run through the services until the mirror shows it in one of ``statuses``."""
    return wait_for(lambda: (r := services.run_poll(run=Run.objects.get(pk=run.pk))).status in statuses and r)


def waiting_run(assistant: dict, *, user=None) -> Run:
    """A mirrored run of ``weather_assistant`` waiting for the output of one get_weather call."""
    run = settled(start_run(assistant, "get_weather in Oslo", user=user))
    assert run.status == "requires_action"
    return run


def finished_by_the_poller(run: Run, timeout: float = 30) -> Run:
    """Wait, without polling ourselves, until the poller (a q cluster) has the run terminal in the mirror with
    its steps synced for that status."""
    return wait_for(lambda: (r := Run.objects.get(pk=run.pk)).status in TERMINAL and r.steps_synced_for.startswith(
        r.status) and r, timeout=timeout)
