"""The mirror's ordering rules, as pure functions: which of two observations of an object is newer, how a
streamed delta folds into a snapshot, and the protocol's value conventions (Unix seconds, no NUL).

Runs:

1. A terminal run never reverts; a payload of the same terminal status may refresh its fields.
2. Happens-before from request timing: a payload whose request was sent after the stored state's
   answer arrived is newer and wins; one whose answer arrived before the stored state's request was
   sent is older and is ignored.
3. Concurrent observations (overlapping request windows) are ordered by lifecycle rank
   (queued < in_progress < requires_action < cancelling < terminal), except that
   ``requires_action → queued/in_progress`` (after tool outputs) is accepted once the pending calls are
   known to be answered, and a ``requires_action`` for calls already answered is stale.

The protocol has no version numbers or update timestamps, so timing and rank are all there is; a
non-terminal run keeps being polled, so any wrong guess in case 3 is corrected by the next poll.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.utils import timezone

from runs_app.models import TERMINAL_RUN_STATUSES, MessageStatus, RunStatus

RUN_RANK = {
    RunStatus.QUEUED: 0,
    RunStatus.IN_PROGRESS: 1,
    RunStatus.REQUIRES_ACTION: 2,
    RunStatus.CANCELLING: 3,
}

TERMINAL_RANK = 4


@dataclass(frozen=True)
class Observation:
    """When a payload was observed: its request was sent at ``sent`` and answered at ``received``."""

    source: str
    sent: dt.datetime
    received: dt.datetime

    @classmethod
    def now(cls, source: str, sent: dt.datetime | None = None) -> Observation:
        received = timezone.now()
        return cls(source, sent or received, received)


def without_nul(value):
    """The value with U+0000 replaced by U+FFFD: PostgreSQL stores no NUL in text or jsonb, and remote
    objects (model output, echoed input) may carry one. Applied to everything the mirror stores."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


def ts(value) -> dt.datetime | None:
    """The protocol's Unix seconds as an aware datetime (None stays None)."""
    if value is None or value == "":
        return None
    return dt.datetime.fromtimestamp(int(value), tz=dt.UTC)


def run_rank(status: str) -> int:
    return TERMINAL_RANK if status in TERMINAL_RUN_STATUSES else RUN_RANK.get(status, 0)


def call_ids(required_action) -> set[str]:
    calls = ((required_action or {}).get("submit_tool_outputs") or {}).get("tool_calls") or []
    return {c.get("id") for c in calls if c.get("id")}


def run_payload_is_newer(*, current_status: str, current_calls: set[str], answered: set[str],
                         current_from, current_to, incoming: dict, seen: Observation) -> bool:
    """The ordering rules above, as a pure function (tested with hypothesis)."""
    new_status = incoming.get("status")
    if current_status in TERMINAL_RUN_STATUSES:
        if new_status != current_status:
            return False  # rule 1
        return current_from is None or seen.received >= current_from
    if new_status in TERMINAL_RUN_STATUSES:
        return True
    if current_to is not None and seen.sent > current_to:
        return True  # rule 2: newer
    if current_from is not None and seen.received < current_from:
        return False  # rule 2: older
    new_calls = call_ids(incoming.get("required_action"))
    if new_status == RunStatus.REQUIRES_ACTION and new_calls and new_calls <= answered:
        return False  # rule 3: waits for calls already answered
    if current_status == RunStatus.REQUIRES_ACTION and new_status in (RunStatus.QUEUED, RunStatus.IN_PROGRESS):
        return bool(current_calls) and current_calls <= answered
    return run_rank(new_status) >= run_rank(current_status)


MESSAGE_TERMINAL = frozenset({MessageStatus.COMPLETED, MessageStatus.INCOMPLETE})


#: While its run is in one of these, a message of the run may still grow.
WRITING_RUN_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.IN_PROGRESS, RunStatus.CANCELLING})


def simple_is_newer(old_status, new_status, terminal, row, seen: Observation) -> bool:
    """Steps and messages: terminal never reverts, then happens-before, then rank."""
    if old_status in terminal:
        return new_status == old_status and (row.observed_from is None or seen.received >= row.observed_from)
    if new_status in terminal:
        return True
    if row.observed_to is not None and seen.sent > row.observed_to:
        return True
    # Older: ignore. Both in progress and concurrent: take it (content is compared by the caller).
    return not (row.observed_from is not None and seen.received < row.observed_from)


def merge_delta(snapshot, delta):
    """Merge a streamed delta into a snapshot the way the SDKs do: strings concatenated, dicts merged,
    lists of indexed items merged by ``index``, other values replaced."""
    if isinstance(snapshot, dict) and isinstance(delta, dict):
        merged = dict(snapshot)
        for key, value in delta.items():
            if key in ("index", "type", "id") or key not in merged:
                merged[key] = value  # identifiers are replaced, never concatenated (as openai-python does)
            else:
                merged[key] = merge_delta(merged[key], value)
        return merged
    if isinstance(snapshot, str) and isinstance(delta, str):
        return snapshot + delta
    if isinstance(snapshot, list) and isinstance(delta, list):
        merged = list(snapshot)
        for item in delta:
            if isinstance(item, dict) and "index" in item:
                index = item["index"]
                while len(merged) <= index:
                    merged.append({})
                merged[index] = merge_delta(merged[index], {k: v for k, v in item.items() if k != "index"})
            else:
                merged.append(item)
        return merged
    return delta if delta is not None else snapshot


def text_of(content) -> str:
    return "".join(b.get("text", {}).get("value", "") for b in content or [] if isinstance(b, dict))
