"""The live pages in a real Chromium (playwright) against the live stack: Django's live server (web), a real
q cluster (the poller) and the emulator. Screenshots go to $RUNS_APP_TEST_ARTIFACTS (default
<tmp>/runs_app-test-artifacts) as test artifacts."""

import os
import tempfile
from pathlib import Path

import pytest
import requests

from runs_app import services
from runs_app.models import Run
from tests.factories import password_for, superuser

pytestmark = pytest.mark.browser

ARTIFACTS = Path(os.environ.get("RUNS_APP_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "runs_app-test-artifacts")
HTML = "<img src=x onerror=alert(1)>"
ASSISTANT_TEXT = "#messages li.role-assistant .text"


def shot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"live-{name}.png"), full_page=True)


@pytest.fixture
def stack(live_server, q_cluster, django_user_model):
    """web (live server) + q cluster + emulator, and a superuser for the page and the API."""
    q_cluster()
    superuser(django_user_model, "ops")
    return live_server


@pytest.fixture
def page(browser_page, stack):
    """A logged-in page; any JavaScript dialog (an injected alert) is recorded and fails the test."""
    dialogs = []
    browser_page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    browser_page.set_default_timeout(30_000)
    browser_page.goto(f"{stack.url}/admin/login/")
    browser_page.fill("#id_username", "ops")
    browser_page.fill("#id_password", password_for("ops"))
    browser_page.click("input[type=submit]")
    browser_page.wait_for_selector("#site-name")
    yield browser_page
    assert dialogs == [], f"a script ran: {dialogs}"


