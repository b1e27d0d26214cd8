"""Pytest fixtures: ``emulator_server`` (one per session) and ``emulator`` (state reset per test).

Opt-in, never auto-loaded: a project's top-level ``conftest.py`` lists it,
``pytest_plugins = ["assistants_emulator.pytest_plugin"]``, so installing the package changes no other test suite.
"""

from __future__ import annotations

import pytest

from . import serve_in_thread

TEST_API_KEY = "sk-emu-test-cnry7-5f3c9a1e7b"  # "cnry7": CI greps every log of a test run for it


@pytest.fixture(scope="session")
def emulator_server():
    """A session-wide emulator: control endpoint on, speed 50, api key ``TEST_API_KEY``."""
    _, handle = serve_in_thread(api_key=TEST_API_KEY, speed=50, control=True)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def emulator(emulator_server):
    """The session emulator with its state (objects, events, faults) reset before the test."""
    emulator_server.reset()
    yield emulator_server
