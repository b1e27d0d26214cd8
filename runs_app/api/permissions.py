"""Who may use the API: active staff users holding the admin's model permissions — to read (``view_run``,
``view_thread``, ``view_message``, ``view_runstep``, ``view_runevent``) as to write (``cancel_run``, …).

Views name what each method needs in ``required_permissions`` (e.g. ``{"GET": ["runs_app.view_run"], "POST":
["runs_app.cancel_run"]}``). Sites replace the whole policy with ``RUNS_APP["API_PERMISSION_CLASSES"]`` (dotted paths
of DRF permission classes; default ``["runs_app.api.permissions.IsRunsOperator"]``).
"""

from __future__ import annotations

from django.utils.module_loading import import_string
from rest_framework.permissions import SAFE_METHODS, BasePermission

from runs_app.conf import app_settings


class IsRunsOperator(BasePermission):
    message = "Only staff users may use this API; this action also needs the permission(s) named."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active and user.is_staff):
            self.message = "Only staff users may use this API."
            return False
        needed = permissions_needed(view, request.method)
        if user.has_perms(needed):
            return True
        missing = [p for p in needed if not user.has_perm(p)]
        self.message = f"This action needs the permission(s): {', '.join(missing)}."
        return False


def permissions_needed(view, method: str) -> list[str]:
    """What ``method`` on ``view`` needs; a read the view did not name needs ``view_run`` (never nothing)."""
    declared = getattr(view, "required_permissions", {})
    if method in SAFE_METHODS:
        return list(declared.get("GET") or ["runs_app.view_run"])
    return list(declared.get(method, []))


class CanViewRuns(BasePermission):
    """Active staff with ``runs_app.view_run``: the schema and the API docs (``SPECTACULAR_SETTINGS
    ["SERVE_PERMISSIONS"]``), which describe what such a user may read."""

    message = "The API's schema and docs need the permission runs_app.view_run."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_active and user.is_staff
                    and user.has_perm("runs_app.view_run"))


def api_permission_classes() -> list[type[BasePermission]]:
    paths = app_settings.API_PERMISSION_CLASSES
    return [import_string(path) for path in paths]
