"""Helpers for client tests: connection settings for each kind against an emulator, a fake TokenCredential."""

from __future__ import annotations

import time
from collections import namedtuple

AccessToken = namedtuple("AccessToken", ["token", "expires_on"])


class FakeCredential:
    """A TokenCredential that issues the given tokens in turn, each valid for ``lifetime`` seconds of ``clock``."""

    def __init__(self, tokens, *, lifetime=3600, clock=time.time):
        self._tokens = list(tokens)
        self.lifetime = lifetime
        self.clock = clock
        self.calls = []

    def get_token(self, *scopes, **kwargs):
        self.calls.append(scopes)
        token = self._tokens[min(len(self.calls), len(self._tokens)) - 1]
        return AccessToken(token, int(self.clock() + self.lifetime))


def connection_settings(kind: str, emulator) -> dict:
    if kind == "azure_openai":
        return {"KIND": kind, "ENDPOINT": emulator.azure_endpoint, "API_VERSION": "2024-08-01-preview",
                "AUTH": "api_key", "API_KEY": emulator.api_key}
    if kind == "openai":
        return {"KIND": kind, "ENDPOINT": emulator.url, "API_VERSION": None, "AUTH": "api_key",
                "API_KEY": emulator.api_key}
    return {"KIND": kind, "ENDPOINT": emulator.foundry_endpoint("demo"), "API_VERSION": "2025-05-01",
            "AUTH": "entra", "API_KEY": "", "ENTRA_SCOPE": "https://ai.azure.com/.default"}


def wait_for(predicate, *, timeout=15.0, interval=0.02):
    """Poll ``predicate`` until it returns a truthy value (awaiting a remote state, not sleeping blindly)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
