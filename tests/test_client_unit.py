"""Client edge cases the emulator cannot produce, with ``responses``; and every recorded SSE stream."""

import json
import re
from pathlib import Path

import pytest
import responses

from runs_app.assistants import AssistantsClient, errors
from runs_app.assistants.retries import backoff_delay, server_retry_after, should_retry

ENDPOINT = "https://contoso.openai.azure.com"
BASE = ENDPOINT + "/openai"
RUN_URL = re.compile(re.escape(BASE) + r"/threads/thread_1/runs/run_1\b.*")
RECORDINGS = Path(__file__).resolve().parent.parent / "fixtures" / "recordings"
SECRET = "unit-secret-key-0001"


def make_client(sleeps=None, **kwargs):
    conf = {"KIND": "azure_openai", "ENDPOINT": ENDPOINT, "API_VERSION": "2024-08-01-preview", "AUTH": "api_key",
            "API_KEY": SECRET}
    return AssistantsClient("unit", settings=conf, rng=lambda: 0.0,
                            sleep=(sleeps.append if sleeps is not None else lambda s: None), **kwargs)


# --- retry policy -----------------------------------------------------------------------------------

def test_backoff_is_capped_exponential_with_jitter():
    assert [backoff_delay(n, lambda: 0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff_delay(0, lambda: 0.999) == pytest.approx(0.375, abs=0.001)


def test_retry_after_ms_wins_over_retry_after():
    assert server_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5


def test_retry_after_http_date():
    assert server_retry_after({"retry-after": "Wed, 25 Nov 2026 12:00:30 GMT"},
                              now=lambda: 1795608000.0) == pytest.approx(30.0)


def test_unparseable_retry_after_is_ignored():
    assert server_retry_after({"retry-after": "soon"}) is None
    assert server_retry_after({"retry-after-ms": "-5"}) is None


@pytest.mark.parametrize(("status", "headers", "expected"), [
    (429, {}, True), (408, {}, True), (409, {}, True), (500, {}, True), (503, {}, True),
    (400, {}, False), (404, {}, False), (400, {"x-should-retry": "true"}, True), (503, {"x-should-retry": "false"},
                                                                                  False),
])
def test_429_408_409_and_5xx_are_retried_unless_x_should_retry_says_otherwise(status, headers, expected):
    assert should_retry(status, headers) is expected


# --- responses-based edge cases ---------------------------------------------------------------------

@responses.activate
def test_retry_after_beyond_the_cap_raises_rate_limited_with_the_delay_instead_of_sleeping():
    body = {"error": {"code": "429", "message": "Requests ... Please retry after 86400 seconds."}}
    responses.get(RUN_URL, json=body, status=429, headers={"retry-after": "86400", "apim-request-id": "req-429"})
    sleeps = []
    with pytest.raises(errors.RateLimited) as caught:
        make_client(sleeps).retrieve_run("thread_1", "run_1")
    assert sleeps == [] and len(responses.calls) == 1
    assert caught.value.retry_after == 86400 and caught.value.code == "429"
    assert "retry after 86400 s" in str(caught.value) and "req-429" in str(caught.value)


@responses.activate
def test_retry_after_http_date_is_honoured():
    responses.get(RUN_URL, status=429, json={"error": {"code": "429", "message": "slow down"}},
                  headers={"retry-after": "Wed, 25 Nov 2026 12:00:03 GMT"})
    responses.get(RUN_URL, json={"id": "run_1", "status": "queued"})
    sleeps = []
    client = make_client(sleeps, clock=lambda: 1795608000.0)
    assert client.retrieve_run("thread_1", "run_1")["status"] == "queued"
    assert sleeps == [pytest.approx(3.0)]


@responses.activate
def test_x_should_retry_false_is_obeyed():
    responses.get(RUN_URL, status=503, json={"error": {"message": "down"}}, headers={"x-should-retry": "false"})
    with pytest.raises(errors.ServerError):
        make_client().retrieve_run("thread_1", "run_1")
    assert len(responses.calls) == 1


@responses.activate
def test_content_filter_error_keeps_the_inner_code():
    body = {"error": {"message": "The response was filtered", "type": None, "param": "prompt", "code": "content_filter",
                      "status": 400, "innererror": {"code": "ResponsibleAIPolicyViolation"}}}
    responses.post(BASE + "/threads", status=400, json=body, headers={"x-request-id": "req-cf"})
    with pytest.raises(errors.BadRequest) as caught:
        make_client().create_thread()
    assert caught.value.code == "content_filter (ResponsibleAIPolicyViolation)"
    assert caught.value.param == "prompt" and caught.value.request_id == "req-cf"


@responses.activate
def test_html_error_page_from_a_proxy_is_a_readable_error():
    responses.get(RUN_URL, status=403, body="<html><body>Forbidden by proxy</body></html>",
                  content_type="text/html")
    with pytest.raises(errors.PermissionDenied) as caught:
        make_client().retrieve_run("thread_1", "run_1")
    assert "Forbidden by proxy" in str(caught.value)


@responses.activate
def test_unknown_status_maps_to_api_status_error():
    responses.get(RUN_URL, status=418, json={"error": {"message": "teapot"}})
    with pytest.raises(errors.APIStatusError) as caught:
        make_client().retrieve_run("thread_1", "run_1")
    assert type(caught.value) is errors.APIStatusError and caught.value.status == 418


@responses.activate
def test_error_event_in_a_stream_raises_with_the_services_message():
    sse = ('event: thread.run.created\ndata: {"id":"run_1","object":"thread.run","status":"queued"}\n\n'
           'event: error\ndata: {"code":"server_error","message":"The server had an error"}\n\n')
    responses.post(BASE + "/threads/thread_1/runs", body=sse, content_type="text/event-stream")
    stream = make_client().create_run_stream("thread_1", assistant_id="asst_1")
    seen = []
    with pytest.raises(errors.StreamError) as caught:
        for event in stream:
            seen.append(event.name)
    assert seen == ["thread.run.created"]
    assert caught.value.code == "server_error" and "The server had an error" in str(caught.value)


@responses.activate
def test_stream_ending_without_done_is_interrupted():
    sse = 'event: thread.run.created\ndata: {"id":"run_1","status":"queued"}\n\nevent: thread.run.queued\ndata: {"id'
    responses.post(BASE + "/threads/thread_1/runs", body=sse, content_type="text/event-stream")
    stream = make_client().create_run_stream("thread_1", assistant_id="asst_1")
    with pytest.raises(errors.StreamInterrupted, match="cut in half") as caught:
        list(stream)
    assert stream.events_seen == 1 and caught.value.maybe_applied


@responses.activate
def test_malformed_event_data_is_a_clear_error():
    responses.post(BASE + "/threads/thread_1/runs", body="event: thread.run.created\ndata: {not json\n\n",
                   content_type="text/event-stream")
    with pytest.raises(errors.MalformedResponse, match="thread.run.created"):
        list(make_client().create_run_stream("thread_1", assistant_id="asst_1"))


def test_entra_without_azure_identity_says_which_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_azure(name, *args, **kwargs):
        if name.startswith("azure.identity"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_azure)
    conf = {"KIND": "foundry_agents", "ENDPOINT": "https://r.services.ai.azure.com/api/projects/p", "AUTH": "entra",
            "ENTRA_SCOPE": "https://ai.azure.com/.default"}
    with pytest.raises(errors.ConfigurationError, match=r"django-runs-app\[entra\]"):
        AssistantsClient("f", settings=conf)


# --- every recorded SSE stream parses into its event sequence ----------------------------------------

def recorded_streams():
    for path in sorted(RECORDINGS.rglob("*.json")):
        for index, entry in enumerate(json.loads(path.read_text())["Entries"]):
            if isinstance(entry.get("ResponseBody"), list):
                yield pytest.param("".join(entry["ResponseBody"]), id=f"{path.stem}-{index}")


@pytest.mark.parametrize("raw", list(recorded_streams()))
@responses.activate
def test_recorded_stream_parses_into_its_event_sequence(raw):
    expected = re.findall(r"^event: (.+)$", raw, flags=re.MULTILINE)
    responses.post(BASE + "/threads/thread_1/runs", body=raw, content_type="text/event-stream")
    events = list(make_client().create_run_stream("thread_1", assistant_id="asst_1"))
    assert [e.name for e in events] == expected
    assert events[-1].is_done and events[-1].data is None
    assert all(isinstance(e.data, dict) and e.data.get("id") for e in events[:-1])


def test_there_are_recorded_streams():
    assert len(list(recorded_streams())) >= 4
