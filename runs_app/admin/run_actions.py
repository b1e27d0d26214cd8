"""The operator's actions on runs, each through the services and each with its own permission: cancel (one or
many, confirmed first), refresh (one or many), modify metadata, submit tool outputs."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from runs_app import services
from runs_app.admin.displays import (
    error_text,
)
from runs_app.admin.forms import ToolOutputsForm, metadata_formset
from runs_app.assistants import APIStatusError, AssistantsError
from runs_app.models import (
    Run,
    RunStatus,
)
from runs_app.services import RunStateConflict
from runs_app.services.validation import METADATA_MAX_KEY_LENGTH, METADATA_MAX_KEYS, METADATA_MAX_VALUE_LENGTH


class RunActions:
    """The action views and bulk actions of ``RunAdmin``."""

    # -- permissions of the actions (used by @admin.action(permissions=...)) --

    def has_cancel_permission(self, request, obj=None):
        return request.user.has_perm("runs_app.cancel_run")

    def has_submit_tool_outputs_permission(self, request, obj=None):
        return request.user.has_perm("runs_app.submit_tool_outputs")

    def has_change_metadata_permission(self, request, obj=None):
        return request.user.has_perm("runs_app.change_run_metadata")

    def has_refresh_permission(self, request, obj=None):
        return request.user.has_perm("runs_app.refresh_run")

    def _run(self, request, object_id) -> Run:
        run = self.get_object(request, unquote(object_id))
        if run is None:
            raise Http404(f"No run with primary key {object_id!r}.")
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        return run

    def _change_url(self, run):
        return reverse("admin:runs_app_run_change", args=[run.pk])

    def _context(self, request, run, title, **extra):
        return {**self.admin_site.each_context(request), "opts": self.opts, "original": run, "run": run,
                "title": title, "subtitle": run.remote_id, "has_view_permission": True, **extra}

    # Cancel: one run (button on its page) or many (the action); both confirm first.

    @admin.action(description="Cancel selected runs", permissions=["cancel"])
    def cancel_runs(self, request, queryset):
        runs = self._bulk_selection(request, queryset, "cancel")
        if runs is None:
            return None
        if request.POST.get("confirm") == "yes":
            self._cancel(request, runs)
            return None
        return TemplateResponse(request, "admin/runs_app/run/cancel_confirmation.html", {
            **self.admin_site.each_context(request), "opts": self.opts, "title": "Cancel runs?",
            "runs": runs, "cancellable": [r for r in runs if not r.is_terminal],
            "not_cancellable": [r for r in runs if r.is_terminal], "action_form": True,
            "selected": [r.pk for r in runs], "action_name": "cancel_runs",
        })

    def cancel_view(self, request, object_id):
        run = self._run(request, object_id)
        if not self.has_cancel_permission(request):
            raise PermissionDenied
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            self._cancel(request, [run])
            return HttpResponseRedirect(self._change_url(run))
        return TemplateResponse(request, "admin/runs_app/run/cancel_confirmation.html", {
            **self._context(request, run, "Cancel this run?"),
            "runs": [run], "cancellable": [] if run.is_terminal else [run],
            "not_cancellable": [run] if run.is_terminal else [],
        })

    def _cancel(self, request, runs: list[Run]) -> None:
        self._each(request, runs, services.run_cancel, failed="Could not cancel run", done="Cancel requested for")

    @admin.action(description="Refresh selected runs from the service now", permissions=["refresh"])
    def refresh_runs(self, request, queryset):
        runs = self._bulk_selection(request, queryset, "refresh")
        if runs is not None:
            self._refresh(request, runs)

    # Each run is one request to the service, made while the operator waits: "select all" over a large
    # list must not turn into thousands of them.
    MAX_BULK = 200

    def _bulk_selection(self, request, queryset, verb: str) -> list[Run] | None:
        runs = list(queryset.select_related("thread")[: self.MAX_BULK + 1])
        if len(runs) > self.MAX_BULK:
            messages.error(request, f"Select at most {self.MAX_BULK} runs to {verb} at once; nothing was sent. "
                                    "Narrow the list with the filters first.")
            return None
        return runs

    def refresh_view(self, request, object_id):
        run = self._run(request, object_id)
        if not self.has_refresh_permission(request):
            raise PermissionDenied
        self._refresh(request, [run])
        return HttpResponseRedirect(self._change_url(run))

    def _refresh(self, request, runs: list[Run]) -> None:
        self._each(request, runs, services.run_refresh, failed="Could not refresh run", done="Refreshed")

    def _each(self, request, runs: list[Run], service, *, failed: str, done: str) -> None:
        """One service call per run; each refusal reported (a run not in the state the action needs is a
        warning), the successes summed up."""
        succeeded = []
        for run in runs:
            try:
                run = service(run=run, user=request.user)
            except RunStateConflict as exc:
                messages.warning(request, exc.message)
            except (ValidationError, AssistantsError) as exc:
                messages.error(request, f"{failed} {run.remote_id}: {error_text(exc)}")
            else:
                succeeded.append(f"{run.remote_id} ({run.status})")
        if succeeded:
            messages.success(request, f"{done} {len(succeeded)} run(s): {', '.join(succeeded)}.")

    def metadata_view(self, request, object_id):
        run = self._run(request, object_id)
        if not self.has_change_metadata_permission(request):
            raise PermissionDenied
        formset = metadata_formset(metadata=run.metadata, data=request.POST if request.method == "POST" else None)
        service_errors = []
        if request.method == "POST" and formset.is_valid():
            try:
                run = services.run_modify_metadata(run=run, metadata=formset.metadata, user=request.user)
            except (ValidationError, RunStateConflict, AssistantsError) as exc:
                service_errors.append(error_text(exc))
                messages.error(request, f"Could not modify the metadata of run {run.remote_id}: {error_text(exc)}")
            else:
                messages.success(request, f"Metadata of run {run.remote_id} saved ({len(run.metadata)} keys).")
                return HttpResponseRedirect(self._change_url(run))
        return TemplateResponse(request, "admin/runs_app/run/metadata.html", self._context(
            request, run, "Modify metadata", formset=formset, service_errors=service_errors,
            limits={"keys": METADATA_MAX_KEYS, "key": METADATA_MAX_KEY_LENGTH, "value": METADATA_MAX_VALUE_LENGTH}))

    def tool_outputs_view(self, request, object_id):
        run = self._run(request, object_id)
        if not self.has_submit_tool_outputs_permission(request):
            raise PermissionDenied
        if run.status != RunStatus.REQUIRES_ACTION or not run.pending_tool_calls:
            if request.method == "POST":
                return self._moved_on(request, run, f"Run {run.remote_id} is {run.status} in the mirror; it no "
                                                    "longer waits for tool outputs. Nothing was sent.")
            messages.warning(request, f"Run {run.remote_id} is {run.status}; it does not wait for tool outputs.")
            return HttpResponseRedirect(self._change_url(run))
        form = ToolOutputsForm(request.POST if request.method == "POST" else None, tool_calls=run.pending_tool_calls)
        if request.method == "POST" and form.is_valid():
            try:
                run = services.run_submit_tool_outputs(run=run, tool_outputs=form.tool_outputs(request.POST),
                                                       user=request.user)
            except ValidationError as exc:
                form.add_error(None, exc.message_dict.get("tool_outputs") or exc.messages)
                messages.error(request, f"The tool outputs were not sent: {error_text(exc)}")
            except RunStateConflict as exc:
                return self._moved_on(request, run, f"{exc.message} Nothing was sent.")
            except APIStatusError as exc:
                if exc.status == 400 and "do not accept tool outputs" in (exc.message or ""):
                    return self._moved_on(request, run, f"The service refused the tool outputs of run "
                                                        f"{run.remote_id}: {exc}")
                messages.error(request, f"The tool outputs of run {run.remote_id} were not accepted: {exc}")
            except AssistantsError as exc:
                messages.error(request, f"The tool outputs of run {run.remote_id} were not accepted: {exc}")
            else:
                messages.success(request, f"Tool outputs sent; run {run.remote_id} is now {run.status}.")
                return HttpResponseRedirect(self._change_url(run))
        return TemplateResponse(request, "admin/runs_app/run/tool_outputs.html", self._context(
            request, run, "Submit tool outputs", form=form))

    def _moved_on(self, request, run: Run, message: str):
        """The run left requires_action meanwhile: say so, and fetch its real state."""
        messages.error(request, message)
        try:
            run = services.run_refresh(run=run, user=request.user)
        except AssistantsError as exc:
            messages.error(request, f"Could not refresh run {run.remote_id}: {exc}")
        else:
            messages.info(request, f"Refreshed run {run.remote_id} from the service: it is {run.status}.")
        return HttpResponseRedirect(self._change_url(run))
