"""Threads: the list, a thread's page, import a thread by id, start a run on it."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from runs_app import services
from runs_app.admin.base import ReadOnlyAdmin
from runs_app.admin.changelist import EstimatedCountPaginator
from runs_app.admin.displays import (
    admin_link,
    error_text,
    json_display,
    raw_display,
    status_badge,
)
from runs_app.admin.forms import RunStartForm, ThreadImportForm
from runs_app.assistants import AssistantsError
from runs_app.models import (
    Message,
    Run,
    RunEvent,
    RunStep,
    Thread,
)
from runs_app.services import RunStateConflict


@admin.register(Thread)
class ThreadAdmin(ReadOnlyAdmin):
    list_display = ("remote_id", "connection", "created_at", "tracked", "synced_at", "runs_link")
    list_filter = ("connection", "tracked")
    search_fields = ("=remote_id", "metadata")
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    change_list_template = "admin/runs_app/thread/change_list.html"
    change_form_template = "admin/runs_app/thread/change_form.html"
    fieldsets = [
        (None, {"fields": ("remote_id", "connection", "created_at", "metadata_block", "tool_resources_block",
                           "runs_block", "messages_link")}),
        ("Sync", {"classes": ("collapse",), "fields": ("tracked", "next_discovery_at", "discovery_interval",
                                                       "observed_from", "observed_to", "synced_at", "first_seen_at")}),
        ("Raw remote object", {"fields": ("raw_block",)}),
    ]

    def has_delete_permission(self, request, obj=None):
        # Deleting a thread only forgets it locally (with its runs and messages); nothing is deleted remotely.
        return request.user.has_perm("runs_app.delete_thread")

    def has_import_permission(self, request):
        return request.user.has_perm("runs_app.add_thread")

    def get_deleted_objects(self, objs, request):
        # The thread's runs, steps, messages and timeline go with it; their admins are read-only, so
        # Django would otherwise refuse. The audit log keeps its rows (SET_NULL).
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        mirror = {str(m._meta.verbose_name) for m in (Run, RunStep, Message, RunEvent)}
        return deleted, model_count, set(perms_needed) - mirror, protected

    def has_start_run_permission(self, request):
        return request.user.has_perm("runs_app.add_run")

    @admin.display(description="runs")
    def runs_link(self, thread):
        url = reverse("admin:runs_app_run_changelist") + f"?thread__id__exact={thread.pk}"
        return format_html('<a href="{}">runs</a>', url)

    metadata_block = json_display("metadata", "metadata")

    tool_resources_block = json_display("tool_resources", "tool resources")

    @admin.display(description="newest runs")
    def runs_block(self, thread):
        runs = list(thread.runs.order_by("-created_at")[:20])
        if not runs:
            return "—"
        rows = ((admin_link(r, r.remote_id), r.assistant_id, status_badge(r.status),
                 r.created_at.strftime("%Y-%m-%d %H:%M:%S") if r.created_at else "—") for r in runs)
        return format_html('<table class="runs-table">{}</table>{}', format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows), self.runs_link(thread))

    @admin.display(description="messages")
    def messages_link(self, thread):
        url = reverse("admin:runs_app_message_changelist") + f"?thread__id__exact={thread.pk}"
        return format_html('<a href="{}">messages of this thread</a>', url)

    raw_block = raw_display()

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("import/", view(self.import_view), name="runs_app_thread_import"),
            path("<path:object_id>/start-run/", view(self.start_run_view), name="runs_app_thread_start_run"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "can_import": self.has_import_permission(request)}
        return super().changelist_view(request, extra_context=extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "can_start_run": self.has_start_run_permission(request),
                         "can_import": self.has_import_permission(request)}
        return super().change_view(request, object_id, form_url, extra_context)

    def import_view(self, request):
        if not self.has_import_permission(request):
            raise PermissionDenied
        form = ThreadImportForm(request.POST if request.method == "POST" else None,
                                initial={"thread_id": request.GET.get("thread_id", "")})
        if request.method == "POST" and form.is_valid():
            try:
                thread = services.thread_import(thread_id=form.cleaned_data["thread_id"],
                                                connection=form.cleaned_data["connection"], user=request.user)
            except ValidationError as exc:
                refused(request, form, exc, "The thread was not imported")
            except AssistantsError as exc:
                messages.error(request, f"Could not import thread {form.cleaned_data['thread_id']}: {exc}")
            else:
                messages.success(request, f"Imported thread {thread.remote_id}: {thread.runs.count()} run(s), "
                                          f"{thread.messages.count()} message(s); it is now followed.")
                return redirect("admin:runs_app_thread_change", thread.pk)
        return TemplateResponse(request, "admin/runs_app/thread/import.html", {
            **self.admin_site.each_context(request), "opts": self.opts, "title": "Import a thread", "form": form,
            "has_view_permission": True,
        })

    def start_run_view(self, request, object_id):
        thread = self.get_object(request, unquote(object_id))
        if thread is None:
            raise Http404(f"No thread with primary key {object_id!r}.")
        if not self.has_start_run_permission(request):
            raise PermissionDenied
        recent = Run.objects.filter(thread=thread).exclude(assistant_id="").order_by("-created_at").first()
        form = RunStartForm(request.POST if request.method == "POST" else None,
                            initial={"assistant_id": recent.assistant_id if recent else ""})
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                run = services.run_create(thread=thread, assistant_id=data["assistant_id"].strip(), user=request.user,
                                          instructions=data["instructions"] or None, metadata=data["metadata"] or None)
            except (ValidationError, RunStateConflict) as exc:
                refused(request, form, exc, "The run was not started")
            except AssistantsError as exc:
                messages.error(request, f"Could not start a run on thread {thread.remote_id}: {exc}")
            else:
                messages.success(request, f"Started run {run.remote_id} on thread {thread.remote_id} ({run.status}).")
                return redirect("admin:runs_app_run_change", run.pk)
        return TemplateResponse(request, "admin/runs_app/thread/start_run.html", {
            **self.admin_site.each_context(request), "opts": self.opts, "title": "Start a run", "form": form,
            "original": thread, "subtitle": thread.remote_id, "has_view_permission": True,
        })


def refused(request, form, exc, what: str) -> None:
    """A service refused the form's input: each error on its field (or the form), and one message."""
    if isinstance(exc, RunStateConflict):
        form.add_error(None, exc.message)
    else:
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    messages.error(request, f"{what}: {error_text(exc)}")
