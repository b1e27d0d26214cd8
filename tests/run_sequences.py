"""Run payload sequences: every ``thread.run.*`` event of a run's stream, in order, as the emulator sent them.

Frozen under ``fixtures/run_sequences/<shape>.json`` so the tests that replay them (tests/test_sync.py) read the
same payloads on every run, without a live emulator. Re-record them after a deliberate change to the emulator's run
lifecycle (``fixtures/SOURCES.md``):

    .venv/bin/python -m tests.run_sequences

``tests/test_sync.py::test_the_frozen_sequences_still_match_what_the_emulator_sends`` records them afresh and
fails when the frozen copies no longer match the emulator in shape.
"""

from __future__ import annotations

import json
from pathlib import Path

FROZEN = Path(__file__).resolve().parent.parent / "fixtures" / "run_sequences"

# The user's message that makes the emulator's scripted model end a run in each shape (assistants_emulator/README.md).
SHAPES = {
    "completed": "tell me something",
    "failed": "this breaks [fail:server_error]",
    "incomplete": "stop early [incomplete]",
    "requires_action": "get_weather for Oslo",
}
# requires_action → tool outputs → queued → in_progress → completed, in one sequence.
ROUND_TRIP = "tool_round_trip"
ALL_SHAPES = (*SHAPES, ROUND_TRIP)


def record_sequences(emulator) -> dict[str, list[dict]]:
    """{shape: [run payload, ...]} streamed from ``emulator`` now, ``tool_round_trip`` included."""
    # Imported here: `python -m tests.run_sequences` sets Django up first.
    from runs_app.assistants import AssistantsClient
    from tests.client_helpers import connection_settings
    from tests.factories import WEATHER_TOOL

    client = AssistantsClient("rec", settings=connection_settings("openai", emulator))
    assistant = client.create_assistant(model="gpt-4o", tools=[WEATHER_TOOL])
    sequences = {}
    for shape, text in SHAPES.items():
        stream = client.create_thread_and_run_stream(assistant_id=assistant["id"],
                                                     thread={"messages": [{"role": "user", "content": text}]})
        sequences[shape] = [e.data for e in stream if e.name.startswith("thread.run.") and
                            not e.name.startswith("thread.run.step")]
    waiting = sequences["requires_action"][-1]
    calls = waiting["required_action"]["submit_tool_outputs"]["tool_calls"]
    outputs = [{"tool_call_id": c["id"], "output": "sunny"} for c in calls]
    after = [e.data for e in client.submit_tool_outputs_stream(waiting["thread_id"], waiting["id"],
                                                                tool_outputs=outputs)
             if e.name.startswith("thread.run.") and not e.name.startswith("thread.run.step")]
    sequences[ROUND_TRIP] = sequences["requires_action"] + after
    return sequences


def load_sequences() -> dict[str, list[dict]]:
    """The frozen sequences, by shape."""
    return {shape: json.loads((FROZEN / f"{shape}.json").read_text()) for shape in ALL_SHAPES}


def main() -> None:
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from assistants_emulator import serve_in_thread

    # A fresh emulator with a fixed seed: the same request order gives the same ids on every recording.
    _, emulator = serve_in_thread(api_key="sk-record-cnry7-0000", speed=50, seed=0)
    with emulator:
        sequences = record_sequences(emulator)
    FROZEN.mkdir(parents=True, exist_ok=True)
    for shape, payloads in sequences.items():
        (FROZEN / f"{shape}.json").write_text(json.dumps(payloads, indent=2, ensure_ascii=False) + "\n")
        print(f"{FROZEN / shape}.json: {[p['status'] for p in payloads]}")


if __name__ == "__main__":
    main()
