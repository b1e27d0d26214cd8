"""The commands' shared ``--connection`` handling."""

from django.core.management.base import CommandError

from runs_app.conf import app_settings


def connection_option(name: str | None) -> str:
    """The named connection, or the default one; an unknown name is a CommandError listing the known ones."""
    name = name or app_settings.DEFAULT_CONNECTION
    if name not in app_settings.CONNECTIONS:
        known = ", ".join(sorted(app_settings.CONNECTIONS)) or "none"
        raise CommandError(f"Unknown connection {name!r}; RUNS_APP['CONNECTIONS'] has: {known}.")
    return name
