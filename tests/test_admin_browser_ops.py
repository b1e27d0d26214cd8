"""An operator at work in a real Chromium against the live stack: the site, a q cluster polling, the emulator."""

import time
from pathlib import Path

import pytest

from runs_app import services
from runs_app.models import Run
from tests.client_helpers import wait_for
from tests.factories import password_for, superuser

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-results"


@pytest.fixture
def page(browser_page):
    return browser_page


def reload_until(page, selector, text, *, timeout=60.0):
    """Reload the page until ``selector`` shows ``text`` (the poller updates the mirror in the background)."""
    from playwright.sync_api import expect

    deadline = time.monotonic() + timeout
    while True:
        page.reload()
        try:
            expect(page.locator(selector).first).to_contain_text(text, timeout=1000)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def log_in(page, live_server):
    page.goto(f"{live_server.url}/admin/login/?next=/admin/runs_app/run/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", password_for("ops"))
    page.click("input[type=submit]")
    page.wait_for_selector("#runs-overview")
    page.click("#toggle-nav-sidebar")  # more room for the list's columns


def test_operator_answers_a_tool_call_cancels_a_run_and_edits_metadata(live_server, q_cluster, assistant,
                                                                       django_user_model, page):
    ARTIFACTS.mkdir(exist_ok=True)
    q_cluster()
    superuser(django_user_model, "ops")
    waiting = services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "get_weather for Oslo please"}]}, metadata={"ticket": "OPS-1"})
    slow = services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "take your time [slow:120]"}]})
    # The q cluster's poller brings the mirror up to date.
    wait_for(lambda: Run.objects.get(pk=waiting.pk).status == "requires_action", timeout=60)
    wait_for(lambda: Run.objects.get(pk=slow.pk).status == "in_progress", timeout=60)

    log_in(page, live_server)
    page.click("#changelist-filter a[href*='status__exact=requires_action']")
    page.wait_for_selector(f"#result_list a:text('{waiting.remote_id}')")
    assert slow.remote_id not in page.inner_text("#result_list")
    page.goto(f"{live_server.url}/admin/runs_app/run/")
    page.wait_for_selector("#result_list")
    page.screenshot(path=str(ARTIFACTS / "admin-run-changelist.png"), full_page=True)
    page.goto(f"{live_server.url}/admin/runs_app/run/?status__exact=requires_action")

    # Open the waiting run and answer its call.
    page.click(f"#result_list a:text('{waiting.remote_id}')")
    page.wait_for_selector(".field-status_badge .runs-badge")
    assert "requires_action" in page.inner_text(".field-status_badge")
    assert "get_weather" in page.inner_text(".field-pending_calls")
    page.click("#action-tool-outputs")
    call_id = Run.objects.get(pk=waiting.pk).pending_tool_calls[0]["id"]
    assert f"get_weather ({call_id})" in page.inner_text("#tool-outputs-form")
    page.fill(f"textarea[name='output__{call_id}']", "sunny in Oslo")
    page.click("#submit-tool-outputs")
    page.wait_for_selector(".messagelist .success")
    assert "Tool outputs sent" in page.inner_text(".messagelist")
    reload_until(page, ".field-status_badge", "completed")
    reload_until(page, ".field-message_text", "sunny in Oslo")
    page.screenshot(path=str(ARTIFACTS / "admin-run-change.png"), full_page=True)

    # Cancel the run that is still working.
    page.goto(f"{live_server.url}/admin/runs_app/run/{slow.pk}/change/")
    page.click("#action-cancel")
    assert slow.remote_id in page.inner_text("#cancellable")
    page.click("#confirm-cancel")
    page.wait_for_selector(".messagelist .success")
    assert "Cancel requested for 1 run(s)" in page.inner_text(".messagelist")
    reload_until(page, ".field-status_badge", "cancelled")

    # Metadata: a 65-character key is refused on its field, and nothing is sent.
    page.goto(f"{live_server.url}/admin/runs_app/run/{waiting.pk}/change/")
    page.click("#action-metadata")
    assert page.input_value("input[name='metadata-0-key']") in ("ticket", "runs_app_request_id")
    first_blank = len(Run.objects.get(pk=waiting.pk).metadata)  # the rows after the existing keys are blank
    page.fill(f"input[name='metadata-{first_blank}-key']", "k" * 65)
    page.fill(f"input[name='metadata-{first_blank}-value']", "v")
    page.click("#save-metadata")
    page.wait_for_selector(".errorlist")
    assert "Keys are limited to 64 characters; this one has 65." in page.inner_text(".metadata-row .errorlist")
    page.screenshot(path=str(ARTIFACTS / "admin-run-metadata-error.png"), full_page=True)
    assert "k" * 65 not in Run.objects.get(pk=waiting.pk).metadata


def test_model_output_is_shown_as_text_never_run(live_server, mirror_settings, assistant, remote,
                                                 django_user_model, page):
    superuser(django_user_model, "ops")
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "show me some markup [html]"}]})
    wait_for(lambda: remote.retrieve_run(run.thread.remote_id, run.remote_id)["status"] == "completed")
    run = services.run_refresh(run=run)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    log_in(page, live_server)
    page.goto(f"{live_server.url}/admin/runs_app/run/{run.pk}/change/")
    text = page.inner_text(".field-message_text")
    assert "<img src=x onerror=alert(1)>" in text and "<script>alert(1)</script>" in text
    assert page.locator(".field-message_text img, .field-message_text script").count() == 0
    assert dialogs == []
