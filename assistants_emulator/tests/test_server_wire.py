"""Raw-HTTP tests of the emulator's wire formats: auth, routing, errors, pagination, SSE framing, faults."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import requests

import assistants_emulator as emulator_pkg
from assistants_emulator.tests.test_server_lifecycle import KEY, OPENAI_HEADERS, WEATHER, Api, sse_events

AZ = "api-version=2024-08-01-preview"
AZURE_401 = {
    "error": {
        "code": "401",
        "message": (
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
            "for an active subscription and use a correct regional API endpoint for your resource."
        ),
    }
}
NOT_FOUND = {"error": {"code": "404", "message": "Resource not found"}}


@pytest.fixture
def api(emulator):
    return Api(emulator.url)


# ------------------------------------------------------------------------------------------ auth & routing
def test_azure_accepts_api_key_or_bearer_and_rejects_wrong_key(emulator):
    url = f"{emulator.url}/openai/assistants?{AZ}"
    assert requests.get(url, headers={"api-key": KEY}).status_code == 200
    assert requests.get(url, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    for headers in ({"api-key": "wrong"}, {}):
        r = requests.get(url, headers=headers)
        assert r.status_code == 401 and r.json() == AZURE_401
    r = requests.get(url, headers={"api-key": KEY})
    assert r.headers["apim-request-id"] and r.headers["x-request-id"] and r.headers["x-ms-region"]
    assert int(r.headers["x-ratelimit-remaining-requests"]) <= int(r.headers["x-ratelimit-limit-requests"])


def test_azure_unknown_or_missing_api_version_and_deployment_path_are_404(emulator):
    h = {"api-key": KEY}
    for path in (
        "/openai/assistants?api-version=2023-01-01",
        "/openai/assistants",
        f"/openai/deployments/gpt-4o/threads?{AZ}",
    ):
        r = requests.get(emulator.url + path, headers=h)
        assert r.status_code == 404 and r.json() == NOT_FOUND, path


def test_openai_auth_masks_key_and_requires_beta_header(emulator):
    url = f"{emulator.url}/v1/assistants"
    bad = "sk-not-the-right-key-0123456789"
    r = requests.get(url, headers={"Authorization": f"Bearer {bad}", "OpenAI-Beta": "assistants=v2"})
    err = r.json()["error"]
    assert r.status_code == 401 and err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
    assert bad not in err["message"] and err["message"].startswith("Incorrect API key provided: sk-not-t***")
    r = requests.get(url, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_beta"
    assert r.json()["error"]["message"] == (
        "You must provide the 'OpenAI-Beta' header to access the Assistants API. "
        "Please try again by setting the header 'OpenAI-Beta: assistants=v2'."
    )


def test_foundry_takes_a_bearer_token_on_every_api_version_and_refuses_an_api_key(emulator):
    base = emulator.foundry_endpoint("demo")
    ok = requests.post(f"{base}/threads?api-version=2025-05-01", json={}, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and ok.json()["object"] == "thread"
    for v in ("2025-05-15-preview", "v1"):
        assert (
            requests.get(f"{base}/assistants?api-version={v}", headers={"Authorization": f"Bearer {KEY}"}).status_code
            == 200
        )
    r = requests.get(f"{base}/assistants?api-version=2025-05-01", headers={"api-key": KEY})
    assert r.status_code == 401 and r.json()["error"]["code"] == "401"


def test_any_credential_accepted_without_api_key():
    url, handle = emulator_pkg.serve_in_thread()
    try:
        assert requests.get(f"{url}/openai/assistants?{AZ}", headers={"api-key": "anything"}).status_code == 200
        assert requests.get(f"{url}/openai/assistants?{AZ}").status_code == 401
    finally:
        handle.stop()


def test_control_endpoint_off_by_default():
    url, handle = emulator_pkg.serve_in_thread(api_key=KEY)
    try:
        for path in ("/_emulator/health", "/_emulator/events", "/_emulator/faults"):
            assert requests.get(url + path).status_code == 404
        assert requests.post(url + "/_emulator/reset").status_code == 404
    finally:
        handle.stop()


# ------------------------------------------------------------------------------------------ errors
def test_not_found_and_validation_errors(api):
    err = api.get("/threads/thread_nope", expect=404)["error"]
    assert err == {
        "message": "No thread found with id 'thread_nope'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    t = api.thread()
    assert api.get(f"/threads/{t['id']}/runs/run_x", expect=404)["error"]["message"] == "No run found with id 'run_x'."
    assert (
        api.post(f"/threads/{t['id']}/runs", {"assistant_id": "asst_x"}, expect=404)["error"]["message"]
        == "No assistant found with id 'asst_x'."
    )
    a = api.assistant()
    cases = [
        ({"assistant_id": a["id"], "bogus": 1}, "Unrecognized request argument supplied: bogus", None),
        (
            {"assistant_id": a["id"], "temperature": 3},
            "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 instead.",
            "temperature",
        ),
        ({"assistant_id": a["id"], "top_p": -1}, None, "top_p"),
        ({"assistant_id": a["id"], "max_completion_tokens": 0}, None, "max_completion_tokens"),
        ({"assistant_id": a["id"], "truncation_strategy": {"type": "newest"}}, None, "truncation_strategy.type"),
        ({"assistant_id": a["id"], "tool_choice": "sometimes"}, None, "tool_choice"),
        ({"assistant_id": a["id"], "response_format": {"type": "xml"}}, None, "response_format.type"),
        ({}, "Missing required parameter: 'assistant_id'.", "assistant_id"),
    ]
    for body, message, param in cases:
        err = api.post(f"/threads/{t['id']}/runs", body, expect=400)["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == param, (body, err)
        if message:
            assert err["message"] == message


def test_metadata_beyond_16_keys_64_or_512_chars_is_a_400_in_openais_words(api):
    err = api.post("/threads", {"metadata": {f"k{i}": "v" for i in range(17)}}, expect=400)["error"]
    assert err == {
        "message": "Invalid 'metadata': too many properties. Expected an object with at most 16 "
        "properties, but got an object with 17 properties instead.",
        "type": "invalid_request_error",
        "param": "metadata",
        "code": "object_above_max_properties",
    }
    assert api.post("/threads", {"metadata": {"k" * 65: "v"}}, expect=400)["error"]["code"] == "string_above_max_length"
    assert api.post("/threads", {"metadata": {"k": "v" * 513}}, expect=400)["error"]["param"] == "metadata.k"
    assert api.post("/threads", {"metadata": {f"k{i}": "v" * 512 for i in range(16)}})["object"] == "thread"


def test_an_unparseable_json_body_is_a_400_saying_so(emulator):
    r = requests.post(f"{emulator.url}/v1/threads", data=b"{not json", headers=OPENAI_HEADERS)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("We could not parse the JSON body")


# ------------------------------------------------------------------------------------------ pagination
def test_pagination_limits_order_and_cursors(api):
    t = api.thread("m0")
    ids = [next(iter(api.get(f"/threads/{t['id']}/messages")["data"]))["id"]]
    ids += [api.post(f"/threads/{t['id']}/messages", {"role": "user", "content": f"m{i}"})["id"] for i in range(1, 7)]
    page = api.get(f"/threads/{t['id']}/messages", params={"limit": 3})
    assert [m["id"] for m in page["data"]] == ids[::-1][:3] and page["has_more"] is True
    assert page["first_id"] == ids[6] and page["last_id"] == ids[4]
    seen, after = [], None
    while True:
        page = api.get(
            f"/threads/{t['id']}/messages", params={"limit": 3, "order": "asc", **({"after": after} if after else {})}
        )
        seen += [m["id"] for m in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == ids
    back = api.get(f"/threads/{t['id']}/messages", params={"order": "asc", "before": ids[5], "limit": 2})
    assert [m["id"] for m in back["data"]] == ids[3:5] and back["has_more"] is True
    for bad in ({"limit": 0}, {"limit": 101}, {"order": "up"}):
        err = api.get(f"/threads/{t['id']}/messages", params=bad, expect=400)["error"]
        assert err["param"] in ("limit", "order")
    assert api.get(f"/threads/{t['id']}/messages", params={"order": "up"}, expect=400)["error"]["message"].startswith(
        "Invalid value for 'order':"
    )
    empty = api.get(f"/threads/{t['id']}/runs")
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


# ------------------------------------------------------------------------------------------ streaming
def test_stream_framing_and_event_order(emulator):
    api = Api(emulator.url)
    a = api.assistant([WEATHER])
    r = api.s.post(
        api.base + "/threads/runs",
        json={
            "assistant_id": a["id"],
            "stream": True,
            "thread": {"messages": [{"role": "user", "content": "hi there"}]},
        },
        stream=True,
    )
    assert r.headers["Content-Type"].startswith("text/event-stream") and r.headers["Transfer-Encoding"] == "chunked"
    raw = r.content.decode()
    assert raw.endswith("event: done\ndata: [DONE]\n\n") and "\nid:" not in raw and "retry:" not in raw
    names = [n for n, _ in sse_events(raw)]
    deltas = names.count("thread.message.delta")
    assert deltas >= 5
    assert names == [
        "thread.created",
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.message.created",
        "thread.message.in_progress",
    ] + ["thread.message.delta"] * deltas + [
        "thread.message.completed",
        "thread.run.step.completed",
        "thread.run.completed",
        "done",
    ]
    events = sse_events(raw)
    text = "".join(d["delta"]["content"][0]["text"]["value"] for n, d in events if n == "thread.message.delta")
    completed = next(d for n, d in events if n == "thread.message.completed")
    assert completed["content"][0]["text"]["value"] == text and completed["status"] == "completed"


def test_stream_ends_at_requires_action_and_submit_stream_continues(emulator):
    api = Api(emulator.url)
    a = api.assistant([WEATHER])
    t = api.thread("get_weather please")
    raw = api.s.post(f"{api.base}/threads/{t['id']}/runs", json={"assistant_id": a["id"], "stream": True}).text
    events = sse_events(raw)
    assert [n for n, _ in events][-2:] == ["thread.run.requires_action", "done"]
    first_delta = next(d for n, d in events if n == "thread.run.step.delta")
    call = first_delta["delta"]["step_details"]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": "", "output": None} and call["id"].startswith(
        "call_"
    )
    later = [d["delta"]["step_details"]["tool_calls"][0] for n, d in events if n == "thread.run.step.delta"][1:]
    assert all(set(c) == {"index", "type", "function"} and set(c["function"]) == {"arguments"} for c in later)
    run = events[-2][1]
    raw2 = api.s.post(
        f"{api.base}/threads/{t['id']}/runs/{run['id']}/submit_tool_outputs",
        json={"tool_outputs": [{"tool_call_id": call["id"], "output": "sunny"}], "stream": True},
    ).text
    names = [n for n, _ in sse_events(raw2)]
    assert names[:3] == ["thread.run.step.completed", "thread.run.queued", "thread.run.in_progress"]
    assert names[-2:] == ["thread.run.completed", "done"]


# ------------------------------------------------------------------------------------------ faults
def _statuses(url: str, n: int) -> list:
    s = requests.Session()
    out = []
    for _ in range(n):
        try:
            out.append(s.get(f"{url}/openai/assistants?{AZ}", headers={"api-key": KEY}).status_code)
        except requests.ConnectionError:
            out.append("reset")
            s = requests.Session()
    return out


def test_faults_are_deterministic_with_a_seed():
    runs = []
    for _ in range(2):
        url, handle = emulator_pkg.serve_in_thread(api_key=KEY, faults="429=0.2,5xx=0.1,reset=0.05", seed=7)
        try:
            runs.append(_statuses(url, 60))
        finally:
            handle.stop()
    assert runs[0] == runs[1]
    assert {429, 200}.issubset(set(runs[0])) and any(s in (500, 503) for s in runs[0])


def test_fault_429_shape_and_control_endpoint(emulator):
    emulator.set_faults({"429": 1.0})
    r = requests.get(f"{emulator.url}/openai/assistants?{AZ}", headers={"api-key": KEY})
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and int(r.headers["retry-after-ms"]) >= 1
    assert r.json() == {"error": {"code": "429", "message": "Rate limit is exceeded. Try again in 1 seconds."}}
    # A 429'd POST did not happen.
    r = requests.post(f"{emulator.url}/openai/threads?{AZ}", json={}, headers={"api-key": KEY})
    assert r.status_code == 429 and emulator.state.threads == {}
    put = requests.put(f"{emulator.url}/_emulator/faults", json={"spec": "cut=1@2"})
    assert put.status_code == 200 and put.json()["cut"] == {"p": 1.0, "after": 2} and put.json()["429"] == 0.0
    assert requests.get(f"{emulator.url}/_emulator/faults").json()["cut"]["after"] == 2
    api = Api(emulator.url)
    emulator.set_faults(None)
    a = api.assistant()
    emulator.set_faults("cut=1@2")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        _ = api.s.post(api.base + "/threads/runs", json={"assistant_id": a["id"], "stream": True}).content
    emulator.set_faults(None)
    assert requests.post(f"{emulator.url}/_emulator/reset").json() == {"status": "reset"}
    assert requests.get(f"{emulator.url}/_emulator/health").json()["status"] == "ok"


def test_cli_prints_listening_line_and_stops_on_sigterm():
    # Port 0: the system picks a free port and the line names it (no race with other tests for a port).
    proc = subprocess.Popen(
        [sys.executable, "-m", "assistants_emulator", "--port", "0", "--speed", "20"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline().strip()
        match = re.fullmatch(r"Emulator listening on http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        port = int(match.group(1))
        assert requests.get(f"http://127.0.0.1:{port}/openai/assistants?{AZ}", headers={"api-key": "x"}).ok
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_drop_fault_applies_request_then_loses_response_and_match_times_target_one_request(emulator):
    api = Api(emulator.url)
    a = api.assistant()
    t = api.thread("hi")
    emulator.set_faults({"drop": 1.0, "times": 1, "match": r"POST /threads/[^/]+/runs$"})
    assert api.get(f"/threads/{t['id']}")["id"] == t["id"]  # not matched: untouched
    with pytest.raises(requests.ConnectionError):
        api.s.post(f"{api.base}/threads/{t['id']}/runs", json={"assistant_id": a["id"]})
    runs = Api(emulator.url).get(f"/threads/{t['id']}/runs")["data"]
    assert len(runs) == 1  # ... but the run was created
    assert emulator.faults()["times"] == 1
    err = Api(emulator.url).post(f"/threads/{t['id']}/runs", {"assistant_id": a["id"]}, expect=400)
    assert "already has an active run" in err["error"]["message"]  # times=1: faults are off again


def test_azure_api_version_shapes(emulator):
    def run_for(version):
        q = f"api-version={version}"
        h = {"api-key": KEY}
        a = requests.post(f"{emulator.url}/openai/assistants?{q}", json={"model": "gpt-4o"}, headers=h).json()
        url = f"{emulator.url}/openai/threads/runs?{q}"
        return requests.post(url, json={"assistant_id": a["id"]}, headers=h).json()
    old, new = run_for("2024-05-01-preview"), run_for("2024-08-01-preview")
    assert "parallel_tool_calls" not in old and "reasoning_effort" not in old
    assert new["parallel_tool_calls"] is True and "reasoning_effort" not in new
    assert new["tool_resources"] == {} and new["expires_at"] == new["created_at"] + 600
