"""How the services ask for polling: a signal after commit, which the poller (a layer above) listens to."""

from __future__ import annotations

from django.db import transaction

from runs_app import signals
from runs_app.models import Run


def request_polling() -> None:
    """After this transaction commits, the poll lanes should be running now (a new run or thread to follow)."""
    transaction.on_commit(lambda: signals.polling_needed.send(sender=Run, urgent=True))
