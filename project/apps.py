from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The demo site as an app, so it can carry its own management commands."""

    name = "project"
    verbose_name = "Demo site"
