"""Property tests (hypothesis) of protocol invariants: cursor pagination and metadata limits."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import assistants_emulator as emulator_pkg
from assistants_emulator.tests.wire import Wire

MESSAGES = 12


@pytest.fixture(scope="module")
def paged():
    """One thread with 12 messages on a private emulator (hypothesis re-runs the test body many times)."""
    _url, handle = emulator_pkg.serve_in_thread(api_key="prop-key-cnry7", speed=50)
    wire = Wire(handle.url, "azure", "prop-key-cnry7")
    thread = wire.thread()
    ids = [
        wire.post(f"/threads/{thread['id']}/messages", {"role": "user", "content": f"m{i}"})["id"]
        for i in range(MESSAGES)
    ]
    try:
        yield wire, thread["id"], ids
    finally:
        handle.stop()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 15), order=st.sampled_from(["asc", "desc"]), start=st.integers(0, MESSAGES))
def test_cursor_pages_partition_the_list(paged, limit, order, start):
    wire, thread_id, ids = paged
    expected = ids if order == "asc" else ids[::-1]
    # Page forward with `after` from an arbitrary starting cursor: pages are contiguous, sized `limit`,
    # and has_more is true exactly when items remain.
    cursor = expected[start - 1] if start else None
    seen: list[str] = []
    while True:
        params = {"limit": limit, "order": order, **({"after": cursor} if cursor else {})}
        page = wire.get(f"/threads/{thread_id}/messages", params=params)
        got = [m["id"] for m in page["data"]]
        remaining = expected[start + len(seen) :]
        assert got == remaining[:limit]
        assert page["has_more"] == (len(remaining) > limit)
        assert (page["first_id"], page["last_id"]) == ((got[0], got[-1]) if got else (None, None))
        seen += got
        if not page["has_more"]:
            break
        cursor = page["last_id"]
    assert seen == expected[start:]
    if (
        0 < start < MESSAGES
    ):  # `before` gives the items preceding the cursor, closest `limit` of them, in the same order
        before = wire.get(
            f"/threads/{thread_id}/messages", params={"limit": limit, "order": order, "before": expected[start]}
        )
        assert [m["id"] for m in before["data"]] == expected[:start][-limit:]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    metadata=st.dictionaries(st.text("abcdefghij", min_size=1, max_size=70), st.text("xyz", max_size=520), max_size=20)
)
def test_metadata_within_the_limits_is_kept_and_beyond_them_is_a_400_naming_the_limit(paged, metadata):
    wire, _thread_id, _ids = paged
    too_many = len(metadata) > 16
    too_long = any(len(k) > 64 or len(v) > 512 for k, v in metadata.items())
    resp = wire.raw("POST", "/threads", json={"metadata": metadata})
    if not (too_many or too_long):
        assert resp.status_code == 200 and resp.json()["metadata"] == metadata
        return
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"].startswith("metadata")
    if too_many:
        assert error["code"] == "object_above_max_properties"
        assert error["message"] == (
            "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, "
            f"but got an object with {len(metadata)} properties instead."
        )
    else:
        assert error["code"] == "string_above_max_length"
