from django.apps import AppConfig


class RunsAppConfig(AppConfig):
    name = "runs_app"
    verbose_name = "Assistants runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Registers the system checks and the settings reload hook.
        from runs_app import checks, conf  # noqa: F401
