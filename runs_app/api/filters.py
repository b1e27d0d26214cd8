"""Filters of ``GET /runs/`` (status, connection, assistant_id, thread_id, model, created_before/after,
``metadata[key]=value``, needs_action, stuck) and of a thread's messages (run_id, role)."""

from __future__ import annotations

import datetime as dt

import django_filters
from django import forms
from django.db.models import TextField
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast
from drf_spectacular.utils import extend_schema_field
from rest_framework.exceptions import ValidationError

from runs_app.models import Message, Run, RunStatus

METADATA_PARAM_PREFIX = "metadata["


class TimestampFormField(forms.Field):
    """A Unix time in seconds (as the protocol's created_at) or an ISO 8601 date-time."""

    def to_python(self, value):
        if value in (None, ""):
            return None
        try:
            return dt.datetime.fromtimestamp(int(value), tz=dt.UTC)
        except (TypeError, ValueError, OverflowError, OSError):
            pass
        try:
            parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise forms.ValidationError("Give a Unix time in seconds or an ISO 8601 date-time.") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@extend_schema_field({"type": "string", "description": "Unix time in seconds or ISO 8601 date-time."})
class TimestampFilter(django_filters.Filter):
    field_class = TimestampFormField


class RunFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=RunStatus.choices)
    connection = django_filters.CharFilter()
    assistant_id = django_filters.CharFilter()
    thread_id = django_filters.CharFilter(field_name="thread__remote_id")
    model = django_filters.CharFilter()
    created_after = TimestampFilter(field_name="created_at", lookup_expr="gte")
    created_before = TimestampFilter(field_name="created_at", lookup_expr="lt")
    needs_action = django_filters.BooleanFilter(method="filter_needs_action",
                                                help_text="true: runs waiting in requires_action.")
    stuck = django_filters.BooleanFilter(method="filter_stuck", help_text="true: active runs flagged stuck.")

    class Meta:
        model = Run
        fields = []

    def filter_needs_action(self, queryset, name, value):
        if value is None:
            return queryset
        needing = Run.objects.needing_action()
        return queryset.filter(pk__in=needing.values("pk")) if value else queryset.exclude(pk__in=needing.values("pk"))

    def filter_stuck(self, queryset, name, value):
        if value is None:
            return queryset
        stuck = Run.objects.stuck()
        return queryset.filter(pk__in=stuck.values("pk")) if value else queryset.exclude(pk__in=stuck.values("pk"))

    def filter_queryset(self, queryset):
        return filter_by_metadata(super().filter_queryset(queryset), self.data)


def metadata_filters(query) -> dict[str, str]:
    """``metadata[key]=value`` query parameters as {key: value}."""
    wanted = {}
    for param, value in query.items():
        if not (param.startswith(METADATA_PARAM_PREFIX) and param.endswith("]")):
            continue
        key = param[len(METADATA_PARAM_PREFIX):-1]
        if not key or len(key) > 64 or len(value) > 512 or "\x00" in key + value:
            raise ValidationError({param: ["Give metadata[key]=value with a key of 1 to 64 characters and a "
                                           "value of up to 512."]})
        wanted[key] = value
    return wanted


def filter_by_metadata(queryset, query):
    # KeyTextTransform, not metadata__<key>: a key may contain "__" and must never become a lookup; the
    # Cast makes the comparison plain text (KeyTransformExact would read the value as JSON).
    for index, (key, value) in enumerate(metadata_filters(query).items()):
        alias = f"_metadata_{index}"
        text = Cast(KeyTextTransform(key, "metadata"), TextField())
        queryset = queryset.alias(**{alias: text}).filter(**{alias: value})
    return queryset


class MessageFilter(django_filters.FilterSet):
    run_id = django_filters.CharFilter(field_name="run_remote_id", help_text="Only the messages this run wrote.")
    role = django_filters.ChoiceFilter(choices=[("user", "user"), ("assistant", "assistant")])

    class Meta:
        model = Message
        fields = []
