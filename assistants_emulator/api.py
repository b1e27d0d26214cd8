"""Endpoint handlers, independent of the HTTP layer and of the backend (Azure / Foundry / OpenAI).

Each handler runs with the store lock held and returns either ``Reply`` (a snapshot to serialise
outside the lock) or ``StreamPlan`` (where the server should start reading a run's event log).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import validation as V
from .engine import Store
from .errors import ApiError

INCLUDE_FS_CONTENT = "step_details.tool_calls[*].file_search.results[*].content"
REASONING_EFFORTS = ("minimal", "low", "medium", "high")


@dataclass
class Flavor:
    backend: str                      # "openai" | "azure" | "foundry"
    api_version: str | None = None
    drop_run: tuple = ()
    drop_assistant: tuple = ()
    legacy_tools: bool = False
    plain_usage: bool = False         # 2024-05-01-preview usage has no *_details objects
    # Foundry pushes a run's expires_at this many expire_after periods past the moment it enters
    # requires_action (protocol.md §10: "far later while requires_action"); 0 keeps created_at + expire_after.
    action_expiry_factor: float = 0.0

    @property
    def foundry(self) -> bool:
        return self.backend == "foundry"

    @classmethod
    def make(cls, backend: str, api_version: str | None) -> Flavor:
        if backend == "openai":
            return cls(backend, api_version)
        old = api_version in ("2024-02-15-preview", "2024-05-01-preview")
        # Real Azure traffic: no reasoning_effort; 2024-05-01-preview runs have no parallel_tool_calls.
        drop_run = ("reasoning_effort", "parallel_tool_calls") if old else ("reasoning_effort",)
        return cls(backend, api_version, drop_run=drop_run, drop_assistant=("reasoning_effort",), legacy_tools=old,
                   plain_usage=old, action_expiry_factor=3.0 if backend == "foundry" else 0.0)


@dataclass
class Reply:
    status: int
    payload: dict
    include_content: bool = False
    poll_hint: bool = False


@dataclass
class StreamPlan:
    rt: object
    start: int
    prefix: list = field(default_factory=list)
    include_content: bool = False


def _strip_fs_content(step: dict) -> dict:
    details = step.get("step_details") or {}
    if details.get("type") != "tool_calls":
        return step
    calls = details.get("tool_calls") or ()
    if not any(c.get("type") == "file_search" for c in calls):
        return step
    new_calls = []
    for c in calls:
        if c.get("type") == "file_search" and c["file_search"].get("results"):
            fs = dict(c["file_search"])
            fs["results"] = [{k: v for k, v in r.items() if k != "content"} for r in fs["results"]]
            c = {**c, "file_search": fs}
        new_calls.append(c)
    step = dict(step)
    step["step_details"] = {"type": "tool_calls", "tool_calls": new_calls}
    return step


MESSAGE_STREAM_ONLY = ("status", "incomplete_details", "incomplete_at", "completed_at")
STREAM_RUN_RESOURCES = {"code_interpreter": {"file_ids": []}}
ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
              "prompt_token_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}


def _plain_usage(obj: dict) -> dict:
    u = obj.get("usage")
    if u:
        obj = {**obj, "usage": {k: u[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}}
    return obj


def _foundry_run(run: dict, sse: bool) -> dict:
    """Foundry's run shape (protocol.md §10): tool_resources is always present, `{}` in JSON answers and with an
    empty code_interpreter inside stream events; a failed run reports zero usage, never null."""
    tr = run.get("tool_resources") or {}
    changes = {"tool_resources": {**STREAM_RUN_RESOURCES, **tr} if sse else tr}
    if run.get("status") == "failed":
        changes["usage"] = dict(ZERO_USAGE)
    return {**run, **changes}


def render(obj: dict, flavor: Flavor, include_content: bool = False, sse: bool = False) -> dict:
    """Shape a stored object for one backend/api-version, the include[] query, and REST vs SSE."""
    kind = obj.get("object")
    if kind == "thread.run":
        if flavor.drop_run:
            obj = {k: v for k, v in obj.items() if k not in flavor.drop_run}
        if flavor.foundry:
            obj = _foundry_run(obj, sse)
        if flavor.plain_usage:
            obj = _plain_usage(obj)
    elif kind == "thread.message":
        if not sse:
            # Real REST message bodies omit the lifecycle fields; only streamed messages carry them.
            obj = {k: v for k, v in obj.items() if k not in MESSAGE_STREAM_ONLY}
    elif kind == "thread.run.step":
        if not include_content:
            obj = _strip_fs_content(obj)
        if flavor.plain_usage:
            obj = _plain_usage(obj)
    elif kind == "assistant":
        if flavor.drop_assistant:
            obj = {k: v for k, v in obj.items() if k not in flavor.drop_assistant}
    elif kind == "list":
        return {**obj, "data": [render(o, flavor, include_content, sse) for o in obj["data"]]}
    return obj


# ---------------------------------------------------------------------------------------- helpers
def _include(query: dict) -> bool:
    values = query.get("include[]", []) + query.get("include", [])
    for v in values:
        if v != INCLUDE_FS_CONTENT:
            raise V.invalid_value("include", v, (INCLUDE_FS_CONTENT,))
    return bool(values)


def paginate(items: list, query: dict) -> dict:
    raw_limit = (query.get("limit") or ["20"])[-1]
    try:
        limit = int(raw_limit)
    except ValueError:
        raise ApiError(400, "Invalid type for 'limit': expected an integer, but got a string instead.",
                       param="limit", code="invalid_type") from None
    V.check_int(limit, "limit", 1, 100)
    order = (query.get("order") or ["desc"])[-1]
    if order not in ("asc", "desc"):
        raise ApiError(400, f"Invalid value for 'order': expected one of 'asc' or 'desc', but got '{order}' instead.",
                       param="order", code="invalid_value")
    seq = items if order == "asc" else items[::-1]
    after = (query.get("after") or [None])[-1]
    before = (query.get("before") or [None])[-1]
    if after:
        idx = next((i for i, o in enumerate(seq) if o["id"] == after), None)
        candidates = seq[idx + 1:] if idx is not None else []
        page = candidates[:limit]
    elif before:
        idx = next((i for i, o in enumerate(seq) if o["id"] == before), None)
        candidates = seq[:idx] if idx is not None else []
        page = candidates[-limit:]
    else:
        candidates = seq
        page = candidates[:limit]
    return {"object": "list", "data": [dict(o) for o in page],
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None,
            "has_more": len(candidates) > limit}


def _body(body) -> dict:
    return V.require_object(body if body is not None else {})


def _reasoning_effort(body: dict):
    value = body.get("reasoning_effort")
    if value is not None and value not in REASONING_EFFORTS:
        raise V.invalid_value("reasoning_effort", value, REASONING_EFFORTS)
    return value


def _tool_resources(store: Store, value, owner_hint: list, param: str = "tool_resources"):
    tr = V.tool_resources(value, param, new_id=store.new_id)
    if tr is None:
        return None
    owner_hint.extend(tr.pop("_file_ids", ()))
    return tr


# ---------------------------------------------------------------------------------------- assistants
ASSISTANT_FIELDS = ("model", "name", "description", "instructions", "tools", "tool_resources", "metadata",
                    "temperature", "top_p", "response_format", "reasoning_effort")


def _assistant_values(store: Store, body: dict, flavor: Flavor, files: list) -> dict:
    out = {}
    if "model" in body:
        out["model"] = V.req_string(body, "model", max_len=256)
    for key, max_len in (("name", 256), ("description", 512), ("instructions", 256000)):
        if key in body:
            out[key] = V.opt_string(body, key, max_len=max_len)
    if "tools" in body:
        out["tools"] = V.tools(body["tools"], legacy=flavor.legacy_tools)
    if "tool_resources" in body:
        out["tool_resources"] = _tool_resources(store, body["tool_resources"], files) or {}
    if "metadata" in body:
        out["metadata"] = V.metadata(body["metadata"])
    if "temperature" in body:
        out["temperature"] = V.opt_number(body, "temperature", 0, 2)
    if "top_p" in body:
        out["top_p"] = V.opt_number(body, "top_p", 0, 1)
    if "response_format" in body:
        out["response_format"] = V.response_format(body["response_format"])
    if "reasoning_effort" in body:
        out["reasoning_effort"] = _reasoning_effort(body)
    return out


def _default_tool_resources(tools: list, tr: dict) -> dict:
    tr = dict(tr or {})
    if any(t["type"] == "code_interpreter" for t in tools) and "code_interpreter" not in tr:
        tr["code_interpreter"] = {"file_ids": []}
    return tr


def assistant_create(store: Store, flavor: Flavor, body) -> Reply:
    body = _body(body)
    V.check_unknown(body, ASSISTANT_FIELDS)
    if body.get("model") is None:
        raise V.missing("model")
    files: list = []
    vals = _assistant_values(store, body, flavor, files)
    tools = vals.get("tools", [])
    a = {"id": store.new_id("asst_"), "object": "assistant", "created_at": int(time.time()),
         "name": vals.get("name"), "description": vals.get("description"), "model": vals["model"],
         "instructions": vals.get("instructions"), "tools": tools,
         "top_p": vals.get("top_p") if vals.get("top_p") is not None else 1.0,
         "temperature": vals.get("temperature") if vals.get("temperature") is not None else 1.0,
         "reasoning_effort": vals.get("reasoning_effort"),
         "tool_resources": _default_tool_resources(tools, vals.get("tool_resources")),
         "metadata": vals.get("metadata", {}), "response_format": vals.get("response_format", "auto")}
    store.assistants[a["id"]] = a
    if files:
        store.owner_files[a["id"]] = files
    return Reply(200, dict(a))


def assistant_modify(store: Store, flavor: Flavor, aid: str, body) -> Reply:
    a = store.get_assistant(aid)
    body = _body(body)
    V.check_unknown(body, ASSISTANT_FIELDS)
    files: list = []
    vals = _assistant_values(store, body, flavor, files)
    for key in ("temperature", "top_p"):
        if key in vals and vals[key] is None:
            vals[key] = 1.0
    if "response_format" in vals and vals["response_format"] is None:
        vals["response_format"] = "auto"
    a.update(vals)
    if files:
        store.owner_files[aid] = files
    return Reply(200, dict(a))


def assistant_delete(store: Store, aid: str) -> Reply:
    store.get_assistant(aid)
    del store.assistants[aid]
    return Reply(200, {"id": aid, "object": "assistant.deleted", "deleted": True})


# ---------------------------------------------------------------------------------------- threads & messages
def _thread_messages(store: Store, tid: str, messages, prefix: str) -> None:
    if messages is None:
        return
    if not isinstance(messages, list):
        raise V.invalid_type(prefix.rstrip("."), "an array", messages)
    validated = [V.message_request(m, f"{prefix}[{i}].") for i, m in enumerate(messages)]
    for m in validated:
        store.add_message(tid, m)


def _new_thread(store: Store, body: dict, prefix: str = "", default_resources=None) -> dict:
    V.check_unknown(body, ("messages", "tool_resources", "metadata"))
    md = V.metadata(body.get("metadata"), f"{prefix}metadata")
    files: list = []
    tr = _tool_resources(store, body.get("tool_resources"), files, f"{prefix}tool_resources")
    messages = body.get("messages")
    if messages is not None:
        if not isinstance(messages, list):
            raise V.invalid_type(f"{prefix}messages", "an array", messages)
        validated = [V.message_request(m, f"{prefix}messages[{i}].") for i, m in enumerate(messages)]
    else:
        validated = []
    t = store.add_thread(metadata=md, tool_resources=tr if tr is not None else dict(default_resources or {}))
    if files:
        store.owner_files[t["id"]] = files
    for m in validated:
        store.add_message(t["id"], m)
    return t


def thread_create(store: Store, body) -> Reply:
    return Reply(200, dict(_new_thread(store, _body(body))))


def thread_modify(store: Store, tid: str, body) -> Reply:
    t = store.get_thread(tid)
    body = _body(body)
    V.check_unknown(body, ("tool_resources", "metadata"))
    if "metadata" in body:
        t["metadata"] = V.metadata(body["metadata"])
    if "tool_resources" in body:
        files: list = []
        t["tool_resources"] = _tool_resources(store, body["tool_resources"], files) or {}
        if files:
            store.owner_files[tid] = files
    return Reply(200, dict(t))


def thread_delete(store: Store, tid: str) -> Reply:
    store.delete_thread(tid)
    return Reply(200, {"id": tid, "object": "thread.deleted", "deleted": True})


def message_create(store: Store, tid: str, body) -> Reply:
    store.get_thread(tid)
    m = V.message_request(_body(body))
    active = store.active_run(tid)
    if active is not None:
        raise ApiError(400, f"Can't add messages to {tid} while a run {active['id']} is active.")
    return Reply(200, dict(store.add_message(tid, m)))


def message_list(store: Store, tid: str, query: dict) -> Reply:
    store.get_thread(tid)
    items = [store.messages[mid] for mid in store.thread_messages[tid]]
    run_id = (query.get("run_id") or [None])[-1]
    if run_id:
        items = [m for m in items if m["run_id"] == run_id]
    return Reply(200, paginate(items, query))


def message_modify(store: Store, tid: str, mid: str, body) -> Reply:
    m = store.get_message(tid, mid)
    body = _body(body)
    V.check_unknown(body, ("metadata",))
    if "metadata" in body:
        m["metadata"] = V.metadata(body["metadata"])
    return Reply(200, dict(m))


def message_delete(store: Store, tid: str, mid: str) -> Reply:
    store.get_message(tid, mid)
    del store.messages[mid]
    store.thread_messages[tid].remove(mid)
    return Reply(200, {"id": mid, "object": "thread.message.deleted", "deleted": True})


# ---------------------------------------------------------------------------------------- runs
RUN_FIELDS = ("assistant_id", "model", "instructions", "additional_instructions", "additional_messages", "tools",
              "metadata", "temperature", "top_p", "stream", "max_prompt_tokens", "max_completion_tokens",
              "truncation_strategy", "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort")
THREAD_AND_RUN_FIELDS = ("assistant_id", "thread", "model", "instructions", "tools", "tool_resources", "metadata",
                         "temperature", "top_p", "stream", "max_prompt_tokens", "max_completion_tokens",
                         "truncation_strategy", "tool_choice", "parallel_tool_calls", "response_format",
                         "reasoning_effort")


def _raw_run_values(body: dict, flavor: Flavor) -> dict:
    """Validate every run field that doesn't need the assistant."""
    if body.get("assistant_id") is None:
        raise V.missing("assistant_id")
    V.req_string(body, "assistant_id")
    vals = {
        "model": V.opt_string(body, "model", max_len=256),
        "instructions": V.opt_string(body, "instructions", max_len=256000),
        "additional_instructions": V.opt_string(body, "additional_instructions", max_len=256000),
        "tools": V.tools(body["tools"], legacy=flavor.legacy_tools) if body.get("tools") is not None else None,
        "metadata": V.metadata(body.get("metadata")),
        "temperature": V.opt_number(body, "temperature", 0, 2),
        "top_p": V.opt_number(body, "top_p", 0, 1),
        "stream": V.opt_bool(body, "stream"),
        "max_prompt_tokens": V.opt_int(body, "max_prompt_tokens", 1),
        "max_completion_tokens": V.opt_int(body, "max_completion_tokens", 1),
        "truncation_strategy": V.truncation_strategy(body.get("truncation_strategy")),
        "parallel_tool_calls": V.opt_bool(body, "parallel_tool_calls"),
        "response_format": V.response_format(body["response_format"]) if body.get("response_format") is not None
        else None,
        "reasoning_effort": _reasoning_effort(body),
    }
    return vals


