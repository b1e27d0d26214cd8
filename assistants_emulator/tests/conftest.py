"""Fixtures for the emulator's own suite. It needs nothing of the project around it: run it alone with
``pytest assistants_emulator/tests``."""

import pytest

from assistants_emulator.tests.identity import managed_identity  # noqa: F401 - the token endpoint, a fixture
from assistants_emulator.tests.wire import Wire

# The opt-in line every user of the plugin writes (README, "Pytest").
pytest_plugins = ["assistants_emulator.pytest_plugin"]


@pytest.fixture(params=["azure", "openai"])
def wire(request, emulator):
    """Raw-HTTP client on the Azure and the OpenAI surface in turn."""
    return Wire(emulator.url, request.param, emulator.api_key)


@pytest.fixture(params=["azure", "openai", "foundry"])
def any_wire(request, emulator):
    """Raw-HTTP client on every surface, Foundry classic agents included (Bearer token)."""
    return Wire(emulator.url, request.param, emulator.api_key)


@pytest.fixture
def azure(emulator):
    return Wire(emulator.url, "azure", emulator.api_key)


@pytest.fixture
def openai_wire(emulator):
    return Wire(emulator.url, "openai", emulator.api_key)


@pytest.fixture(scope="session")
def short_expiry_emulator():
    """A separate emulator whose runs expire one second after creation (the session one uses 600 s)."""
    import assistants_emulator as emulator_pkg

    _url, handle = emulator_pkg.serve_in_thread(api_key="expiry-key-cnry7", speed=50, expire_after=1.0)
    try:
        yield handle
    finally:
        handle.stop()
