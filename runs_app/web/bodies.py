"""Request bodies every door reads: JSON checked for size and depth before it is parsed.

Python's parser recurses once per level of nesting: a body nested ten thousand deep is a ``RecursionError`` (a 500),
and a merely deep one makes every recursive walk after it slow. So the shape is checked first, without recursion and
in time linear in the body's size, and a body over the limits is a 400 naming ``body``, in milliseconds.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.core.exceptions import ValidationError

#: Deeper than any request of the protocol needs (a tool's JSON schema is the deepest part, a few levels).
MAX_JSON_DEPTH = 64
#: The largest body read: a message's 256,000 characters, escaped, with room to spare.
MAX_JSON_BYTES = 4 * 1024 * 1024

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def check_json_shape(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH, max_bytes: int = MAX_JSON_BYTES) -> None:
    """Refuse a body over ``max_bytes`` or nested deeper than ``max_depth`` (brackets inside strings do not count)."""
    if len(raw) > max_bytes:
        raise ValidationError({"body": [f"The body is {len(raw):,} bytes; the limit is {max_bytes:,}."]})
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub(b'""', raw)):
        depth += 1 if bracket in (b"[", b"{") else -1
        if depth > deepest:
            deepest = depth
            if deepest > max_depth:
                raise ValidationError({"body": [f"The JSON is nested deeper than {max_depth} levels."]})


def parse_json_body(raw: bytes) -> Any:
    """The body's JSON after ``check_json_shape``; not JSON is a 400 naming ``body`` too."""
    check_json_shape(raw)
    try:
        return json.loads(raw or b"{}")
    except (ValueError, RecursionError) as exc:
        raise ValidationError({"body": [f"Not valid JSON: {exc}"]}) from exc
