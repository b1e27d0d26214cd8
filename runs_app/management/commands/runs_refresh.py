"""``manage.py runs_refresh [RUN_ID ...] [--all-active] [--connection NAME]``: fetch runs (with their steps
and messages) from the service now, through ``services.run_refresh``. One failure does not stop the rest;
the command exits non-zero if any run failed."""

from django.core.management.base import BaseCommand, CommandError

from runs_app import services
from runs_app.assistants import AssistantsError
from runs_app.management.commands._connections import connection_option
from runs_app.models import Run


class Command(BaseCommand):
    help = "Refresh runs from the service now: the given run ids, or every active run with --all-active."

    def add_arguments(self, parser):
        parser.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="the service's run ids, e.g. run_abc123")
        parser.add_argument("--all-active", action="store_true", help="every run of the mirror not yet terminal")
        parser.add_argument("--connection",
                            help="a RUNS_APP connection name (default: DEFAULT_CONNECTION; with --all-active: all)")

    def handle(self, *args, run_ids, all_active, connection, **options):
        if not run_ids and not all_active:
            raise CommandError("Give one or more run ids, or --all-active.")
        targets: list[tuple[str, Run | None]] = []
        if run_ids:
            name = connection_option(connection)
            found = {r.remote_id: r for r in Run.objects.select_related("thread").filter(connection=name,
                                                                                          remote_id__in=run_ids)}
            targets += [(run_id, found.get(run_id)) for run_id in dict.fromkeys(run_ids)]
        if all_active:
            active = Run.objects.active().select_related("thread").order_by("created_at", "id")
            if connection:
                active = active.filter(connection=connection_option(connection))
            seen = {run_id for run_id, _ in targets}
            targets += [(run.remote_id, run) for run in active if run.remote_id not in seen]
        if not targets:
            self.stdout.write("No active runs to refresh.")
            return
        failures = 0
        for run_id, run in targets:
            if run is None:
                failures += 1
                self.stderr.write(f"{run_id}: not in the mirror; import its thread first "
                                  "(manage.py runs_import_thread THREAD_ID).")
                continue
            try:
                run = services.run_refresh(run=run)
            except AssistantsError as exc:
                failures += 1
                self.stderr.write(f"{run_id}: refresh failed: {exc}")
                continue
            self.stdout.write(f"{run.remote_id}: {run.status}")
        if failures:
            raise CommandError(f"{failures} of {len(targets)} run{'s' * (len(targets) != 1)} could not be refreshed.")
