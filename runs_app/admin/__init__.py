"""The Django admin as the ops console: a read-only mirror with actions that go through ``runs_app.services``.

Mirror rows are never added, edited or deleted here except a thread's local deletion (with Django's confirmation;
nothing is deleted remotely). Every write is a service call; the services validate, talk to the service and audit.
One module per model family (``runs``, ``threads``, ``records``), the list's pieces in ``changelist``, how things
are shown in ``displays``, the action forms in ``forms``.

May use: errors, ops (the overview), the services and everything below.
"""

from runs_app.admin import records, runs, threads  # noqa: F401 (registers the admins)
