"""``manage.py runs_import_thread THREAD_ID [--connection NAME]``: fetch a thread with its runs, their steps
and its messages into the mirror (``services.thread_import``), then keep following it."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from runs_app import services
from runs_app.assistants import AssistantsError
from runs_app.management.commands._connections import connection_option


class Command(BaseCommand):
    help = "Import a thread (its runs, run steps and messages) from the service into the mirror."

    def add_arguments(self, parser):
        parser.add_argument("thread_id", help="the service's thread id, e.g. thread_abc123")
        parser.add_argument("--connection", help="a RUNS_APP connection name (default: DEFAULT_CONNECTION)")

    def handle(self, *args, thread_id, connection, **options):
        connection = connection_option(connection)
        try:
            thread = services.thread_import(thread_id=thread_id, connection=connection)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        except AssistantsError as exc:
            # str() carries the service's message and its request id; never the credentials.
            raise CommandError(f"Could not import {thread_id}: {exc}") from None
        runs, messages = thread.runs.count(), thread.messages.count()
        self.stdout.write(self.style.SUCCESS(
            f"Imported thread {thread.remote_id} from {connection!r}: {runs} run{'s' * (runs != 1)}, "
            f"{messages} message{'s' * (messages != 1)}."))
