"""Seed the demo site's emulator with runs in every status, tracked by the mirror (``make run`` does this).

Only when the default connection is the bundled emulator (``settings.USING_EMULATOR``). Everything is
created through ``runs_app.services``, so the poller follows each run as it would any other:

- an assistant "Weather demo" with a ``get_weather`` function tool;
- one thread per scenario, each with one run: ``completed``, ``requires_action`` (the message names
  ``get_weather``), ``in_progress`` (``[slow:600]``), ``failed`` (``[fail:server_error]``), ``incomplete``
  (``[incomplete]``) and ``cancelled`` (a ``[slow:600]`` run cancelled through ``services.run_cancel``).

Idempotent: a demo thread (metadata ``{"demo": "runs_app"}``) in the mirror that the emulator still knows
means the demo is there, and nothing is created. The emulator keeps its state in memory only, so after
it restarted the demo threads are gone from it and the demo is seeded again.

It starts beside the emulator (under honcho), so it first waits for the emulator to answer.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from runs_app import services
from runs_app.assistants import AssistantsError, NotFound
from runs_app.assistants import ConnectionError as ServiceConnectionError
from runs_app.conf import app_settings
from runs_app.models import Thread

DEMO_METADATA = {"demo": "runs_app"}

_sleep = time.sleep  # replaced in tests

GET_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City and state, e.g. Seattle, WA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

#: (scenario, the user's message). The emulator's scripted model reads the triggers in brackets.
SCENARIOS = [
    ("completed", "Hello! In two sentences, what does an operator console for assistant runs do?"),
    ("requires_action", "What is the weather in Seattle right now? Please call get_weather."),
    ("in_progress", "[slow:600] Write a long report on every run status of the Assistants protocol."),
    ("failed", "[fail:server_error] Summarize yesterday's incident report."),
    ("incomplete", "[incomplete] List every city in the Pacific Northwest."),
    ("cancelled", "[slow:600] Translate the whole operations handbook into French."),
]


class Command(BaseCommand):
    help = "Create demo assistant, threads and runs in every status on the bundled emulator (once)."

    def add_arguments(self, parser):
        parser.add_argument("--wait", type=float, default=30.0,
                            help="seconds to wait for the emulator to answer (default 30)")

    def handle(self, *args, wait: float, **options):
        if not getattr(settings, "USING_EMULATOR", False):
            self.stdout.write("Demo data skipped: the default connection is not the bundled emulator "
                              "(AZURE_OPENAI_ENDPOINT is set, or DJANGO_DEBUG is off).")
            return
        connection = app_settings.DEFAULT_CONNECTION
        client = services.get_client(connection)
        self._wait_for_emulator(client, wait)

        existing = Thread.objects.filter(connection=connection, metadata__demo=DEMO_METADATA["demo"]).first()
        if existing is not None:
            try:
                client.retrieve_thread(existing.remote_id)
            except NotFound:
                self.stdout.write("The emulator no longer has the demo threads (it keeps its state in memory "
                                  "only); seeding them again.")
            else:
                self.stdout.write(f"Demo data already present (thread {existing.remote_id}); nothing created.")
                return

        try:
            self._seed(client, connection)
        except (AssistantsError, ValidationError) as exc:
            raise CommandError(f"Seeding the demo data failed: {exc}") from None

    def _wait_for_emulator(self, client, wait: float) -> None:
        deadline = time.monotonic() + wait
        announced = False
        while True:
            try:
                client.list_assistants(limit=1)
                return
            except ServiceConnectionError as exc:
                if time.monotonic() >= deadline:
                    raise CommandError(f"The emulator at {client.endpoint} did not answer within {wait:g} s "
                                       f"({exc}). Is it running? `make run` starts it.") from None
            except AssistantsError as exc:
                raise CommandError(f"The emulator at {client.endpoint} answered with an error: {exc}") from None
            if not announced:
                self.stdout.write(f"Waiting for the emulator at {client.endpoint} (up to {wait:g} s)…")
                announced = True
            _sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def _seed(self, client, connection: str) -> None:
        assistant = next((a for a in client.iter_assistants()
                          if (a.get("metadata") or {}).get("demo") == DEMO_METADATA["demo"]), None)
        if assistant is None:
            assistant = client.create_assistant(
                model="gpt-4o", name="Weather demo", tools=[GET_WEATHER], metadata=DEMO_METADATA,
                instructions="You answer questions about the weather; use get_weather for current conditions.",
            )
        for scenario, text in SCENARIOS:
            metadata = {**DEMO_METADATA, "scenario": scenario}
            thread = services.thread_create(connection=connection, metadata=metadata,
                                            messages=[{"role": "user", "content": text}])
            run = services.run_create(thread=thread, assistant_id=assistant["id"], metadata=metadata)
            if scenario == "cancelled":
                run = services.run_cancel(run=run)
            self.stdout.write(f"  {scenario:<16} thread {thread.remote_id}  run {run.remote_id} ({run.status})")
        self.stdout.write(self.style.SUCCESS(
            f"Demo data seeded: assistant {assistant['id']} and {len(SCENARIOS)} threads; the poller follows "
            "their runs."))