def _resolve_run_values(vals: dict, body: dict, assistant: dict) -> dict:
    tools = vals["tools"] if vals["tools"] is not None else assistant["tools"]
    instructions = vals["instructions"] if "instructions" in body and body["instructions"] is not None \
        else assistant["instructions"]
    if vals.get("additional_instructions"):
        instructions = (instructions + "\n" if instructions else "") + vals["additional_instructions"]
    return {
        "model": vals["model"] or assistant["model"],
        "instructions": instructions,
        "tools": tools,
        "metadata": vals["metadata"],
        "temperature": vals["temperature"] if vals["temperature"] is not None else assistant.get("temperature", 1.0),
        "top_p": vals["top_p"] if vals["top_p"] is not None else assistant.get("top_p", 1.0),
        "max_prompt_tokens": vals["max_prompt_tokens"],
        "max_completion_tokens": vals["max_completion_tokens"],
        "truncation_strategy": vals["truncation_strategy"],
        "tool_choice": V.tool_choice(body.get("tool_choice"), tools),
        "parallel_tool_calls": vals["parallel_tool_calls"] if vals["parallel_tool_calls"] is not None else True,
        "response_format": vals["response_format"] or assistant.get("response_format", "auto"),
        "reasoning_effort": vals["reasoning_effort"] if vals["reasoning_effort"] is not None
        else assistant.get("reasoning_effort"),
    }


