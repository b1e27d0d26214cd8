"""What every admin of the mirror shares: rows are read-only (the mirror is written by the sync engine
and the services only)."""

from __future__ import annotations

from django.contrib import admin

CSS = {"all": ["runs_app/admin.css"]}


class ReadOnlyMixin:
    """Records nobody edits by hand: the mirror is written by the sync engine and the services only."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(ReadOnlyMixin, admin.ModelAdmin):
    class Media:
        css = CSS


class ReadOnlyInline(ReadOnlyMixin, admin.TabularInline):
    fk_name = "run"
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("created_at", "id")
