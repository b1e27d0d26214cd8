"""The security pass, each point a test: access, CSRF, secrets, escaping, the emulator's control endpoint, data
safety. (CI also greps the logs of the whole test run for the configured secrets: .ci/run.)"""

import csv
import io
import logging
import re

import pytest
import requests
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from assistants_emulator import serve_in_thread
from assistants_emulator.pytest_plugin import TEST_API_KEY
from runs_app import services
from runs_app.assistants import AssistantsClient, AssistantsError
from runs_app.mirror import upsert
from runs_app.mirror.ordering import Observation
from runs_app.models import OperatorAction, Run, Source, Thread
from tests.factories import non_staff_user, superuser

pytestmark = pytest.mark.django_db

# healthz: load balancers call it, it shows statuses only (tested below); api-redoc: a redirect to the docs.
PUBLIC = {"healthz", "api-redoc"}
HOSTILE = "<img src=x onerror=alert(1)><script>alert(2)</script>"


def project_urls():
    """Every URL of runs_app's pages, its API and its admin, with sample ids in place of parameters."""
    out = []

    def walk(patterns, prefix=""):
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns, prefix + str(p.pattern))
            elif isinstance(p, URLPattern):
                route = prefix + str(p.pattern)
                if p.name in PUBLIC or route.startswith(("^", "admin/r/", "admin/login", "admin/logout",
                                                           "admin/password", "admin/jsi18n")):
                    continue
                if not (route.startswith("admin/runs_app") or route.startswith("api/")
                        or p.callback.__module__.startswith("runs_app")):
                    continue
                out.append("/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: f"{m.group(1)}_1", route).replace("$", ""))

    walk(get_resolver().url_patterns)
    return sorted(set(out))


def test_the_sweep_covers_every_kind_of_url():
    urls = project_urls()
    for expected in ["/threads/thread_id_1/live/", "/runs/run_id_1/events/", "/runs/run_id_1/live/cancel/",
                     "/api/runs/", "/api/schema/", "/api/docs/", "/connections/", "/metrics",
                     "/admin/runs_app/run/", "/admin/runs_app/run/object_id_1/cancel/"]:
        assert expected in urls, expected
    assert len(urls) > 40


@pytest.mark.parametrize("who", ["anonymous", "non-staff"])
def test_every_page_and_endpoint_refuses_anonymous_and_non_staff_users(who, django_user_model, mirror_settings):
    client = Client()
    if who == "non-staff":
        client.force_login(non_staff_user(django_user_model, "clerk"))
    Thread.objects.create(remote_id="thread_id_1")
    for url in project_urls():
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            refused = response.status_code in (401, 403, 405) or (
                response.status_code == 302 and "/login/" in response["Location"])
            assert refused, f"{method.upper()} {url} -> {response.status_code}"
    assert not OperatorAction.objects.exists()


def test_every_state_changing_view_needs_csrf(django_user_model, mirror_settings, assistant):
    admin = superuser(django_user_model, "boss")
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={
        "messages": [{"role": "user", "content": "call get_weather [slow:30]"}]})
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    posts = [
        f"/threads/{run.thread.remote_id}/live/runs/", f"/runs/{run.remote_id}/live/tool-outputs/",
        f"/runs/{run.remote_id}/live/cancel/",
        reverse("admin:runs_app_run_cancel", args=[run.pk]), reverse("admin:runs_app_run_metadata", args=[run.pk]),
        reverse("admin:runs_app_run_tool_outputs", args=[run.pk]), reverse("admin:runs_app_run_refresh", args=[run.pk]),
        reverse("admin:runs_app_thread_import"), reverse("admin:runs_app_thread_start_run", args=[run.thread.pk]),
        reverse("admin:runs_app_thread_delete", args=[run.thread.pk]),
        "/api/threads/", f"/api/runs/{run.remote_id}/cancel/",  # the API with the session: CSRF too
    ]
    before = OperatorAction.objects.count()
    for url in posts:
        response = client.post(url, {"assistant_id": assistant["id"], "content": "x", "post": "yes"})
        assert response.status_code == 403, f"{url} -> {response.status_code}"
    assert OperatorAction.objects.count() == before and Thread.objects.filter(pk=run.thread.pk).exists()
    services.run_cancel(run=run)