def _empty_resources(stream) -> dict:
    return dict(STREAM_RUN_RESOURCES) if stream else {}


def _run_resources(flavor: Flavor, stream) -> dict:
    # Azure/OpenAI recordings: streamed runs echo an empty code_interpreter resource, non-streamed runs echo {}
    # (in every later answer too). Foundry decides per answer instead (render), so its runs store {}.
    return {} if flavor.foundry else _empty_resources(stream)


def _run_reply(store: Store, run: dict, rt, stream: bool, include: bool, prefix=None):
    if stream:
        return StreamPlan(rt=rt, start=0, prefix=prefix or [], include_content=include)
    return Reply(200, dict(run), poll_hint=True)


def run_create(store: Store, flavor: Flavor, tid: str, body, query: dict):
    thread = store.get_thread(tid)
    include = _include(query)
    body = _body(body)
    # Foundry's create-run also takes tool_resources (every Foundry SDK sends it when given); OpenAI's does not.
    V.check_unknown(body, RUN_FIELDS + ("tool_resources",) if flavor.foundry else RUN_FIELDS)
    vals = _raw_run_values(body, flavor)
    run_resources = _tool_resources(store, body.get("tool_resources"), []) if flavor.foundry else None
    extra = body.get("additional_messages")
    if extra is not None and not isinstance(extra, list):
        raise V.invalid_type("additional_messages", "an array", extra)
    extra_msgs = [V.message_request(m, f"additional_messages[{i}].") for i, m in enumerate(extra or [])]
    assistant = store.get_assistant(body["assistant_id"])
    params = _resolve_run_values(vals, body, assistant)
    active = store.active_run(tid)
    if active is not None:
        raise ApiError(400, f"Thread {tid} already has an active run {active['id']}.")
    for m in extra_msgs:
        store.add_message(tid, m)
    run = store.create_run(thread, assistant, params, include_content=include,
                           flavor_tool_resources=run_resources if run_resources is not None
                           else _run_resources(flavor, vals["stream"]),
                           action_expiry_factor=flavor.action_expiry_factor)
    return _run_reply(store, run, store.rt[run["id"]], bool(vals["stream"]), include)


