"""Every write goes through here: the admin, the API, the pages and the tasks all call these services.

Each validates its input before calling the service (``ValidationError`` naming the field), checks the state it
needs (``RunStateConflict``), calls the service through the client, applies the answer through the one upsert
(``runs_app.mirror.upsert``) and, for operator actions, writes the audit log and the run's timeline. The
service's refusals and failures propagate as the client's ``AssistantsError`` ladder, after being audited.

May use: the mirror, the client, models, conf, signals. Never the poller or the doors above: polling is asked
for with a signal (``request_polling``).
"""

from runs_app.services.assistants import assistant_choices
from runs_app.services.audit import ActionAudit, real_user, redact
from runs_app.services.clients import get_client
from runs_app.services.errors import RunStateConflict
from runs_app.services.messages import message_create, messages_sync_after_create, thread_messages_sync
from runs_app.services.runs import (
    details_marker,
    details_owed,
    ensure_thread_idle,
    mark_answered,
    run_apply_polled,
    run_cancel,
    run_create,
    run_details_sync,
    run_modify_metadata,
    run_poll,
    run_refresh,
    run_submit_tool_outputs,
    runs_apply_polled,
    thread_and_run_create,
)
from runs_app.services.streams import (
    OpenedStream,
    run_create_stream,
    run_submit_tool_outputs_stream,
    thread_and_run_create_stream,
)
from runs_app.services.threads import thread_create, thread_import, thread_sync
from runs_app.services.validation import (
    validate_message,
    validate_messages,
    validate_metadata,
    validate_run_request,
    validate_tool_outputs,
)

__all__ = [
    "ActionAudit", "OpenedStream", "RunStateConflict", "assistant_choices", "details_marker", "details_owed",
    "ensure_thread_idle",
    "get_client", "mark_answered", "message_create", "messages_sync_after_create", "real_user", "redact",
    "run_apply_polled", "run_cancel", "run_create", "run_create_stream", "run_details_sync", "run_modify_metadata",
    "run_poll", "run_refresh", "run_submit_tool_outputs", "run_submit_tool_outputs_stream", "runs_apply_polled",
    "thread_and_run_create",
    "thread_and_run_create_stream", "thread_create", "thread_import", "thread_messages_sync", "thread_sync",
    "validate_message", "validate_messages", "validate_metadata", "validate_run_request", "validate_tool_outputs",
]
