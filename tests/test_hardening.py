"""The independent probe of the running demo, kept as tests: CSRF through remembered Basic credentials, deep JSON
on every write door, read permissions on every API read, and the smaller points (metadata keys, lone surrogates,
orphan threads, JSON 403 from the live endpoints, the Content-Security-Policy, no-store, feeds that notice a gone
client and a cap of feeds per user)."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
import time

import pytest
import requests
from django.test import Client
from django.urls import resolve
from django.views.generic import RedirectView
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.authentication import BasicAuthentication, SessionAuthentication, TokenAuthentication
from rest_framework.authtoken.models import Token

from runs_app import services
from runs_app.api.views import RunsAPIView
from runs_app.models import OperatorAction, Run, RunStatus, Thread
from runs_app.web.bodies import MAX_JSON_DEPTH, check_json_shape
from runs_app.web.clients import feed_slots
from tests.client_helpers import wait_for
from tests.factories import VIEW_PERMISSIONS, password_for, staff_user, start_run, superuser
from tests.test_security import project_urls

pytestmark = pytest.mark.django_db

DEEP = b'{"metadata": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"


def nested(levels: int) -> dict:
    """A JSON schema ``levels`` objects deep (each level is two JSON levels: the object and its properties)."""
    value: dict = {"type": "string"}
    for _ in range(levels):
        value = {"type": "object", "properties": {"x": value}}
    return value


def nested_text(levels: int) -> str:
    """The same as JSON text, built without recursion (json.dumps cannot write what the probe sent)."""
    return '{"type": "object", "properties": {"x": ' * levels + '{"type": "string"}' + "}}" * levels


def mirrored_run(status=RunStatus.REQUIRES_ACTION, name="1") -> Run:
    thread = Thread.objects.create(remote_id=f"thread_probe{name}")
    return Run.objects.create(remote_id=f"run_probe{name}", thread=thread, status=status, assistant_id="asst_x",
                              required_action={"type": "submit_tool_outputs", "submit_tool_outputs": {
                                  "tool_calls": [{"id": "call_1", "type": "function",
                                                  "function": {"name": "f", "arguments": "{}"}}]}})


# --- 1. CSRF through remembered Basic credentials ----------------------------------------------------------------

class _AttackerPage(http.server.BaseHTTPRequestHandler):
    html = b""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.html)

    def log_message(self, *args):
        pass


@pytest.mark.browser
@pytest.mark.parametrize("site", ["basic-first", "demo"])
def test_a_cross_origin_form_post_with_remembered_basic_credentials_is_refused(
        site, browser_page, live_server, q_cluster, django_user_model, assistant, remote, monkeypatch):
    """The probe's attack: the operator once answered the browser's Basic prompt for the API; a page on another
    origin auto-submits a form that POSTs the cancel. On a site listing Basic first, the browser sends the
    remembered password and the CSRF check refuses the write; on the demo, no Basic challenge is ever made."""
    if site == "basic-first":
        monkeypatch.setattr(RunsAPIView, "authentication_classes",
                            [BasicAuthentication, SessionAuthentication, TokenAuthentication])
    operator = staff_user(django_user_model, "victim")
    run = start_run(assistant, "call get_weather [slow:30]")
    target = f"{live_server.url}/api/runs/{run.remote_id}/cancel/"
    _AttackerPage.html = (f'<form id="f" method="POST" action="{target}"><input name="x" value="1"></form>'
                          '<script>document.getElementById("f").submit()</script>').encode()
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AttackerPage)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    # The browser answers a Basic challenge with the operator's password, as after typing it into the prompt once.
    context = browser_page.context.browser.new_context(http_credentials={
        "username": operator.username, "password": password_for("victim"), "origin": live_server.url})
    try:
        page = context.new_page()
        read = page.goto(f"{live_server.url}/api/runs/{run.remote_id}/")
        with page.expect_response(target) as answered:
            page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        response = answered.value
        if site == "basic-first":
            assert read.status == 200  # the browser holds the password and uses it
            # 403 csrf_failed, not 401: the POST came authenticated (the check runs after authentication and the
            # permission check), and only the CSRF check stopped it.
            assert response.status == 403
            assert "csrf_failed" in response.text()  # (the browsable API's page, for a browser's navigation)
        else:
            assert read.status == 401 and read.headers["www-authenticate"].startswith("Token")
            assert response.status == 401
    finally:
        context.close()
        attacker.shutdown()
    assert remote.retrieve_run(run.thread.remote_id, run.remote_id)["status"] not in ("cancelling", "cancelled")
    assert not OperatorAction.objects.filter(action="cancel_run").exists()
    services.run_cancel(run=run)


def test_writes_with_a_password_or_session_need_csrf_and_token_writes_do_not(django_user_model, mirror_settings,
                                                                               assistant):
    operator = staff_user(django_user_model, "writer")
    client = Client(enforce_csrf_checks=True)
    basic = "Basic " + base64.b64encode(f"writer:{password_for('writer')}".encode()).decode()
    refused = client.post("/api/threads/", {}, content_type="application/json", HTTP_AUTHORIZATION=basic)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    assert client.get("/api/threads/", HTTP_AUTHORIZATION=basic).status_code == 200  # reads need no CSRF token
    token = Token.objects.create(user=operator).key
    created = client.post("/api/threads/", {}, content_type="application/json", HTTP_AUTHORIZATION=f"Token {token}")
    assert created.status_code == 201, created.content
    # With the session and the CSRF token, as the page's script sends it, the write passes.
    client.force_login(operator)
    client.get("/admin/")  # sets the csrftoken cookie
    with_token = client.post("/api/threads/", {}, content_type="application/json",
                             HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)
    assert with_token.status_code == 201, with_token.content


def test_the_demo_challenges_with_the_token_scheme_not_basic():
    response = Client().get("/api/runs/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Token")


# --- 2. Deep JSON --------------------------------------------------------------------------------------------------

def _write_doors(run: Run) -> list[tuple[str, str]]:
    t, r = run.thread.remote_id, run.remote_id
    return [("patch", f"/api/runs/{r}/"), ("post", "/api/threads/"), ("post", "/api/threads/runs/"),
            ("post", "/api/threads/import/"), ("post", f"/api/threads/{t}/messages/"),
            ("post", f"/api/threads/{t}/runs/"), ("post", f"/api/runs/{r}/submit_tool_outputs/"),
            ("post", f"/threads/{t}/live/runs/"), ("post", f"/runs/{r}/live/tool-outputs/")]


@pytest.mark.parametrize("body", [
    pytest.param(DEEP, id="10000-deep"),
    pytest.param(('{"assistant_id": "asst_x", "tools": [{"type": "function", "function": {"name": "f", '
                  f'"parameters": {nested_text(250)}}}}}]}}').encode(), id="tool-parameters-500-deep"),
])
def test_deep_json_on_every_write_door_is_a_400_within_100_ms(django_user_model, mirror_settings, body):
    client = Client()
    client.force_login(superuser(django_user_model))
    run = mirrored_run()
    for method, url in _write_doors(run):
        started = time.perf_counter()
        response = getattr(client, method)(url, body, content_type="application/json")
        elapsed = time.perf_counter() - started
        assert response.status_code == 400, f"{method} {url}: {response.status_code} {response.content[:200]}"
        error = response.json()["error"]
        assert error["param"] == "body" and "nested deeper" in error["message"], (url, error)
        assert elapsed < 0.1, f"{method} {url} took {elapsed * 1000:.0f} ms"
    assert not OperatorAction.objects.exists()


def test_a_tool_schema_within_the_depth_limit_is_not_refused_by_the_guard():
    check_json_shape(json.dumps({"tools": [{"function": {"parameters": nested(25)}}]}).encode())
    with pytest.raises(Exception, match="nested deeper than 64"):
        check_json_shape(json.dumps(nested(40)).encode())


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=st.sampled_from('ab[]{}"\\, :')),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.text(alphabet=st.sampled_from('k[]{}"\\'), max_size=4), children, max_size=3),
    max_leaves=40)


@hypothesis_settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.integers(min_value=1, max_value=8))
def test_the_guard_measures_depth_as_the_document_has_it(value, limit):
    """Brackets inside strings (escaped quotes included) never count; the guard refuses exactly what is deeper."""
    raw = json.dumps(value).encode()
    deeper = _depth(value) > limit
    try:
        check_json_shape(raw, max_depth=limit)
        refused = False
    except Exception:
        refused = True
    assert refused == deeper


def test_the_guard_refuses_a_body_over_the_size_limit():
    with pytest.raises(Exception, match="the limit is"):
        check_json_shape(b" " * 11, max_bytes=10)
    assert MAX_JSON_DEPTH == 64


# --- 3. Reads need the view permissions ---------------------------------------------------------------------------

def _answers_get(url: str) -> bool:
    view = resolve(url).func
    cls = getattr(view, "cls", None) or getattr(view, "view_class", None)
    return cls is None or (hasattr(cls, "get") and not issubclass(cls, RedirectView))


READS = [url for url in project_urls() if url.startswith("/api/") and _answers_get(url)] + ["/metrics",
                                                                                          "/connections/"]


def test_staff_without_view_permissions_get_403_from_every_api_read(django_user_model, mirror_settings):
    mirrored_run(name="_id_1")
    bare = Client()
    bare.force_login(staff_user(django_user_model, "bare", permissions=()))
    viewer = Client()
    viewer.force_login(staff_user(django_user_model, "looker", permissions=VIEW_PERMISSIONS))
    assert len(READS) > 12
    for url in READS:
        assert bare.get(url).status_code == 403, url
        # The same reads with the view permissions are answered: the 403 is about the permission.
        assert viewer.get(url).status_code in (200, 404), (url, viewer.get(url).status_code)


def test_the_api_names_the_missing_view_permission(django_user_model):
    client = Client()
    client.force_login(staff_user(django_user_model, "partial", permissions=("view_run",)))
    assert client.get("/api/runs/").status_code == 200
    response = client.get("/api/threads/")
    assert response.status_code == 403 and "runs_app.view_thread" in response.json()["error"]["message"]


# --- 4. The smaller points ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    pytest.param('{"metadata": {"a\\u0000b": "v"}}', id="nul-in-key"),
    pytest.param('{"metadata": {"\\ud800": "v"}}', id="lone-surrogate-in-key"),
    pytest.param('{"metadata": {"k": "\\udfff"}}', id="lone-surrogate-in-value"),
])
def test_metadata_keys_are_checked_like_values(api, raw):
    run = mirrored_run()
    response = api.patch(f"/api/runs/{run.remote_id}/", raw, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"].startswith("metadata")  # metadata, or metadata.<key> for a value
    assert not OperatorAction.objects.exists()


def test_the_emulator_refuses_a_lone_surrogate_with_400_and_keeps_serving_the_thread(emulator, remote):
    thread = remote.create_thread()
    url = f"{emulator.azure_endpoint}/openai/threads/{thread['id']}/messages?api-version=2024-08-01-preview"
    body = b'{"role": "user", "content": "hi", "metadata": {"\\ud800": "v"}}'
    answer = requests.post(url, data=body, headers={"api-key": emulator.api_key,
                                                     "Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"]["message"]
    assert remote.retrieve_thread(thread["id"])["id"] == thread["id"]
    assert remote.list_messages(thread["id"])["data"] == []
    assert thread["id"] in [t["id"] for t in remote.list_threads(limit=100)["data"]]


def test_a_refused_create_thread_and_run_leaves_no_thread_on_the_service(mirror_settings, remote, api):
    before = {t["id"] for t in remote.list_threads(limit=100)["data"]}
    response = api.post("/api/threads/runs/", {"assistant_id": "asst_missing", "thread": {
        "messages": [{"role": "user", "content": "hello"}]}}, format="json")
    assert response.status_code == 404, response.content
    with pytest.raises(Exception, match="asst_missing"):
        services.thread_and_run_create(assistant_id="asst_missing")
    assert {t["id"] for t in remote.list_threads(limit=100)["data"]} == before
    assert not Thread.objects.exists()


def test_live_endpoints_answer_a_csrf_failure_in_json(django_user_model, mirror_settings):
    run = mirrored_run()
    client = Client(enforce_csrf_checks=True)
    client.force_login(superuser(django_user_model))
    for url in (f"/threads/{run.thread.remote_id}/live/runs/", f"/runs/{run.remote_id}/live/tool-outputs/",
                f"/runs/{run.remote_id}/live/cancel/"):
        response = client.post(url, {"content": "x"})
        assert response.status_code == 403 and response["Content-Type"] == "application/json", url
        error = response.json()["error"]
        assert error["code"] == "csrf_failed" and "CSRF" in error["message"], url


def test_every_page_sends_a_content_security_policy_without_inline_script(django_user_model, mirror_settings):
    mirrored_run(name="_id_1")
    client = Client()
    client.force_login(superuser(django_user_model))
    pages = project_urls() + ["/admin/", "/admin/runs_app/run/", "/healthz", "/admin/login/"]
    for url in pages:
        policy = client.get(url)["Content-Security-Policy"]
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
        assert "'unsafe-inline'" not in directives["script-src"] and "'unsafe-eval'" not in directives["script-src"]
        assert directives["default-src"] == "'self'" and directives["object-src"] == "'none'", url


def test_live_pages_and_feeds_are_never_stored(django_user_model, mirror_settings):
    run = mirrored_run(status=RunStatus.COMPLETED)
    client = Client()
    client.force_login(superuser(django_user_model))
    for url in (f"/runs/{run.remote_id}/live/", f"/threads/{run.thread.remote_id}/live/",
                f"/runs/{run.remote_id}/events/"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert "no-store" in response["Cache-Control"], (url, response["Cache-Control"])
        if response.streaming:
            response.close()


# --- feeds: a gone client, a cap per user ---------------------------------------------------------------------------

def _open_feed(live_server, session: str, run: Run) -> tuple[socket.socket, bytes]:
    host, port = live_server.url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"GET /runs/{run.remote_id}/events/ HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
                 f"Cookie: sessionid={session}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    return sock, head


@pytest.fixture
def feed_user(django_user_model, live_server, mirror_settings):
    user = superuser(django_user_model, "watcher")
    client = Client()
    client.force_login(user)
    return user, client.cookies["sessionid"].value


def test_a_feed_lets_go_within_a_heartbeat_of_its_client_leaving(live_server, feed_user, settings):
    user, session = feed_user
    settings.RUNS_APP = {**settings.RUNS_APP, "LIVE_HEARTBEAT": 2.0}
    run = mirrored_run(status=RunStatus.IN_PROGRESS)
    sock, head = _open_feed(live_server, session, run)
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
    wait_for(lambda: feed_slots.held(user.pk) == 1, timeout=5)
    sock.close()
    left = time.monotonic()
    wait_for(lambda: feed_slots.held(user.pk) == 0, timeout=10)
    assert time.monotonic() - left < 2.0  # one heartbeat


def test_open_feeds_per_user_are_capped_with_a_clear_429(live_server, feed_user, settings):
    user, session = feed_user
    settings.RUNS_APP = {**settings.RUNS_APP, "LIVE_MAX_FEEDS_PER_USER": 2}
    run = mirrored_run(status=RunStatus.IN_PROGRESS)
    first, _ = _open_feed(live_server, session, run)
    second, _ = _open_feed(live_server, session, run)
    try:
        refused = requests.get(f"{live_server.url}/runs/{run.remote_id}/events/", cookies={"sessionid": session},
                               timeout=10)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "too_many_feeds" and "LIVE_MAX_FEEDS_PER_USER" in error["message"]
        assert refused.headers["Retry-After"]
        first.close()
        wait_for(lambda: feed_slots.held(user.pk) == 1, timeout=10)
        third, head = _open_feed(live_server, session, run)
        assert head.startswith(b"HTTP/1.1 200")
        third.close()
    finally:
        first.close()
        second.close()
    wait_for(lambda: feed_slots.held(user.pk) == 0, timeout=10)


def test_scripts_write_with_a_token_over_http(live_server, django_user_model, mirror_settings, assistant):
    """What the README tells a script to do: a token, no CSRF token, over real HTTP."""
    operator = staff_user(django_user_model, "script")
    token = Token.objects.create(user=operator).key
    answer = requests.post(f"{live_server.url}/api/threads/runs/", json={
        "assistant_id": assistant["id"], "thread": {"messages": [{"role": "user", "content": "hello"}]}},
        headers={"Authorization": f"Token {token}"}, timeout=30)
    assert answer.status_code == 201, answer.text


# --- the Content-Security-Policy in a real browser ------------------------------------------------------------------

RECORD_VIOLATIONS = """document.addEventListener('securitypolicyviolation', e =>
    (window.__violations = window.__violations || []).push(e.violatedDirective + ' ' + e.blockedURI));"""


@pytest.mark.browser
def test_the_admin_live_pages_and_api_docs_work_under_the_policy(browser_page, live_server, django_user_model,
                                                                 mirror_settings):
    superuser(django_user_model, "ops")
    run = mirrored_run(status=RunStatus.COMPLETED)
    page = browser_page
    page.set_default_timeout(30_000)
    console, elsewhere = [], []
    page.on("console", lambda m: console.append(m.text))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.on("request", lambda r: None if r.url.startswith((live_server.url, "data:", "blob:"))
            else elsewhere.append(r.url))
    page.add_init_script(RECORD_VIOLATIONS)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", password_for("ops"))
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    checks = [
        ("/admin/", "#content-main"),
        ("/admin/runs_app/run/", "#result_list"),
        (f"/admin/runs_app/run/{run.pk}/change/", "#content-main"),
        (f"/admin/runs_app/thread/{run.thread.pk}/change/", "#content-main"),
        (f"/runs/{run.remote_id}/live/", '#run-status[data-status="completed"]'),
        (f"/threads/{run.thread.remote_id}/live/", "#start-run-button"),
        ("/connections/", "#content-main"),
        ("/api/docs/", ".swagger-ui .info .title"),  # rendered by Swagger UI's script: the script ran
    ]
    for path, ready in checks:
        response = page.goto(f"{live_server.url}{path}")
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        page.wait_for_selector(ready)
        assert page.evaluate("window.__violations || []") == [], path
    violations = [text for text in console if "Content Security Policy" in text or "Refused to" in text]
    assert violations == [] and not [t for t in console if t.startswith("pageerror")], console
    assert elsewhere == []  # nothing from another origin: the pages work offline