def thread_and_run_create(store: Store, flavor: Flavor, body, query: dict):
    include = _include(query)
    body = _body(body)
    V.check_unknown(body, THREAD_AND_RUN_FIELDS)
    vals = _raw_run_values(body, flavor)
    tbody = body.get("thread") or {}
    if not isinstance(tbody, dict):
        raise V.invalid_type("thread", "an object", tbody)
    files: list = []
    run_resources = _tool_resources(store, body.get("tool_resources"), files)
    assistant = store.get_assistant(body["assistant_id"])
    params = _resolve_run_values(vals, body, assistant)
    thread = _new_thread(store, tbody, "thread.", default_resources=_empty_resources(vals["stream"]))
    if files:
        store.owner_files.setdefault(thread["id"], []).extend(files)
    run = store.create_run(thread, assistant, params, include_content=include,
                           flavor_tool_resources=run_resources if run_resources is not None
                           else _run_resources(flavor, vals["stream"]),
                           action_expiry_factor=flavor.action_expiry_factor)
    return _run_reply(store, run, store.rt[run["id"]], bool(vals["stream"]), include,
                      prefix=[("thread.created", dict(thread))])


def run_list(store: Store, tid: str, query: dict) -> Reply:
    store.get_thread(tid)
    return Reply(200, paginate([store.runs[r] for r in store.thread_runs[tid]], query))


