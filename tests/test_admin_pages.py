"""The admin pages: the run list with its filters, overview and export, the run page, read-only mirror admins."""

import csv
import datetime as dt
import io
import re

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from runs_app.admin.changelist import EstimatedCountPaginator
from runs_app.admin.runs import csv_cell
from runs_app.models import Message, OperatorAction, Run, RunEvent, RunStep, Thread
from tests.factories import VIEW_PERMISSIONS, staff_user

pytestmark = pytest.mark.django_db

XSS = "<img src=x onerror=alert(1)>"
CHANGELIST = "/admin/runs_app/run/"


def make_thread(n=0, **fields):
    return Thread.objects.create(remote_id=f"thread_{n:06d}", created_at=timezone.now(), **fields)


def make_run(thread, n, status="completed", *, steps=0, messages=0, events=0, **fields):
    now = timezone.now()
    defaults = {"assistant_id": f"asst_{n % 3}", "model": "gpt-4o", "created_at": now - dt.timedelta(minutes=n),
                "started_at": now - dt.timedelta(minutes=n), "total_tokens": 30, "prompt_tokens": 20,
                "completion_tokens": 10}
    run = Run.objects.create(thread=thread, remote_id=f"run_{thread.pk}_{n:06d}", status=status,
                             **{**defaults, **fields})
    for i in range(steps):
        RunStep.objects.create(run=run, remote_id=f"step_{run.pk}_{i}", type="tool_calls", status="completed",
                               created_at=now, step_details={"type": "tool_calls", "tool_calls": [
                                   {"id": f"call_{i}", "type": "function", "function": {
                                       "name": "get_weather", "arguments": '{"city": "Oslo"}', "output": "sunny"}},
                                   {"id": f"ci_{i}", "type": "code_interpreter", "code_interpreter": {
                                       "input": "print(6*7)", "outputs": [{"type": "logs", "logs": "42"}]}},
                                   {"id": f"fs_{i}", "type": "file_search", "file_search": {
                                       "ranking_options": {"ranker": "default_2024_08_21", "score_threshold": 0},
                                       "results": [{"file_id": "file_1", "file_name": "handbook.pdf", "score": 0.9,
                                                    "content": [{"type": "text", "text": "Page 4 says so"}]}]}},
                               ]})
    for i in range(messages):
        Message.objects.create(thread=thread, run=run, run_remote_id=run.remote_id, remote_id=f"msg_{run.pk}_{i}",
                               role="assistant", created_at=now,
                               content=[{"type": "text", "text": {"value": f"answer {i} {XSS}", "annotations": []}}])
    for i in range(events):
        RunEvent.objects.create(run=run, from_status="queued", to_status="in_progress", source="poll",
                                observed_at=now + dt.timedelta(seconds=i))
    return run


# --- the run list ------------------------------------------------------------------------------------------

def test_changelist_columns_overview_and_badges(admin_client):
    thread = make_thread()
    waiting = make_run(thread, 1, "requires_action", expires_at=timezone.now() + dt.timedelta(minutes=9),
                       metadata={"ticket": "T-77"})
    make_run(thread, 2, "failed", last_error_code="server_error", last_error={"code": "server_error"})
    make_run(thread, 3, "in_progress", stuck_since=timezone.now())
    page = admin_client.get(CHANGELIST)
    body = page.content.decode()
    assert page.status_code == 200
    assert '<span class="runs-badge runs-badge--requires_action">requires_action</span>' in body
    assert 'id="runs-overview"' in body and 'id="overview-needs-action">1<' in body
    assert 'id="overview-stuck">1<' in body
    assert re.search(r'field-time_left"><span class="">(8m 5\d|9m 00)s</span>', body)  # time left to expires_at
    assert waiting.remote_id in body and "Export CSV" in body


