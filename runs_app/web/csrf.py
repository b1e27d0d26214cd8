"""CSRF for writes whose credentials a browser sends on its own, answered in the door's JSON error body.

A browser replays HTTP Basic credentials it once stored, and its session cookie, on any request to the site — even
one a page on another origin makes it send (a plain HTML form can POST). So every write authenticated by anything
but a token the caller put in the ``Authorization`` header itself (``Token …``, ``Bearer …``) must pass Django's
CSRF check. Django's own failure answer is an HTML page; the API and the live endpoints answer JSON, so they are
``csrf_exempt`` to the middleware and run the same check here.
"""

from __future__ import annotations

from functools import wraps

from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

#: Authorization schemes a browser never sends on its own: the caller wrote the header.
CALLER_SET_SCHEMES = frozenset({"token", "bearer"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class _Check(CsrfViewMiddleware):
    def _reject(self, request, reason):
        return reason  # the reason, for the JSON body, instead of Django's HTML page


def caller_set_credentials(request) -> bool:
    scheme = request.META.get("HTTP_AUTHORIZATION", "").split(" ", 1)[0].lower()
    return scheme in CALLER_SET_SCHEMES


def csrf_failure(request) -> str | None:
    """Why this Django request fails CSRF, or None when it passes or needs no check (a read, a token)."""
    if request.method in SAFE_METHODS or caller_set_credentials(request):
        return None
    check = _Check(lambda r: None)
    check.process_request(request)  # reads the CSRF cookie
    return check.process_view(request, None, (), {})


def failure_message(reason: str) -> str:
    return (f"CSRF failed: {reason}. A write authenticated by a password or a session needs the CSRF token "
            "(the page's csrftoken cookie, sent back in the X-CSRFToken header); scripts authenticate with a "
            "token (Authorization: Token …) and need none.")


def json_csrf_protect(answer):
    """Decorate a view: CSRF checked as Django does, a failure answered by ``answer(message)`` (a JSON 403)."""

    def decorator(view):
        @csrf_exempt
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            reason = csrf_failure(request)
            if reason:
                return answer(failure_message(reason))
            return view(request, *args, **kwargs)

        return wrapped

    return decorator
