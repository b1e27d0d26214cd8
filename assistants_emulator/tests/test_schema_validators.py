"""The validators themselves: real traffic passes, every spec exception is earned, broken payloads fail."""

from __future__ import annotations

import copy
from urllib.parse import urlparse

import pytest

from assistants_emulator.tests import schema

RECORDINGS = schema.recording_files()


def _api_path(uri: str) -> str:
    path = urlparse(uri).path
    for prefix in ("/openai", "/v1"):
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def _recording_problems(relative: str, **kwargs) -> list[str]:
    rec = schema.load_recording(relative)
    azure = relative.startswith("Azure")
    problems = []
    for entry in rec["Entries"]:
        body = entry["ResponseBody"]
        where = f"{entry['RequestMethod']} {entry['RequestUri']}"
        if isinstance(body, list):
            for event, data in schema.decode_events(schema.parse_sse("".join(body))):
                problems += [f"{where} [{event}] {p}" for p in schema.event_errors(event, data, **kwargs)]
        elif body:
            name = schema.body_schema(
                entry["RequestMethod"], _api_path(entry["RequestUri"]), entry["StatusCode"], azure=azure
            )
            if name is None:  # /files uploads: outside the Assistants surface
                continue
            problems += [f"{where} ({name}) {p}" for p in schema.errors(name, body, **kwargs)]
    return problems


@pytest.mark.parametrize("relative", RECORDINGS)
def test_recordings_match_spec_with_exceptions(relative):
    assert _recording_problems(relative) == []


@pytest.mark.parametrize("key", [key for key, exc in schema.SPEC_EXCEPTIONS.items() if exc.seen_in_recordings], ids=str)
def test_each_recording_exception_is_needed(key):
    # Dropping the exception must make some recorded real-traffic body fail: otherwise it is not earned.
    failures = [p for rel in RECORDINGS for p in _recording_problems(rel, without=frozenset([key]))]
    assert failures, f"SPEC_EXCEPTIONS[{key!r}] is not needed by any recording"


def test_strict_spec_rejects_real_traffic():
    # The unpatched spec disagrees with the recordings: this is why SPEC_EXCEPTIONS exists.
    assert _recording_problems("openai__openai-dotnet/StreamingToolCall().json", strict_spec=True)


def _recorded_run() -> dict:
    rec = schema.load_recording("openai__openai-dotnet/FunctionToolsWork.json")
    for entry in rec["Entries"]:
        if isinstance(entry["ResponseBody"], dict) and entry["ResponseBody"].get("status") == "requires_action":
            return entry["ResponseBody"]
    raise AssertionError("no requires_action run in the recording")


def test_recorded_requires_action_run_is_valid():
    schema.assert_valid("RunObject", _recorded_run())


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda r: r.update(status="done"), id="unknown-status"),
        pytest.param(lambda r: r.pop("id"), id="missing-id"),
        pytest.param(lambda r: r.update(created_at="yesterday"), id="created_at-string"),
        pytest.param(lambda r: r.update(object="run"), id="wrong-object"),
        pytest.param(lambda r: r.update(usage={"prompt_tokens": 1}), id="usage-incomplete"),
        pytest.param(lambda r: r.update(last_error={"code": "boom", "message": "x"}), id="last_error-code"),
        pytest.param(
            lambda r: r["required_action"]["submit_tool_outputs"]["tool_calls"][0].update(type="code_interpreter"),
            id="tool-call-type",
        ),
        pytest.param(lambda r: r.update(tools=[{"type": "web_browser"}]), id="unknown-tool"),
        pytest.param(lambda r: r.update(truncation_strategy={"type": "middle"}), id="truncation-type"),
    ],
)
def test_broken_run_object_fails_validation(breakage):
    run = copy.deepcopy(_recorded_run())
    breakage(run)
    assert schema.errors("RunObject", run), "a broken run object passed validation"


def test_broken_stream_events_fail_validation():
    rec = schema.load_recording("openai__openai-dotnet/StreamingRunWorks.json")
    events = schema.decode_events(schema.parse_sse("".join(rec["Entries"][-1]["ResponseBody"])))
    delta = copy.deepcopy(next(data for event, data in events if event == "thread.message.delta"))
    run = next(data for event, data in events if event == "thread.run.completed")
    assert schema.event_errors("thread.message.delta", delta) == []
    delta["delta"]["content"][0]["index"] = "zero"
    assert schema.event_errors("thread.message.delta", delta)
    # A run object sent under a step event name, and an unknown event name under a known family.
    assert schema.event_errors("thread.run.step.completed", run)
    assert schema.event_errors("thread.run.finished", run)
    assert schema.event_errors("done", "DONE")


def test_azure_gateway_error_shape_only_passes_azure_schema():
    azure_429 = {"error": {"code": "429", "message": "Rate limit is exceeded. Try again in 2 seconds."}}
    assert schema.errors("AzureErrorResponse", azure_429) == []
    assert schema.errors("ErrorResponse", azure_429)
    assert schema.errors("AzureErrorResponse", {"error": {"code": 429, "message": "x"}})


def test_parse_sse_checks_framing():
    good = "event: thread.run.created\ndata: {}\n\nevent: done\ndata: [DONE]\n\n"
    assert schema.parse_sse(good) == [("thread.run.created", "{}"), ("done", "[DONE]")]
    for bad in (
        good[:-1],  # no blank line after the last event
        "event: thread.run.created\ndata: {}\n\n",  # no done
        "data: {}\n\nevent: done\ndata: [DONE]\n\n",  # no event: line
        "event: x\nid: 1\ndata: {}\n\nevent: done\ndata: [DONE]\n\n",  # an id: line
    ):
        with pytest.raises(AssertionError):
            schema.parse_sse(bad)


def test_an_error_events_data_is_the_unwrapped_error_object():
    assert (
        schema.event_errors("error", {"code": "server_error", "message": "boom", "param": None, "type": "server_error"})
        == []
    )
    assert schema.event_errors("error", {"error": {"code": "429", "message": "x"}}), "the spec's data is unwrapped"
