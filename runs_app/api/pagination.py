"""Cursor pagination answering in the protocol's list shape: ``object``, ``data``, ``first_id``, ``last_id``,
``has_more``, plus ``next`` / ``previous`` links carrying the cursor."""

from __future__ import annotations

from rest_framework.filters import OrderingFilter
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response


class ProtocolCursorPagination(CursorPagination):
    page_size = 20
    page_size_query_param = "limit"
    max_page_size = 100
    ordering = "-created_at"

    def get_ordering(self, request, queryset, view):
        if any(issubclass(backend, OrderingFilter) for backend in getattr(view, "filter_backends", [])):
            return super().get_ordering(request, queryset, view)
        ordering = getattr(view, "ordering", None) or self.ordering
        return (ordering,) if isinstance(ordering, str) else tuple(ordering)

    def get_paginated_response(self, data):
        return Response({
            "object": "list",
            "data": data,
            "first_id": str(data[0]["id"]) if data else None,
            "last_id": str(data[-1]["id"]) if data else None,
            "has_more": bool(self.has_next),
            "next": self.get_next_link(),
            "previous": self.get_previous_link(),
        })

    def get_paginated_response_schema(self, schema):
        nullable_string = {"type": "string", "nullable": True}
        return {
            "type": "object",
            "required": ["object", "data", "first_id", "last_id", "has_more", "next", "previous"],
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": schema,
                "first_id": nullable_string,
                "last_id": nullable_string,
                "has_more": {"type": "boolean"},
                "next": {**nullable_string, "format": "uri"},
                "previous": {**nullable_string, "format": "uri"},
            },
        }
