"""Who may use the API: active staff users, and for each write the same model permissions as the admin.

Views name what their writes need in ``required_permissions`` (e.g. ``["runs_app.cancel_run"]``); reads
need staff status only. Sites replace the whole policy with ``RUNS_APP["API_PERMISSION_CLASSES"]`` (dotted paths
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
        if request.method in SAFE_METHODS:
            return True
        needed = list(getattr(view, "required_permissions", {}).get(request.method, []))
        if user.has_perms(needed):
            return True
        missing = [p for p in needed if not user.has_perm(p)]
        self.message = f"This action needs the permission(s): {', '.join(missing)}."
        return False


def api_permission_classes() -> list[type[BasePermission]]:
    paths = app_settings.API_PERMISSION_CLASSES
    return [import_string(path) for path in paths]