def run_retrieve(store: Store, tid: str, rid: str) -> Reply:
    return Reply(200, dict(store.get_run(tid, rid)), poll_hint=True)


def run_modify(store: Store, tid: str, rid: str, body) -> Reply:
    run = store.get_run(tid, rid)
    body = _body(body)
    V.check_unknown(body, ("metadata",))
    if "metadata" in body:
        run["metadata"] = V.metadata(body["metadata"])
    return Reply(200, dict(run), poll_hint=True)


def run_cancel(store: Store, tid: str, rid: str, body) -> Reply:
    run = store.get_run(tid, rid)
    store.cancel(run)
    return Reply(200, dict(run), poll_hint=True)


def run_submit_tool_outputs(store: Store, tid: str, rid: str, body):
    run = store.get_run(tid, rid)
    body = _body(body)
    V.check_unknown(body, ("tool_outputs", "stream"))
    outputs = body.get("tool_outputs")
    if outputs is None:
        raise V.missing("tool_outputs")
    if not isinstance(outputs, list):
        raise V.invalid_type("tool_outputs", "an array", outputs)
    stream = V.opt_bool(body, "stream")
    pairs = []
    for i, o in enumerate(outputs):
        if not isinstance(o, dict):
            raise V.invalid_type(f"tool_outputs[{i}]", "an object", o)
        V.check_unknown(o, ("tool_call_id", "output"))
        call_id = V.opt_string(o, "tool_call_id", param=f"tool_outputs[{i}].tool_call_id")
        output = V.opt_string(o, "output", param=f"tool_outputs[{i}].output")
        pairs.append((call_id, output if output is not None else ""))
    if run["status"] != "requires_action":
        raise ApiError(400, f'Runs in status "{run["status"]}" do not accept tool outputs.')
    rt = store.rt[rid]
    expected = [c for c, _, _ in rt.calls]
    got = [c for c, _ in pairs]
    if sorted(expected) != sorted(got):
        raise ApiError(400, f"Expected tool outputs for call_ids {expected!r}, got {got!r}")
    start = len(rt.log)
    store.submit_tool_outputs(run, pairs)
    if stream:
        return StreamPlan(rt=rt, start=start, include_content=rt.include_content)
    return Reply(200, dict(run), poll_hint=True)


