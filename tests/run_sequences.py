"""Real run payload sequences, recorded from the emulator's streams (every thread.run.* event in order)."""

from runs_app.assistants import AssistantsClient
from tests.client_helpers import connection_settings

FUNCTION_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

SHAPES = {
    "completed": "tell me something",
    "failed": "this breaks [fail:server_error]",
    "incomplete": "stop early [incomplete]",
    "requires_action": "get_weather for Oslo",
}


def record_sequences(emulator) -> dict[str, list[dict]]:
    """{shape: [run payload, ...]} including 'tool_round_trip' (requires_action → outputs → completed)."""
    client = AssistantsClient("rec", settings=connection_settings("openai", emulator))
    assistant = client._request("POST", "/assistants", json={"model": "gpt-4o", "tools": [FUNCTION_TOOL]})
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
    sequences["tool_round_trip"] = sequences["requires_action"] + after
    return sequences
