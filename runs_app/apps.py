from django.apps import AppConfig
from django.db.models.signals import post_migrate


class RunsAppConfig(AppConfig):
    name = "runs_app"
    verbose_name = "Assistants runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Registers the system checks and the settings reload hook.
        from runs_app import checks, conf  # noqa: F401

        post_migrate.connect(create_watchdog_schedule, sender=self)
        # Each q worker process watches the poll lanes and restarts silent ones (runs_app.poller).
        from django_q.signals import post_spawn

        from runs_app.poller import start_lane_watcher

        post_spawn.connect(start_lane_watcher, dispatch_uid="runs_app.lane_watcher")


WATCHDOG_FUNC = "runs_app.tasks.poller_watchdog"


def create_watchdog_schedule(**kwargs):
    """The per-minute django-q2 schedule that keeps the poll lanes alive (RUNS_APP["POLLER_AUTOSTART"])."""
    from runs_app.conf import app_settings

    if not app_settings.POLLER_AUTOSTART:
        return
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        func=WATCHDOG_FUNC,
        defaults={"name": "runs_app poller watchdog", "schedule_type": Schedule.MINUTES, "minutes": 1,
                  "repeats": -1},
    )
