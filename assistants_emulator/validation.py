"""Request-body validation with OpenAI's error messages, types and codes."""

from __future__ import annotations

from .errors import ApiError

METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_LEN = 64
METADATA_MAX_VALUE_LEN = 512


def _type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "an unknown type"


def invalid_type(param: str, expected: str, value) -> ApiError:
    got = _type_name(value)
    got = "null" if got == "null" else got
    return ApiError(400, f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
                    param=param, code="invalid_type")


def missing(param: str) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def _fmt_choices(choices) -> str:
    quoted = [f"'{c}'" for c in choices]
    if len(quoted) == 1:
        return quoted[0]
    if len(quoted) == 2:
        return f"{quoted[0]} and {quoted[1]}"
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def invalid_value(param: str, value, choices) -> ApiError:
    return ApiError(400, f"Invalid value: '{value}'. Supported values are: {_fmt_choices(choices)}.",
                    param=param, code="invalid_value")


def check_unknown(body: dict, allowed) -> None:
    extra = [k for k in body if k not in allowed]
    if len(extra) == 1:
        raise ApiError(400, f"Unrecognized request argument supplied: {extra[0]}")
    if extra:
        raise ApiError(400, f"Unrecognized request arguments supplied: {', '.join(extra)}")


def require_object(body, param: str = "body") -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid type for request body: expected an object, but got "
                            f"{_type_name(body)} instead.", code="invalid_type")
    return body


def opt_string(body: dict, key: str, *, max_len: int | None = None, param: str | None = None):
    value = body.get(key)
    param = param or key
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid_type(param, "a string", value)
    if max_len is not None and len(value) > max_len:
        raise ApiError(400, f"Invalid '{param}': string too long. Expected a string with maximum length "
                            f"{max_len}, but got a string with length {len(value)} instead.",
                       param=param, code="string_above_max_length")
    return value


def req_string(body: dict, key: str, *, param: str | None = None, max_len: int | None = None) -> str:
    if key not in body or body[key] is None:
        raise missing(param or key)
    value = opt_string(body, key, max_len=max_len, param=param)
    if value == "":
        raise ApiError(400, f"Invalid '{param or key}': empty string. Expected a string with minimum length 1, "
                            "but got an empty string instead.", param=param or key, code="empty_string")
    return value


def opt_number(body: dict, key: str, lo: float, hi: float):
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid_type(key, "a decimal", value)
    if value < lo:
        raise ApiError(400, f"Invalid '{key}': decimal below minimum value. Expected a value >= {lo:g}, but got "
                            f"{value:g} instead.", param=key, code="decimal_below_min_value")
    if value > hi:
        raise ApiError(400, f"Invalid '{key}': decimal above maximum value. Expected a value <= {hi:g}, but got "
                            f"{value:g} instead.", param=key, code="decimal_above_max_value")
    return float(value)