@pytest.mark.parametrize(("query", "expected"), [
    ("status__exact=requires_action", {1, 4}),
    ("attention=needs_action", {1, 4}),
    ("attention=stuck", {3}),
    ("attention=expiring", {4}),
    ("error_code=server_error", {2}),
    ("assistant=asst_0", {3}),
    ("model=gpt-4o-mini", {4}),
    ("connection=default", {1, 2, 3, 4}),
    ("q=T-77", {1}),
    ("q=run_{thread}_000002", {2}),  # the thread's pk: PostgreSQL does not reset sequences between tests
    ("created_at__gte=2000-01-01+00%3A00%3A00%2B00%3A00", {1, 2, 3, 4}),
    ("created_at__gte=2999-01-01+00%3A00%3A00%2B00%3A00", set()),
])
def test_changelist_filters_and_search(admin_client, query, expected):
    thread = make_thread()
    make_run(thread, 1, "requires_action", metadata={"ticket": "T-77"})
    make_run(thread, 2, "failed", last_error_code="server_error")
    make_run(thread, 3, "in_progress", stuck_since=timezone.now())
    make_run(thread, 4, "requires_action", expiring_flagged_at=timezone.now(), model="gpt-4o-mini")
    response = admin_client.get(f"{CHANGELIST}?{query.format(thread=thread.pk)}")
    assert response.status_code == 200, response.content[:500]
    shown = {int(r.remote_id.rsplit("_", 1)[1]) for r in response.context["cl"].result_list}
    assert shown == expected


def test_search_by_thread_and_assistant_ids(admin_client):
    make_run(make_thread(1), 1, assistant_id="asst_x")
    make_run(make_thread(2), 2, assistant_id="asst_y")
    ids = lambda q: {r.remote_id for r in admin_client.get(f"{CHANGELIST}?q={q}").context["cl"].result_list}  # noqa: E731
    assert ids("thread_000002") == {Run.objects.get(thread__remote_id="thread_000002").remote_id}
    assert ids("asst_x") == {Run.objects.get(assistant_id="asst_x").remote_id}


def test_changelist_does_not_count_the_whole_table():
    assert Run.objects.count() == 0
    paginator = EstimatedCountPaginator(Run.objects.order_by("-created_at"), 50)
    assert paginator.count == 0  # SQLite (and small tables): an exact count
    from runs_app.admin.runs import RunAdmin

    assert RunAdmin.show_full_result_count is False and RunAdmin.paginator is EstimatedCountPaginator


# --- CSV export --------------------------------------------------------------------------------------------

def test_csv_export_streams_the_filtered_list_and_neutralises_formulas(admin_client):
    thread = make_thread()
    make_run(thread, 1, "failed", metadata={"note": "=HYPERLINK(\"http://evil\")"}, last_error_code="server_error")
    make_run(thread, 2, "completed", assistant_id="@asst", model="+gpt")
    response = admin_client.get(reverse("admin:runs_app_run_export") + "?status__exact=completed")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:6] == ["run", "thread", "connection", "assistant", "model", "status"]
    assert len(rows) == 2 and rows[1][0] == f"run_{thread.pk}_000002"
    assert rows[1][3] == "'@asst" and rows[1][4] == "'+gpt"
    everything = admin_client.get(reverse("admin:runs_app_run_export"))
    rows = list(csv.reader(io.StringIO(b"".join(everything.streaming_content).decode())))
    assert len(rows) == 3
    assert rows[1][-1].startswith('{"note": "=HYPERLINK')  # metadata as JSON: starts with "{", so it is safe
    for cell, expected in [("=1+1", "'=1+1"), ("-2", "'-2"), ("\tx", "'\tx"), ("\rx", "'\rx"), ("ok", "ok"),
                           (None, ""), (5, "5")]:
        assert csv_cell(cell) == expected


# --- the run page ------------------------------------------------------------------------------------------

def test_run_page_shows_timeline_steps_messages_and_escapes_everything(admin_client, admin_user):
    thread = make_thread()
    run = make_run(thread, 1, "failed", steps=1, messages=1, events=2, instructions=f"be nice {XSS}",
                   last_error={"code": "server_error", "message": f"boom {XSS}"}, last_error_code="server_error",
                   metadata={"k": XSS}, raw={"id": "run_1", "note": XSS})
    action = OperatorAction.objects.create(action="cancel_run", connection="default", target=run.remote_id,
                                           user=admin_user, run=run, error=f"nope {XSS}", request_id="req-123")
    RunEvent.objects.create(run=run, kind="action", source="action", user=admin_user, operator_action=action)
    body = admin_client.get(reverse("admin:runs_app_run_change", args=[run.pk])).content.decode()
    assert XSS not in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
    assert "answer 0 &lt;img src=x onerror=alert(1)&gt;" in body  # the message text
    assert "function get_weather" in body and "&quot;city&quot;: &quot;Oslo&quot;" in body  # pretty arguments
    assert "print(6*7)" in body and ">42</pre>" in body  # code interpreter input and logs
    assert "handbook.pdf" in body and "Page 4 says so" in body  # file search results
    assert "cancel_run" in body and "req-123" in body and "admin" in body  # the operator action in the timeline
    assert "queued → " in body and "poll" in body
    assert "<details><summary>Show the object as last received</summary>" in body
    assert 'id="action-refresh"' in body and 'id="action-metadata"' in body
    assert 'id="action-cancel"' not in body  # a failed run cannot be cancelled