def step_list(store: Store, tid: str, rid: str, query: dict) -> Reply:
    store.get_run(tid, rid)
    include = _include(query)
    return Reply(200, paginate([store.steps[s] for s in store.run_steps[rid]], query), include_content=include)


def step_retrieve(store: Store, tid: str, rid: str, sid: str, query: dict) -> Reply:
    include = _include(query)
    return Reply(200, dict(store.get_step(tid, rid, sid)), include_content=include)


# ---------------------------------------------------------------------------------------- routing
class RouteNotFound(Exception):
    pass


def dispatch(store: Store, flavor: Flavor, method: str, parts: list, query: dict, body):
    """Route (method, path segments below the backend prefix) to a handler. Store lock must be held."""
    n = len(parts)
    if n == 0:
        raise RouteNotFound
    head = parts[0]
    if head == "assistants":
        if n == 1:
            if method == "POST":
                return assistant_create(store, flavor, body)
            if method == "GET":
                return Reply(200, paginate(list(store.assistants.values()), query))
        elif n == 2:
            aid = parts[1]
            if method == "GET":
                return Reply(200, dict(store.get_assistant(aid)))
            if method == "POST":
                return assistant_modify(store, flavor, aid, body)
            if method == "DELETE":
                return assistant_delete(store, aid)
        raise RouteNotFound
    if head != "threads":
        raise RouteNotFound
    if n == 1:
        if method == "POST":
            return thread_create(store, body)
        if method == "GET" and flavor.backend != "openai":
            # Foundry documents threads.list; Azure answers it too. api.openai.com never had it.
            return Reply(200, paginate(list(store.threads.values()), query))
        raise RouteNotFound
    tid = parts[1]
    if n == 2:
        if tid == "runs" and method == "POST":
            return thread_and_run_create(store, flavor, body, query)
        if method == "GET":
            return Reply(200, dict(store.get_thread(tid)))
        if method == "POST":
            return thread_modify(store, tid, body)
        if method == "DELETE":
            return thread_delete(store, tid)
        raise RouteNotFound
    sub = parts[2]
    if sub == "messages":
        if n == 3:
            if method == "POST":
                return message_create(store, tid, body)
            if method == "GET":
                return message_list(store, tid, query)
        elif n == 4:
            if method == "GET":
                return Reply(200, dict(store.get_message(tid, parts[3])))
            if method == "POST":
                return message_modify(store, tid, parts[3], body)
            if method == "DELETE":
                return message_delete(store, tid, parts[3])
        raise RouteNotFound
    if sub != "runs":
        raise RouteNotFound
    if n == 3:
        if method == "POST":
            return run_create(store, flavor, tid, body, query)
        if method == "GET":
            return run_list(store, tid, query)
        raise RouteNotFound
    rid = parts[3]
    if n == 4:
        if method == "GET":
            return run_retrieve(store, tid, rid)
        if method == "POST":
            return run_modify(store, tid, rid, body)
        raise RouteNotFound
    action = parts[4]
    if n == 5:
        if action == "cancel" and method == "POST":
            return run_cancel(store, tid, rid, body)
        if action == "submit_tool_outputs" and method == "POST":
            return run_submit_tool_outputs(store, tid, rid, body)
        if action == "steps" and method == "GET":
            return step_list(store, tid, rid, query)
        raise RouteNotFound
    if n == 6 and action == "steps" and method == "GET":
        return step_retrieve(store, tid, rid, parts[5], query)
    raise RouteNotFound
