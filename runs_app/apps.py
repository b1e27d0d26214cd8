from django.apps import AppConfig
from django.db.models.signals import post_migrate

from runs_app.conf import app_settings

WATCHDOG_FUNC = "runs_app.tasks.poller_watchdog"


class RunsAppConfig(AppConfig):
    name = "runs_app"
    verbose_name = "Assistants runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Imported here, not at the top, as Django requires of anything that imports models (the app registry
        # is ready only now); no circle is involved.
        from django_q.signals import post_spawn

        from runs_app import checks, poller, signals  # noqa: F401 (checks registers the system checks)

        post_migrate.connect(create_watchdog_schedule, sender=self)
        # A run that needs polling (reported after commit by the mirror and the services) wakes the poll lanes.
        signals.polling_needed.connect(poller.on_polling_needed, dispatch_uid="runs_app.polling_needed")
        # Each q worker process watches the poll lanes and restarts silent ones.
        post_spawn.connect(poller.start_lane_watcher, dispatch_uid="runs_app.lane_watcher")


def create_watchdog_schedule(**kwargs):
    """The per-minute django-q2 schedule that keeps the poll lanes alive (RUNS_APP["POLLER_AUTOSTART"])."""
    if not app_settings.POLLER_AUTOSTART:
        return
    from django_q.models import Schedule  # a model: importable only once apps are ready

    Schedule.objects.update_or_create(
        func=WATCHDOG_FUNC,
        defaults={"name": "runs_app poller watchdog", "schedule_type": Schedule.MINUTES, "minutes": 1,
                  "repeats": -1},
    )