def site_api(stack, path, method="GET", **kwargs):
    """The site's REST API over real HTTP, as the superuser of the page, with a token as scripts do."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    token, _ = Token.objects.get_or_create(user=get_user_model().objects.get(username="ops"))
    response = requests.request(method, f"{stack.url}/api{path}", headers={"Authorization": f"Token {token.key}"},
                                timeout=30, **kwargs)
    response.raise_for_status()
    return response.json()


def start_run(page, stack, thread, assistant_id, text):
    page.goto(f"{stack.url}/threads/{thread.remote_id}/live/")
    page.fill("#id_assistant_id", assistant_id)
    page.fill("#id_content", text)
    page.click("#start-run-button")


def wait_status(page, status):
    page.wait_for_selector(f'#run-status[data-status="{status}"]')


def run_id_on(page):
    return page.inner_text("#run-id").strip()


def test_start_a_run_and_watch_its_text_stream_in(page, stack, assistant):
    thread = services.thread_create()
    start_run(page, stack, thread, assistant["id"], "Tell me about the sea [words:40] [slow:4]")
    # Text arrives while the run is still in progress: the page renders the stream as it comes.
    page.wait_for_function(f"""() => {{
        const t = document.querySelector('{ASSISTANT_TEXT}');
        return t && t.textContent.split(' ').length >= 3 &&
               document.querySelector('#run-status').dataset.status === 'in_progress'; }}""")
    partial = page.inner_text(ASSISTANT_TEXT)
    # Another operator watches the same run through the mirror feed and sees the text grow too.
    watcher = page.context.new_page()
    watcher.goto(f"{stack.url}/runs/{run_id_on(page)}/live/")
    watcher.wait_for_function(f"""() => {{
        const t = document.querySelector('{ASSISTANT_TEXT}');
        return t && t.textContent.length > 0 &&
               document.querySelector('#run-status').dataset.status === 'in_progress'; }}""")
    shot(page, "streaming")
    wait_status(page, "completed")
    page.wait_for_selector('.runs-live[data-live="finished"]')
    final = page.inner_text(ASSISTANT_TEXT)
    assert len(final.split()) == 40 and final.startswith(partial.strip()) and len(final) > len(partial)
    assert page.inner_text("#messages li.role-user .text") == "Tell me about the sea [words:40] [slow:4]"
    shot(page, "completed")

    run_id = run_id_on(page)
    mirrored = site_api(stack, f"/runs/{run_id}/")
    assert mirrored["status"] == "completed"
    messages = site_api(stack, f"/threads/{thread.remote_id}/messages/")["data"]
    answer = [m for m in messages if m["role"] == "assistant" and m["run_id"] == run_id]
    assert answer[0]["content"][0]["text"]["value"] == final
    wait_status(watcher, "completed")
    watcher.wait_for_function(f"() => document.querySelector('{ASSISTANT_TEXT}').textContent.length === {len(final)}")
    assert watcher.inner_text(ASSISTANT_TEXT) == final


def test_a_function_tool_run_stops_for_outputs_and_continues(page, stack, assistant, remote):
    thread = services.thread_create()
    start_run(page, stack, thread, assistant["id"], "call get_weather for Oslo")
    wait_status(page, "requires_action")
    form = page.locator("#tool-outputs")
    form.wait_for(state="visible")
    assert form.locator("legend").inner_text() == "get_weather"
    assert '"city"' in form.locator(".tool-arguments").inner_text()
    shot(page, "requires-action")
    form.locator("textarea").fill("rainy, 9 C")
    form.locator("button[type=submit]").click()
    wait_status(page, "completed")
    page.wait_for_selector('.runs-live[data-live="finished"]')
    assert form.is_hidden()
    final = page.inner_text(ASSISTANT_TEXT)
    assert final
    shot(page, "tool-run-completed")

    run_id = run_id_on(page)
    assert site_api(stack, f"/runs/{run_id}/")["status"] == "completed"
    steps = site_api(stack, f"/runs/{run_id}/steps/")["data"]
    outputs = [c["function"]["output"] for s in steps if s["type"] == "tool_calls"
               for c in s["step_details"]["tool_calls"]]
    assert outputs == ["rainy, 9 C"]
    truth = remote.list_messages(thread.remote_id, run_id=run_id)["data"]
    assert [m["content"][0]["text"]["value"] for m in truth if m["role"] == "assistant"] == [final]


def test_a_run_started_elsewhere_is_watched_to_completion(page, stack, assistant, remote):
    created = site_api(stack, "/threads/runs/", "POST", json={"assistant_id": assistant["id"], "thread": {
        "messages": [{"role": "user", "content": "slowly please [slow:3] [words:25]"}]}})
    page.goto(f"{stack.url}/runs/{created['id']}/live/")
    page.wait_for_selector('#run-status[data-status="in_progress"], #run-status[data-status="queued"]')
    shot(page, "watching")
    wait_status(page, "completed")
    page.wait_for_selector('.runs-live[data-live="finished"]')
    text = page.inner_text(ASSISTANT_TEXT)
    truth = remote.list_messages(created["thread_id"], run_id=created["id"])["data"]
    assert [m["content"][0]["text"]["value"] for m in truth if m["role"] == "assistant"] == [text]
    assert len(text.split()) == 25
    assert page.locator("#steps li[data-status=completed]").count() >= 1
    assert page.get_attribute("#admin-run-link", "href")
    shot(page, "watched-completed")


def test_model_output_with_html_is_shown_as_text(page, stack, assistant):
    thread = services.thread_create()
    start_run(page, stack, thread, assistant["id"], "answer with markup [html]")
    wait_status(page, "completed")
    page.wait_for_selector('.runs-live[data-live="finished"]')
    assert HTML in page.inner_text(ASSISTANT_TEXT)
    assert page.locator("#content img").count() == 0 and page.locator(".live-messages script").count() == 0
    run_id = run_id_on(page)
    for url, text in [(f"/threads/{thread.remote_id}/live/", "#thread-messages li.role-assistant .text"),  # rendered
                      (f"/runs/{run_id}/live/", ASSISTANT_TEXT)]:  # server-rendered, then from the feed
        page.goto(stack.url + url)
        page.wait_for_function(f"() => document.querySelector('{text}') && "
                               f"document.querySelector('{text}').textContent.includes('onerror')")
        assert HTML in page.inner_text(text)
        assert page.locator("#content img").count() == 0
    shot(page, "html-as-text")


def test_upstream_cut_mid_stream_is_reported_and_the_poller_finishes_the_run(page, stack, assistant, remote,
                                                                            emulator):
    emulator.set_faults({"cut": {"p": 1.0, "after": 6}, "times": 1, "match": r"POST /threads/[^/]+/runs$"})
    thread = services.thread_create()
    start_run(page, stack, thread, assistant["id"], "a longer answer [words:30] [slow:2]")
    page.wait_for_selector("#live-error:not([hidden])")
    assert "The stream was lost" in page.inner_text("#live-error")
    shot(page, "stream-lost")
    wait_status(page, "completed")
    page.wait_for_selector('.runs-live[data-live="finished"]')
    run_id = run_id_on(page)
    truth_run = remote.retrieve_run(thread.remote_id, run_id)
    truth_text = [m["content"][0]["text"]["value"] for m in remote.list_messages(thread.remote_id, run_id=run_id)[
        "data"] if m["role"] == "assistant"]
    run = Run.objects.get(remote_id=run_id)
    assert run.status == truth_run["status"] == "completed"
    assert [m.text for m in run.messages.filter(role="assistant")] == truth_text
    assert page.inner_text(ASSISTANT_TEXT) == truth_text[0]
    shot(page, "stream-lost-recovered")
