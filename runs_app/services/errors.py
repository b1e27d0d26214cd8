"""What the services refuse besides bad input (``django.core.exceptions.ValidationError``, a 400 at every door)."""

from __future__ import annotations


class RunStateConflict(Exception):
    """The run (or its thread) is not in the state the action needs: cancelling a run already terminal or
    cancelling, submitting outputs to a run not waiting for them, starting a run on a thread whose run is still
    active. Every door answers it the same way (the API and the live pages: 409; the admin: a message)."""

    code = "run_state_conflict"

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
