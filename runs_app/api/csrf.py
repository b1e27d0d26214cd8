"""CSRF for API writes, whatever the site's ``DEFAULT_AUTHENTICATION_CLASSES``: DRF's SessionAuthentication checks
it, its BasicAuthentication does not, and a browser replays remembered Basic credentials to any page's form
(``runs_app.web.csrf`` says who is checked)."""

from __future__ import annotations

from rest_framework import exceptions

from runs_app.web.csrf import csrf_failure, failure_message


def enforce_csrf(request) -> None:
    """Raise PermissionDenied (the API's 403 body) for a write that needs CSRF and fails Django's check."""
    reason = csrf_failure(getattr(request, "_request", request))
    if reason:
        raise exceptions.PermissionDenied(failure_message(reason), code="csrf_failed")