def test_mirror_rows_cannot_be_added_edited_or_deleted(admin_client):
    run = make_run(make_thread(), 1, steps=1, messages=1)
    assert admin_client.get("/admin/runs_app/run/add/").status_code == 403
    assert admin_client.get(f"/admin/runs_app/run/{run.pk}/delete/").status_code == 403
    before = Run.objects.get(pk=run.pk).status
    admin_client.post(f"/admin/runs_app/run/{run.pk}/change/", {"status": "cancelled"})
    assert Run.objects.get(pk=run.pk).status == before
    for model in ("thread", "runstep", "message", "runevent", "operatoraction"):
        assert admin_client.get(f"/admin/runs_app/{model}/add/").status_code == 403
    step, message = RunStep.objects.get(), Message.objects.get()
    for path in (f"/admin/runs_app/runstep/{step.pk}/change/", f"/admin/runs_app/message/{message.pk}/change/",
                 f"/admin/runs_app/thread/{run.thread.pk}/change/", "/admin/runs_app/runevent/",
                 "/admin/runs_app/operatoraction/", "/admin/runs_app/runstep/", "/admin/runs_app/message/",
                 "/admin/runs_app/thread/", "/admin/runs_app/connectionstate/", "/admin/runs_app/pollerlane/"):
        assert admin_client.get(path).status_code == 200, path


def test_step_and_message_pages_link_to_their_run(admin_client):
    run = make_run(make_thread(), 1, steps=1, messages=1)
    run_url = reverse("admin:runs_app_run_change", args=[run.pk])
    assert run_url in admin_client.get(f"/admin/runs_app/runstep/{RunStep.objects.get().pk}/change/").content.decode()
    message_page = admin_client.get(f"/admin/runs_app/message/{Message.objects.get().pk}/change/").content.decode()
    assert run_url in message_page and "&lt;img src=x" in message_page


def test_deleting_a_thread_is_local_and_confirmed(admin_client, mirror_settings, emulator):
    thread = make_thread()
    make_run(thread, 1, steps=1, messages=1, events=1)
    delete_url = f"/admin/runs_app/thread/{thread.pk}/delete/"
    confirm = admin_client.get(delete_url)
    assert confirm.status_code == 200 and "Are you sure" in confirm.content.decode()
    assert Thread.objects.exists()
    admin_client.post(delete_url, {"post": "yes"})
    assert not Thread.objects.exists() and not Run.objects.exists()
    assert emulator.state.threads == {}  # nothing was sent to the service


def test_a_viewer_sees_no_action_buttons(client, viewer):
    client.force_login(viewer)
    run = make_run(make_thread(), 1, "requires_action")
    body = client.get(reverse("admin:runs_app_run_change", args=[run.pk])).content.decode()
    for button in ("action-refresh", "action-metadata", "action-cancel", "action-tool-outputs"):
        assert f'id="{button}"' not in body
    changelist = client.get(CHANGELIST).content.decode()
    assert "cancel_runs" not in changelist and "refresh_runs" not in changelist
    assert "Import a thread" not in client.get("/admin/runs_app/thread/").content.decode()


# --- query counts ------------------------------------------------------------------------------------------

def count_queries(client, url):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries)


def test_changelist_queries_do_not_grow_with_runs(admin_client):
    threads = [make_thread(i) for i in range(5)]
    for i in range(5):
        make_run(threads[i % 5], i, ["completed", "failed", "requires_action"][i % 3])
    few = count_queries(admin_client, CHANGELIST)
    for i in range(5, 50):
        make_run(threads[i % 5], i, ["completed", "failed", "requires_action"][i % 3])
    assert Run.objects.count() == 50
    assert count_queries(admin_client, CHANGELIST) == few
    assert count_queries(admin_client, CHANGELIST + "?status__exact=failed") <= few + 1


