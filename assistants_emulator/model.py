"""The deterministic scripted "model": decides what a run does from its tools and the last user message.

Every decision is a pure function of the request, so the same input always gives the same run shape.
The triggers are documented in assistants_emulator/README.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_TRIGGER_RE = re.compile(r"\[(fail|slow|words|html|expire|incomplete)(?::([^\]]*))?\]", re.IGNORECASE)
_CODE_RE = re.compile(r"\b(code|calculate|calculation|compute)\b", re.IGNORECASE)
_SEARCH_RE = re.compile(r"\b(search|file|files|document|documents)\b", re.IGNORECASE)
_ARITH_RE = re.compile(r"(-?\d+(?:\.\d+)?)\s*([+\-*/x×])\s*(-?\d+(?:\.\d+)?)")
_DELTA_RE = re.compile(r"\s*\S+")

FAIL_MESSAGES = {
    "server_error": "Sorry, something went wrong.",
    "rate_limit_exceeded": "Rate limit is exceeded. Try again in 60 seconds.",
    "invalid_prompt": "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
    # Foundry's wording when the run's model has no deployment (seen in public Foundry agent logs).
    "invalid_engine_error": "Failed to resolve model info for: {model}",
}
UNDEPLOYED_PREFIX = "undeployed"


def is_undeployed(model_name) -> bool:
    """A model (deployment) name starting with "undeployed" stands for a model the project has not deployed."""
    return isinstance(model_name, str) and model_name.lower().startswith(UNDEPLOYED_PREFIX)

HTML_PAYLOAD = "Here is some markup: <img src=x onerror=alert(1)> and <script>alert(1)</script> done."

_VOCAB = (
    "the", "run", "emulator", "streams", "each", "word", "as", "a", "separate", "delta", "so", "that", "clients",
    "can", "render", "text", "while", "it", "arrives", "and", "mirrors", "can", "measure", "their", "lag",
    "against", "the", "recorded", "state", "changes",
)


@dataclass
class Triggers:
    fail: str | None = None
    slow: float = 0.0
    words: int | None = None
    html: bool = False
    expire: bool = False
    incomplete: bool = False


@dataclass
class Plan:
    """What the model wants to do next, given the run's state."""
    hosted: list = field(default_factory=list)   # ["code_interpreter", "file_search"]
    functions: list = field(default_factory=list)  # function names, in order of mention


def parse_triggers(text: str) -> Triggers:
    t = Triggers()
    for name, arg in _TRIGGER_RE.findall(text or ""):
        name = name.lower()
        if name == "fail":
            code = (arg or "server_error").strip().lower()
            t.fail = code if code in FAIL_MESSAGES else "server_error"
        elif name == "slow":
            try:
                t.slow = max(0.0, float(arg or 5))
            except ValueError:
                t.slow = 5.0
        elif name == "words":
            try:
                t.words = max(1, min(100000, int(arg or 50)))
            except ValueError:
                t.words = 50
        elif name == "html":
            t.html = True
        elif name == "expire":
            t.expire = True
        elif name == "incomplete":
            t.incomplete = True
    return t


def strip_triggers(text: str) -> str:
    return " ".join(_TRIGGER_RE.sub(" ", text or "").split())


def count_tokens(text: str) -> int:
    """Token stand-in: one token per whitespace-separated word."""
    return len((text or "").split())


def message_text(msg: dict) -> str:
    return " ".join(part["text"]["value"] for part in msg.get("content", ()) if part.get("type") == "text")


def function_names(tools: list) -> list:
    return [t["function"]["name"] for t in tools if t.get("type") == "function"]


def plan_hosted(tools: list, tool_choice, text: str) -> list:
    """Hosted tool steps (code_interpreter / file_search) to run before answering."""
    if tool_choice == "none":
        return []
    types = {t.get("type") for t in tools}
    forced = tool_choice.get("type") if isinstance(tool_choice, dict) else None
    out = []
    if "code_interpreter" in types and (forced == "code_interpreter" or (forced is None and _CODE_RE.search(text))):
        out.append("code_interpreter")
    if "file_search" in types and (forced == "file_search" or (forced is None and _SEARCH_RE.search(text))):
        out.append("file_search")
    if not out and tool_choice == "required" and not function_names(tools):
        if "code_interpreter" in types:
            out.append("code_interpreter")
        elif "file_search" in types:
            out.append("file_search")
    return out


