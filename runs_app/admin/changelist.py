"""The run list's pieces: a paginator that counts from the planner's estimate, the filters, and the
overview above the list."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from django.contrib.admin import SimpleListFilter
from django.core.cache import cache
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Count, QuerySet
from django.utils import timezone
from django.utils.functional import cached_property

from runs_app.admin.displays import human_seconds
from runs_app.conf import app_settings
from runs_app.models import (
    Run,
    RunStatus,
)
from runs_app.ops.sync_status import sync_status


class EstimatedCountPaginator(Paginator):
    """On PostgreSQL, an unfiltered list of a large table is counted from pg_class.reltuples, not COUNT(*)."""

    ESTIMATE_ABOVE = 100_000

    @cached_property
    def count(self):
        queryset = self.object_list
        if isinstance(queryset, QuerySet) and not queryset.query.where:
            connection = connections[queryset.db]
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                                   [queryset.model._meta.db_table])
                    row = cursor.fetchone()
                if row and row[0] is not None and row[0] >= self.ESTIMATE_ABOVE:
                    return int(row[0])
        return super().count


class AttentionFilter(SimpleListFilter):
    title = "attention"
    parameter_name = "attention"

    def lookups(self, request, model_admin):
        return [("needs_action", "needs action"), ("stuck", "stuck"), ("expiring", "expiring soon")]

    def queryset(self, request, queryset):
        return {
            "stuck": queryset.stuck,
            "needs_action": queryset.needing_action,
            "expiring": queryset.expiring_soon,
        }.get(self.value(), lambda: queryset)()


class RecentValuesFilter(SimpleListFilter):
    """Choices from the newest runs only (a DISTINCT over a million rows is too slow for a sidebar)."""

    field = ""
    sample = 5000

    def base(self):
        return Run.objects.all()

    def lookups(self, request, model_admin):
        recent = self.base().order_by("-created_at").values("pk")[: self.sample]
        values = list(Run.objects.filter(pk__in=recent).exclude(**{self.field: ""})
                      .values_list(self.field, flat=True).distinct().order_by(self.field)[:50])
        current = self.value()
        if current and current not in values:
            values.append(current)  # a value typed into the URL still shows as selected
        return [(v, v) for v in values]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(**{self.field: self.value()})
        return queryset


class AssistantFilter(RecentValuesFilter):
    title = "assistant"
    parameter_name = "assistant"
    field = "assistant_id"


class ModelFilter(RecentValuesFilter):
    title = "model"
    parameter_name = "model"
    field = "model"


class ErrorCodeFilter(RecentValuesFilter):
    title = "failed with error code"
    parameter_name = "error_code"
    field = "last_error_code"

    def base(self):
        return Run.objects.filter(status=RunStatus.FAILED)

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(status=RunStatus.FAILED, last_error_code=self.value())
        return queryset


class ConnectionFilter(SimpleListFilter):
    title = "connection"
    parameter_name = "connection"

    def lookups(self, request, model_admin):
        names = list(app_settings.CONNECTIONS)
        if self.value() and self.value() not in names:
            names.append(self.value())
        return [(n, n) for n in names]

    def queryset(self, request, queryset):
        return queryset.filter(connection=self.value()) if self.value() else queryset


REQUEST_SAMPLE_KEY = "runs_app:admin:request-sample"


REQUEST_SAMPLE_MIN_AGE = 10.0


def run_overview(now: dt.datetime | None = None) -> dict:
    """The numbers above the run list: ``sync_status`` (as ``manage.py runs_sync_status``) plus the last 24 hours."""
    now = now or timezone.now()
    status = sync_status(now=now)
    active = Counter()
    for statuses in status["active_runs"]["by_connection"].values():
        active.update(statuses)
    last_day = dict(Run.objects.terminal().filter(created_at__gte=now - dt.timedelta(hours=24))
                    .values_list("status").annotate(n=Count("id")).order_by())
    # The request rate is the growth of each connection's counter since a sample at least 10 s old.
    sample = cache.get(REQUEST_SAMPLE_KEY)
    current = {"at": now.timestamp(), "requests": {c["connection"]: c["requests"] for c in status["connections"]}}
    rates = {}
    if sample and current["at"] - sample["at"] >= REQUEST_SAMPLE_MIN_AGE:
        minutes = (current["at"] - sample["at"]) / 60
        for name, count in current["requests"].items():
            if name in sample["requests"]:
                rates[name] = round((count - sample["requests"][name]) / minutes, 1)
    if not sample or current["at"] - sample["at"] >= 60:
        cache.set(REQUEST_SAMPLE_KEY, current, 3600)
    for connection in status["connections"]:
        connection["requests_per_minute"] = rates.get(connection["connection"])
    lag = status["lag_seconds"]
    return {
        "active": [(s, active[s]) for s in RunStatus.values if active.get(s)],
        "active_total": status["active_runs"]["total"],
        "last_day": [(s, last_day[s]) for s in RunStatus.values if s in last_day],
        "needs_action": active.get(RunStatus.REQUIRES_ACTION, 0),
        "stuck": status["stuck"],
        "expiring": status["expiring"],
        "lag_max": human_seconds(lag["max"]) if lag["max"] is not None else "—",
        "lag_p50": human_seconds(lag["p50"]) if lag["p50"] is not None else "—",
        "connections": status["connections"],
        "lanes": status["lanes"],
    }