def test_change_page_queries_do_not_grow_with_steps(admin_client):
    thread = make_thread()
    small = make_run(thread, 1, steps=2, messages=2, events=2)
    big = make_run(thread, 2, steps=20, messages=20, events=20)
    assert count_queries(admin_client, reverse("admin:runs_app_run_change", args=[small.pk])) == \
        count_queries(admin_client, reverse("admin:runs_app_run_change", args=[big.pk]))


def test_other_changelists_do_not_grow(admin_client):
    thread = make_thread()
    run = make_run(thread, 1, steps=2, messages=2, events=2)
    urls = ["/admin/runs_app/runstep/", "/admin/runs_app/message/", "/admin/runs_app/runevent/",
            "/admin/runs_app/operatoraction/", "/admin/runs_app/thread/"]
    before = [count_queries(admin_client, u) for u in urls]
    for i in range(2, 12):
        make_run(make_thread(i), i, steps=2, messages=2, events=2)
    OperatorAction.objects.bulk_create([OperatorAction(action="refresh_run", connection="default",
                                                       target=run.remote_id, run=run) for _ in range(10)])
    assert [count_queries(admin_client, u) for u in urls] == before


def test_bulk_actions_refuse_oversized_selections(admin_client, mirror_settings, emulator, monkeypatch):
    from runs_app.admin.runs import RunAdmin

    monkeypatch.setattr(RunAdmin, "MAX_BULK", 3)
    thread = make_thread()
    runs = [make_run(thread, i, "in_progress") for i in range(4)]
    for action in ("cancel_runs", "refresh_runs"):
        response = admin_client.post(CHANGELIST, {"action": action, "select_across": "1", "index": "0",
                                                  "_selected_action": [r.pk for r in runs], "confirm": "yes"},
                                     follow=True)
        shown = [str(m) for m in response.context["messages"]]
        assert any("Select at most 3 runs" in m and "nothing was sent" in m for m in shown), shown
    assert not OperatorAction.objects.exists()
    assert set(Run.objects.values_list("status", flat=True)) == {"in_progress"}


def test_export_and_import_need_their_permissions(client, django_user_model):
    user = staff_user(django_user_model, "nobody", permissions=())
    client.force_login(user)
    assert client.get(reverse("admin:runs_app_run_export")).status_code == 403
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="runs_app",
                                                        codename__in=[*VIEW_PERMISSIONS, "add_thread"]))
    assert client.get(reverse("admin:runs_app_run_export")).status_code == 200
    assert "Import a thread" in client.get("/admin/runs_app/thread/").content.decode()
    assert client.get(reverse("admin:runs_app_thread_import")).status_code == 200


def test_run_page_shows_the_conversation_before_the_run(admin_client):
    thread = make_thread()
    t0 = timezone.now().replace(microsecond=0) - dt.timedelta(minutes=10)

    def message(remote_id, role, text, at, run=None, position=None):
        return Message.objects.create(
            thread=thread, remote_id=remote_id, role=role, created_at=t0 + dt.timedelta(seconds=at), run=run,
            run_remote_id=run.remote_id if run else "", **({"position": position} if position is not None else {}),
            content=[{"type": "text", "text": {"value": text, "annotations": []}}])

    earlier = make_run(thread, 1, created_at=t0)
    run = make_run(thread, 2, created_at=t0 + dt.timedelta(seconds=2))
    later = make_run(thread, 3, created_at=t0 + dt.timedelta(seconds=9))
    message("msg_a", "user", "first question", 0, position=0)
    message("msg_b", "assistant", "first answer", 1, run=earlier, position=1)
    message("msg_c", "user", f"the prompt {XSS}", 2, position=2)  # the same second as the run
    message("msg_d", "assistant", "its own answer", 3, run=run, position=3)
    message("msg_e", "user", "asked after", 9, position=4)
    message("msg_f", "assistant", "a later answer", 9, run=later, position=5)
    body = admin_client.get(reverse("admin:runs_app_run_change", args=[run.pk])).content.decode()
    block = body[body.index("The conversation before this run"):body.index("the whole conversation")]
    assert XSS not in block and "the prompt &lt;img src=x onerror=alert(1)&gt;" in block
    assert block.index("first question") < block.index("first answer") < block.index("the prompt")
    for text in ("its own answer", "asked after", "a later answer"):
        assert text not in block