def plan_functions(tools: list, tool_choice, text: str, parallel: bool, already_called: set, first_turn: bool) -> list:
    """Function calls the model makes now: forced choice, else function names mentioned in the message."""
    names = function_names(tools)
    if not names or tool_choice == "none":
        return []
    if isinstance(tool_choice, dict):
        if tool_choice.get("type") != "function":
            return []
        forced = tool_choice["function"]["name"]
        return [forced] if first_turn and forced not in already_called else []
    lowered = (text or "").lower()
    mentioned = sorted((lowered.find(n.lower()), n) for n in names if n.lower() in lowered)
    wanted = [n for _, n in mentioned if n not in already_called]
    if not wanted and tool_choice == "required" and first_turn:
        wanted = [names[0]]
    if not parallel:
        wanted = wanted[:1]
    return wanted


def sample_value(schema, name: str = "", depth: int = 0):
    """A deterministic value that satisfies a (simple) JSON schema."""
    if not isinstance(schema, dict) or depth > 4:
        return "sample"
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [s for s in schema[key] if isinstance(s, dict) and s.get("type") != "null"] or schema[key]
            return sample_value(options[0], name, depth + 1)
    stype = schema.get("type")
    if isinstance(stype, list):
        stype = next((t for t in stype if t != "null"), "string")
    if stype == "object" or (stype is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {k: sample_value(v, k, depth + 1) for k, v in props.items()}
    if stype == "array":
        return [sample_value(schema.get("items") or {"type": "string"}, name, depth + 1)]
    if stype == "integer":
        return int(schema.get("minimum", 1))
    if stype == "number":
        return float(schema.get("minimum", 1.0))
    if stype == "boolean":
        return True
    if stype == "null":
        return None
    lname = name.lower()
    if "location" in lname or "city" in lname:
        return "Seattle, WA"
    if "day" in lname:
        return "Thursday"
    if "unit" in lname:
        return "celsius"
    if "date" in lname:
        return "2024-06-24"
    return f"sample {name}".strip() if name else "sample"


def function_arguments(tools: list, name: str) -> str:
    for t in tools:
        if t.get("type") == "function" and t["function"]["name"] == name:
            params = t["function"].get("parameters") or {"type": "object", "properties": {}}
            value = sample_value(params)
            if not isinstance(value, dict):
                value = {}
            return json.dumps(value, separators=(",", ":"))
    return "{}"


def split_arguments(arguments: str) -> list:
    """Argument fragments for step deltas (the service streams them in a few chunks)."""
    if len(arguments) <= 4:
        return [arguments]
    third = max(1, len(arguments) // 3)
    return [arguments[:third], arguments[third:2 * third], arguments[2 * third:]]


def code_for(text: str) -> tuple[str, str]:
    """(code input, logs output) for a code_interpreter step."""
    m = _ARITH_RE.search(text or "")
    if m:
        a, op, b = float(m.group(1)), m.group(2), float(m.group(3))
        op = {"x": "*", "×": "*"}.get(op, op)
        try:
            result = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else float("nan")}[op]
        except Exception:  # pragma: no cover - defensive
            result = 0
        fa = m.group(1)
        fb = m.group(3)
        res = int(result) if float(result).is_integer() else round(result, 6)
        return f"result = {fa} {op} {fb}\nprint(result)", f"{res}\n"
    return "result = sum(range(1, 11))\nprint(result)", "55\n"


def split_text(text: str) -> list:
    """Delta pieces: the first word, then each following word with its leading space (as recorded)."""
    return _DELTA_RE.findall(text) or [text]


def answer(*, user_text: str, triggers: Triggers, tool_outputs: list, code_logs: str | None,
           searched: bool, response_format) -> list:
    """Answer as a list of (piece, is_citation) tuples, pieces concatenated give the full text."""
    if triggers.words:
        words = [_VOCAB[i % len(_VOCAB)] for i in range(triggers.words)]
        words[0] = words[0].capitalize()
        body = " ".join(words) + "."
    elif tool_outputs:
        quoted = "; ".join(f"{name} returned \"{out}\"" for name, out in tool_outputs)
        body = f"Based on the tool results: {quoted}."
    elif code_logs is not None:
        body = f"I ran the code and it printed {code_logs.strip()}."
    else:
        echo = strip_triggers(user_text)
        echo_words = echo.split()
        if len(echo_words) > 12:
            echo = " ".join(echo_words[:12]) + " ..."
        body = (f"This is a scripted reply from the Assistants emulator. You wrote: {echo}" if echo
                else "This is a scripted reply from the Assistants emulator.")
    if triggers.html:
        body = body + " " + HTML_PAYLOAD
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        body = json.dumps({"answer": body}, ensure_ascii=False)
    pieces = [(p, False) for p in split_text(body)]
    if searched:
        # Non-ASCII citation marker, as file_search answers carry (e.g. 【4:0†source】).
        last = pieces[-1][0] if pieces else ""
        if last.endswith("."):
            pieces[-1] = (last[:-1], False)
            pieces.append(("【4:0†source】", True))
            pieces.append((".", False))
        else:
            pieces.append(("【4:0†source】", True))
    return pieces
