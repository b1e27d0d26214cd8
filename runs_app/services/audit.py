"""The audit log of operator actions: who did what, what was sent (secrets redacted), and the service's answer or
error with its request id; each action also enters the run's timeline."""

from __future__ import annotations

import re
from typing import Any

from runs_app.assistants import APIStatusError, AssistantsError
from runs_app.mirror.ordering import without_nul
from runs_app.models import OperatorAction, Run, RunEvent, Source, Thread

_SECRET_KEY_RE = re.compile(r"(api[-_]?key|token|secret|password|authorization|credential)", re.IGNORECASE)


def redact(value: Any) -> Any:
    """A copy with the values of secret-looking keys replaced (and NULs, which PostgreSQL cannot store), for
    the audit log."""
    return _redacted(without_nul(value))


def _redacted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if isinstance(k, str) and _SECRET_KEY_RE.search(k) else _redacted(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


class ActionAudit:
    """Records one operator action: the request before it is sent, the answer or error after."""

    def __init__(self, *, action: str, connection: str, target: str, user=None, run: Run | None = None,
                 thread: Thread | None = None, sent: dict | None = None):
        self.action = OperatorAction.objects.create(
            action=action, connection=connection, target=target, user=real_user(user), run=run, thread=thread,
            sent=redact(sent or {}),
        )

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if isinstance(exc, AssistantsError):
            self.action.succeeded = False
            self.action.error = without_nul(str(exc))
            self.action.request_id = exc.request_id or ""
            if isinstance(exc, APIStatusError):
                self.action.answer = without_nul({"status": exc.status, "code": exc.code,
                                                       "message": exc.message, "param": exc.param})
            self.action.save()
            self._timeline()
        return False

    def succeeded(self, answer: dict | None, *, run: Run | None = None, thread: Thread | None = None) -> None:
        self.action.succeeded = True
        self.action.answer = without_nul(answer)
        if run is not None:
            self.action.run = run
        if thread is not None:
            self.action.thread = thread
        self.action.save()
        self._timeline()

    def _timeline(self):
        if self.action.run_id:
            RunEvent.objects.create(run_id=self.action.run_id, kind=RunEvent.Kind.ACTION, source=Source.ACTION,
                                    user=self.action.user, operator_action=self.action,
                                    observed_at=self.action.at)


def real_user(user):
    return user if user is not None and getattr(user, "is_authenticated", False) else None