def check_int(value, param: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise invalid_type(param, "an integer", value)
    if lo is not None and value < lo:
        raise ApiError(400, f"Invalid '{param}': integer below minimum value. Expected a value >= {lo}, but got "
                            f"{value} instead.", param=param, code="integer_below_min_value")
    if hi is not None and value > hi:
        raise ApiError(400, f"Invalid '{param}': integer above maximum value. Expected a value <= {hi}, but got "
                            f"{value} instead.", param=param, code="integer_above_max_value")
    return value


def opt_int(body: dict, key: str, lo: int | None = None, hi: int | None = None):
    value = body.get(key)
    if value is None:
        return None
    return check_int(value, key, lo, hi)


def opt_bool(body: dict, key: str):
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise invalid_type(key, "a boolean", value)
    return value


def metadata(value, param: str = "metadata") -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_type(param, "an object", value)
    if len(value) > METADATA_MAX_KEYS:
        raise ApiError(400, f"Invalid '{param}': too many properties. Expected an object with at most "
                            f"{METADATA_MAX_KEYS} properties, but got an object with {len(value)} properties "
                            "instead.", param=param, code="object_above_max_properties")
    for key, val in value.items():
        if len(key) > METADATA_MAX_KEY_LEN:
            raise ApiError(400, f"Invalid '{param}': metadata key '{key}' is too long. Expected a string with "
                                f"maximum length {METADATA_MAX_KEY_LEN}, but got a string with length {len(key)} "
                                "instead.", param=f"{param}.{key}", code="string_above_max_length")
        if not isinstance(val, str):
            raise invalid_type(f"{param}.{key}", "a string", val)
        if len(val) > METADATA_MAX_VALUE_LEN:
            raise ApiError(400, f"Invalid '{param}.{key}': string too long. Expected a string with maximum length "
                                f"{METADATA_MAX_VALUE_LEN}, but got a string with length {len(val)} instead.",
                           param=f"{param}.{key}", code="string_above_max_length")
    return dict(value)


DEFAULT_RANKING = {"ranker": "default_2024_08_21", "score_threshold": 0.0}
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def tools(value, param: str = "tools", *, legacy: bool = False) -> list:
    """Validate and normalise a tools array into the shape the service echoes back."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_type(param, "an array", value)
    if len(value) > 128:
        raise ApiError(400, f"Invalid '{param}': array too long. Expected an array with maximum length 128, but "
                            f"got an array with length {len(value)} instead.", param=param,
                       code="array_above_max_length")
    out = []
    for i, tool in enumerate(value):
        p = f"{param}[{i}]"
        if not isinstance(tool, dict):
            raise invalid_type(p, "an object", tool)
        ttype = tool.get("type")
        if ttype is None:
            raise missing(f"{p}.type")
        if ttype == "code_interpreter":
            check_unknown(tool, ("type",))
            out.append({"type": "code_interpreter"})
        elif ttype == "file_search":
            check_unknown(tool, ("type", "file_search"))
            fs = tool.get("file_search") or {}
            if not isinstance(fs, dict):
                raise invalid_type(f"{p}.file_search", "an object", fs)
            check_unknown(fs, ("max_num_results", "ranking_options"))
            norm = {}
            if fs.get("max_num_results") is not None:
                norm["max_num_results"] = check_int(fs["max_num_results"], f"{p}.file_search.max_num_results", 1, 50)
            ro = fs.get("ranking_options") or {}
            if not isinstance(ro, dict):
                raise invalid_type(f"{p}.file_search.ranking_options", "an object", ro)
            ranker = ro.get("ranker", "default_2024_08_21")
            if ranker == "auto":
                ranker = "default_2024_08_21"
            if ranker not in ("default_2024_08_21",):
                raise invalid_value(f"{p}.file_search.ranking_options.ranker", ranker, ("auto", "default_2024_08_21"))
            thr = ro.get("score_threshold", 0.0)
            if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0 <= thr <= 1:
                param = f"{p}.file_search.ranking_options.score_threshold"
                raise ApiError(400, f"Invalid '{param}': expected a decimal between 0 and 1.", param=param,
                               code="invalid_value")
            norm["ranking_options"] = {"ranker": ranker, "score_threshold": float(thr), "hybrid_search": None}
            out.append({"type": "file_search", "file_search": norm})
        elif ttype == "function":
            check_unknown(tool, ("type", "function"))
            fn = tool.get("function")
            if fn is None:
                raise missing(f"{p}.function")
            if not isinstance(fn, dict):
                raise invalid_type(f"{p}.function", "an object", fn)
            check_unknown(fn, ("name", "description", "parameters", "strict"))
            name = req_string(fn, "name", param=f"{p}.function.name", max_len=64)
            if not all(c.isalnum() or c in "_-" for c in name):
                raise ApiError(400, f"Invalid '{p}.function.name': string does not match pattern. Expected a string "
                                    f"that matches the pattern '^[a-zA-Z0-9_-]+$'.", param=f"{p}.function.name",
                               code="invalid_value")
            desc = opt_string(fn, "description", param=f"{p}.function.description")
            params = fn.get("parameters")
            if params is not None and not isinstance(params, dict):
                raise invalid_type(f"{p}.function.parameters", "an object", params)
            strict = fn.get("strict")
            if strict is not None and not isinstance(strict, bool):
                raise invalid_type(f"{p}.function.strict", "a boolean", strict)
            norm_fn = {"name": name, "description": desc}
            if legacy:
                # Azure 2024-05-01-preview echoes functions as sent (no "strict", no default parameters).
                if desc is None:
                    norm_fn.pop("description")
                if params is not None:
                    norm_fn["parameters"] = params
            else:
                norm_fn["parameters"] = params if params is not None else dict(EMPTY_PARAMETERS)
                norm_fn["strict"] = bool(strict)
            out.append({"type": "function", "function": norm_fn})
        else:
            raise invalid_value(f"{p}.type", ttype, ("code_interpreter", "function", "file_search"))
    return out


def tool_choice(value, run_tools: list):
    if value is None:
        return "auto"
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise invalid_value("tool_choice", value, ("none", "auto", "required"))
        return value
    if not isinstance(value, dict):
        raise invalid_type("tool_choice", "a string or object", value)
    ttype = value.get("type")
    if ttype not in ("function", "code_interpreter", "file_search"):
        raise invalid_value("tool_choice.type", ttype, ("function", "code_interpreter", "file_search"))
    if ttype == "function":
        check_unknown(value, ("type", "function"))
        fn = value.get("function")
        if not isinstance(fn, dict) or not fn.get("name"):
            raise missing("tool_choice.function.name")
        name = fn["name"]
        if not any(t["type"] == "function" and t["function"]["name"] == name for t in run_tools):
            raise ApiError(400, f"Invalid 'tool_choice': function '{name}' is not one of the tools of this run.",
                           param="tool_choice", code="invalid_value")
        return {"type": "function", "function": {"name": name}}
    check_unknown(value, ("type",))
    if not any(t["type"] == ttype for t in run_tools):
        raise ApiError(400, f"Invalid 'tool_choice': tool '{ttype}' is not one of the tools of this run.",
                       param="tool_choice", code="invalid_value")
    return {"type": ttype}


def response_format(value):
    if value is None:
        return "auto"
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        raise invalid_value("response_format", value, ("auto",))
    if not isinstance(value, dict):
        raise invalid_type("response_format", "an object", value)
    rtype = value.get("type")
    if rtype in ("text", "json_object"):
        check_unknown(value, ("type",))
        return {"type": rtype}
    if rtype == "json_schema":
        check_unknown(value, ("type", "json_schema"))
        js = value.get("json_schema")
        if not isinstance(js, dict):
            raise missing("response_format.json_schema")
        if not js.get("name"):
            raise missing("response_format.json_schema.name")
        return {"type": "json_schema", "json_schema": js}
    raise invalid_value("response_format.type", rtype, ("text", "json_object", "json_schema"))


def truncation_strategy(value):
    if value is None:
        return {"type": "auto", "last_messages": None}
    if not isinstance(value, dict):
        raise invalid_type("truncation_strategy", "an object", value)
    check_unknown(value, ("type", "last_messages"))
    ttype = value.get("type")
    if ttype is None:
        raise missing("truncation_strategy.type")
    if ttype not in ("auto", "last_messages"):
        raise invalid_value("truncation_strategy.type", ttype, ("auto", "last_messages"))
    last = value.get("last_messages")
    if last is not None:
        last = check_int(last, "truncation_strategy.last_messages", 1)
    return {"type": ttype, "last_messages": last}


def tool_resources(value, param: str = "tool_resources", new_id=None):
    """Normalise tool_resources; inline vector_stores become vector_store_ids (new ids)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_type(param, "an object", value)
    check_unknown(value, ("code_interpreter", "file_search"))
    out = {}
    ci = value.get("code_interpreter")
    if ci is not None:
        if not isinstance(ci, dict):
            raise invalid_type(f"{param}.code_interpreter", "an object", ci)
        check_unknown(ci, ("file_ids",))
        ids = ci.get("file_ids") or []
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise invalid_type(f"{param}.code_interpreter.file_ids", "an array of strings", ids)
        if len(ids) > 20:
            raise ApiError(400, f"Invalid '{param}.code_interpreter.file_ids': array too long. Expected an array "
                                f"with maximum length 20, but got an array with length {len(ids)} instead.",
                           param=f"{param}.code_interpreter.file_ids", code="array_above_max_length")
        out["code_interpreter"] = {"file_ids": list(ids)}
    fs = value.get("file_search")
    if fs is not None:
        if not isinstance(fs, dict):
            raise invalid_type(f"{param}.file_search", "an object", fs)
        check_unknown(fs, ("vector_store_ids", "vector_stores"))
        ids = list(fs.get("vector_store_ids") or [])
        stores = fs.get("vector_stores") or []
        if not isinstance(stores, list):
            raise invalid_type(f"{param}.file_search.vector_stores", "an array", stores)
        if ids and stores:
            raise ApiError(400, f"Invalid '{param}.file_search': only one of 'vector_store_ids' or 'vector_stores' "
                                "may be provided.", param=f"{param}.file_search", code="invalid_value")
        file_ids = []
        for store in stores:
            if isinstance(store, dict):
                file_ids.extend(store.get("file_ids") or [])
            ids.append(new_id("vs_") if new_id else "vs_emulator")
        out["file_search"] = {"vector_store_ids": ids}
        if file_ids:
            out["_file_ids"] = file_ids   # internal: lets file_search results cite real file ids
    return out


def message_content(value, param: str = "content") -> list:
    if value is None:
        raise missing(param)
    if isinstance(value, str):
        return [{"type": "text", "text": {"value": value, "annotations": []}}]
    if not isinstance(value, list):
        raise invalid_type(param, "a string or array", value)
    if not value:
        raise ApiError(400, f"Invalid '{param}': empty array. Expected an array with minimum length 1, but got an "
                            "empty array instead.", param=param, code="empty_array")
    out = []
    for i, part in enumerate(value):
        p = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise invalid_type(p, "an object", part)
        ptype = part.get("type")
        if ptype == "text":
            check_unknown(part, ("type", "text"))
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid_type(f"{p}.text", "a string", text)
            out.append({"type": "text", "text": {"value": text, "annotations": []}})
        elif ptype == "image_file":
            check_unknown(part, ("type", "image_file"))
            img = part.get("image_file")
            if not isinstance(img, dict) or not img.get("file_id"):
                raise missing(f"{p}.image_file.file_id")
            out.append({"type": "image_file", "image_file": {"file_id": img["file_id"],
                                                             "detail": img.get("detail", "auto")}})
        elif ptype == "image_url":
            check_unknown(part, ("type", "image_url"))
            img = part.get("image_url")
            if not isinstance(img, dict) or not img.get("url"):
                raise missing(f"{p}.image_url.url")
            out.append({"type": "image_url", "image_url": {"url": img["url"], "detail": img.get("detail", "auto")}})
        else:
            raise invalid_value(f"{p}.type", ptype, ("text", "image_file", "image_url"))
    return out


def attachments(value, param: str = "attachments") -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_type(param, "an array", value)
    out = []
    for i, att in enumerate(value):
        p = f"{param}[{i}]"
        if not isinstance(att, dict):
            raise invalid_type(p, "an object", att)
        check_unknown(att, ("file_id", "tools"))
        file_id = req_string(att, "file_id", param=f"{p}.file_id")
        tl = att.get("tools") or []
        if not isinstance(tl, list):
            raise invalid_type(f"{p}.tools", "an array", tl)
        norm = []
        for j, t in enumerate(tl):
            ttype = t.get("type") if isinstance(t, dict) else None
            if ttype not in ("code_interpreter", "file_search"):
                raise invalid_value(f"{p}.tools[{j}].type", ttype, ("code_interpreter", "file_search"))
            norm.append({"type": ttype})
        out.append({"file_id": file_id, "tools": norm})
    return out


def role(value, param: str = "role") -> str:
    if value is None:
        raise missing(param)
    if value not in ("user", "assistant"):
        raise invalid_value(param, value, ("user", "assistant"))
    return value


MESSAGE_FIELDS = ("role", "content", "attachments", "metadata")


def message_request(body, param_prefix: str = "") -> dict:
    """Validate a create-message body (also used for thread.messages[] and additional_messages[])."""
    p = param_prefix
    if not isinstance(body, dict):
        raise invalid_type(p.rstrip(".") or "body", "an object", body)
    check_unknown(body, MESSAGE_FIELDS)
    return {
        "role": role(body.get("role"), f"{p}role"),
        "content": message_content(body.get("content"), f"{p}content"),
        "attachments": attachments(body.get("attachments"), f"{p}attachments"),
        "metadata": metadata(body.get("metadata"), f"{p}metadata"),
    }