def test_no_key_in_responses_pages_logs_or_exceptions(django_user_model, emulator, settings, caplog, assistant):
    """Failing and succeeding calls with the key configured: the key shows up nowhere."""
    caplog.set_level(logging.DEBUG)
    admin = superuser(django_user_model, "boss")
    client = Client()
    client.force_login(admin)
    seen = []
    settings.RUNS_APP = {"CONNECTIONS": {"default": {"KIND": "azure_openai", "ENDPOINT": emulator.azure_endpoint,
                                                     "API_KEY": TEST_API_KEY}}}
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={
        "messages": [{"role": "user", "content": "hi"}]})
    for url in ["/connections/", "/admin/runs_app/run/", f"/admin/runs_app/run/{run.pk}/change/",
                f"/api/runs/{run.remote_id}/", f"/runs/{run.remote_id}/live/", "/metrics", "/healthz",
                "/admin/runs_app/operatoraction/"]:
        seen.append(client.get(url).content.decode())
    # The service refusing a wrong key, and a connection that cannot be reached.
    wrong = "sk-wrong-key-cnry7-0d9e8f7a"
    for endpoint, key in [(emulator.azure_endpoint, wrong), ("http://127.0.0.1:9", TEST_API_KEY)]:
        settings.RUNS_APP = {"CONNECTIONS": {"default": {"KIND": "azure_openai", "ENDPOINT": endpoint,
                                                         "API_KEY": key}}, "MAX_RETRIES": 0}
        with pytest.raises(AssistantsError) as info:
            services.thread_create()
        seen += [str(info.value), repr(info.value), str(info.value.__dict__)]
        response = client.post("/api/threads/", {}, content_type="application/json")
        assert response.status_code == 502
        seen.append(response.content.decode())
        seen.append(client.get("/healthz").content.decode())
        seen.append(repr(AssistantsClient("default")))
    seen.append(caplog.text)
    seen.append(str(list(OperatorAction.objects.values())))
    for text in seen:
        assert TEST_API_KEY not in text and wrong not in text


def test_hostile_text_is_escaped_in_admin_live_page_and_csv(django_user_model, mirror_settings, assistant):
    """Model output, metadata values, tool arguments and error messages carrying HTML are shown as text;
    CSV cells that a spreadsheet would evaluate are neutralised."""
    admin = superuser(django_user_model, "boss")
    client = Client()
    client.force_login(admin)
    thread = services.thread_create()
    seen = Observation.now(Source.POLL)
    base = {"object": "thread.run", "thread_id": thread.remote_id, "assistant_id": assistant["id"],
            "created_at": 1795650000, "model": "gpt-4o", "instructions": HOSTILE, "tools": []}
    waiting = upsert.apply_run({**base, "id": "run_hostile1", "status": "requires_action",
                              "metadata": {"note": HOSTILE, "formula": "=HYPERLINK(\"http://x\")"},
                              "required_action": {"type": "submit_tool_outputs", "submit_tool_outputs": {
                                  "tool_calls": [{"id": "call_1", "type": "function", "function": {
                                      "name": "get_weather", "arguments": '{"city": "' + HOSTILE.replace('"', "'")
                                                                           + '"}'}}]}}},
                             connection="default", seen=seen).row
    failed = upsert.apply_run({**base, "id": "run_hostile2", "status": "failed", "metadata": {},
                             "last_error": {"code": "server_error", "message": HOSTILE}},
                            connection="default", seen=seen).row
    pages = [f"/admin/runs_app/run/{waiting.pk}/change/", f"/admin/runs_app/run/{failed.pk}/change/",
             "/admin/runs_app/run/", f"/admin/runs_app/run/{waiting.pk}/tool-outputs/",
             f"/runs/{waiting.remote_id}/live/", f"/threads/{thread.remote_id}/live/"]
    for url in pages:
        body = client.get(url).content.decode()
        assert "<img src=x onerror" not in body and "<script>alert(2)" not in body, url
    failed_page = client.get(f"/admin/runs_app/run/{failed.pk}/change/").content.decode()
    assert "&lt;img src=x onerror=alert(1)&gt;" in failed_page
    export = b"".join(client.get(reverse("admin:runs_app_run_export")).streaming_content).decode()
    cells = [cell for row in csv.reader(io.StringIO(export)) for cell in row]
    assert cells and not any(cell.startswith(("=", "+", "-", "@")) for cell in cells)
    assert any(cell.startswith("'") and "HYPERLINK" in cell or '"=HYPERLINK' in cell for cell in cells)
    # The live feed sends the text as JSON data; live.js writes it with textContent (browser test).
    assert Run.objects.filter(remote_id__in=["run_hostile1", "run_hostile2"]).count() == 2


def test_the_emulator_control_endpoint_is_off_unless_asked_for():
    url, handle = serve_in_thread(api_key="k-control-cnry7-1")
    try:
        for path in ("/_emulator/health", "/_emulator/events", "/_emulator/faults", "/_emulator/reset"):
            assert requests.get(url + path, timeout=10).status_code == 404
        assert requests.post(url + "/_emulator/reset", timeout=10).status_code == 404
    finally:
        handle.stop()
    url, handle = serve_in_thread(api_key="k-control-cnry7-1", control=True)
    try:
        assert requests.get(url + "/_emulator/health", timeout=10).status_code == 200
    finally:
        handle.stop()


def test_deleting_a_thread_in_the_admin_asks_first_and_never_deletes_remotely(django_user_model, mirror_settings,
                                                                              assistant, remote):
    admin = superuser(django_user_model, "boss")
    client = Client()
    client.force_login(admin)
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={
        "messages": [{"role": "user", "content": "hi"}]})
    thread = run.thread
    url = reverse("admin:runs_app_thread_delete", args=[thread.pk])
    confirm = client.get(url)
    assert confirm.status_code == 200 and b"Are you sure" in confirm.content
    assert b"not deleted on the service" in confirm.content
    assert Thread.objects.filter(pk=thread.pk).exists()  # asking deletes nothing
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert not Thread.objects.filter(pk=thread.pk).exists() and not Run.objects.filter(pk=run.pk).exists()
    assert remote.retrieve_thread(thread.remote_id)["id"] == thread.remote_id  # still on the service
