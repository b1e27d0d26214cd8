"""``manage.py runs_sync_messages [THREAD_ID ...] [--connection NAME]``: bring every message of the mirror's threads
(or of the given ones) into the mirror now, through ``services.thread_messages_sync``.

Mirrors made before whole conversations were mirrored hold only the messages written by runs; this completes
them once (the poller also completes a thread at its next run's end). Each thread is listed from its cursor, so
running it again costs one request per thread. One failure does not stop the rest; the command exits non-zero
if any thread failed.
"""

from django.core.management.base import BaseCommand, CommandError

from runs_app import services
from runs_app.assistants import AssistantsError
from runs_app.management.commands._connections import connection_option
from runs_app.models import Thread


class Command(BaseCommand):
    help = "List the messages of the mirror's threads (every message, whoever wrote it) and mirror the new ones."

    def add_arguments(self, parser):
        parser.add_argument("thread_ids", nargs="*", metavar="THREAD_ID",
                            help="the service's thread ids (default: every thread of the connection(s))")
        parser.add_argument("--connection", help="a RUNS_APP connection name (default: every connection; with "
                                                 "thread ids: DEFAULT_CONNECTION)")

    def handle(self, *args, thread_ids, connection, **options):
        threads = Thread.objects.order_by("created_at", "id")
        if thread_ids:
            threads = threads.filter(connection=connection_option(connection), remote_id__in=thread_ids)
            missing = set(thread_ids) - set(threads.values_list("remote_id", flat=True))
            for thread_id in sorted(missing):
                self.stderr.write(f"{thread_id}: not in the mirror; import it first "
                                  "(manage.py runs_import_thread THREAD_ID).")
        else:
            missing = set()
            if connection:
                threads = threads.filter(connection=connection_option(connection))
        failures, listed, total = len(missing), 0, 0
        for thread in threads.iterator():
            total += 1
            before = thread.messages.count()
            try:
                listed += services.thread_messages_sync(thread=thread)
            except AssistantsError as exc:
                failures += 1
                self.stderr.write(f"{thread.remote_id}: failed: {exc}")
                continue
            added = thread.messages.count() - before
            self.stdout.write(f"{thread.remote_id}: {added} new message{'s' * (added != 1)}")
        self.stdout.write(f"{total} thread{'s' * (total != 1)} synced, {listed} message{'s' * (listed != 1)} listed.")
        if failures:
            raise CommandError(f"{failures} thread{'s' * (failures != 1)} could not be synced.")
