"""Entra ID tokens (cached, refreshed before expiry, dropped after a 401) and secrets that never leak."""

import logging

import pytest

from assistants_emulator import serve_in_thread
from runs_app.assistants import AssistantsClient, errors
from tests.client_helpers import FakeCredential, connection_settings

SECRET_KEY = "sk-super-secret-cnry7-4242"
SECRET_TOKEN = "eyJ-secret-entra-cnry7-7777"


@pytest.fixture
def token_emulator():
    """Accepts exactly one bearer token: tok-cnry7-1."""
    _, handle = serve_in_thread(api_key="tok-cnry7-1", speed=50, control=True)
    with handle:
        yield handle


def test_entra_token_is_cached_then_refreshed_before_expiry(token_emulator):
    now = [1_000_000.0]
    credential = FakeCredential(["tok-cnry7-1", "tok-cnry7-2"], lifetime=3600, clock=lambda: now[0])
    client = AssistantsClient("foundry", settings=connection_settings("foundry_agents", token_emulator),
                              credential=credential, clock=lambda: now[0])
    thread = client.create_thread()
    now[0] += 1000
    client.retrieve_thread(thread["id"])
    assert credential.calls == [("https://ai.azure.com/.default",)]  # one token for both requests
    now[0] += 2400  # 200 s before expiry: inside the refresh margin
    with pytest.raises(errors.AuthenticationError):
        client.retrieve_thread(thread["id"])  # the emulator knows only tok-cnry7-1: proves tok-cnry7-2 was sent
    assert len(credential.calls) == 2


def test_entra_token_is_dropped_after_a_401(token_emulator):
    credential = FakeCredential(["tok-cnry7-0", "tok-cnry7-1"], lifetime=3600)
    client = AssistantsClient("foundry", settings=connection_settings("foundry_agents", token_emulator),
                              credential=credential)
    with pytest.raises(errors.AuthenticationError):
        client.create_thread()
    assert client.create_thread()["object"] == "thread"  # a fresh token was fetched
    assert len(credential.calls) == 2


def test_azure_openai_with_entra_uses_the_cognitive_services_scope(token_emulator):
    conf = {**connection_settings("azure_openai", token_emulator), "AUTH": "entra",
            "ENTRA_SCOPE": "https://cognitiveservices.azure.com/.default"}
    credential = FakeCredential(["tok-cnry7-1"])
    assert AssistantsClient("aoai", settings=conf, credential=credential).create_thread()["object"] == "thread"
    assert credential.calls == [("https://cognitiveservices.azure.com/.default",)]


def test_keys_and_tokens_never_leak(emulator, caplog):
    """Every repr, log line (all loggers, DEBUG) and error of a session with failures is free of secrets."""
    keyed = AssistantsClient("keyed", settings={**connection_settings("azure_openai", emulator),
                                                "API_KEY": SECRET_KEY})
    openai = AssistantsClient("oai", settings={**connection_settings("openai", emulator), "API_KEY": SECRET_KEY})
    entra = AssistantsClient("entra", settings=connection_settings("foundry_agents", emulator),
                             credential=FakeCredential([SECRET_TOKEN]))
    texts = []
    with caplog.at_level(logging.DEBUG):
        for client in (keyed, openai, entra):
            texts += [repr(client), repr(client._auth)]
            for call in (client.create_thread, lambda c=client: c.retrieve_run("thread_x", "run_x")):
                with pytest.raises(errors.AssistantsError) as caught:
                    call()
                texts += [str(caught.value), repr(caught.value), repr(caught.value.__dict__)]
    texts.append(caplog.text)
    assert "401" in caplog.text  # the failures really happened and were logged
    for text in texts:
        assert SECRET_KEY not in text
        assert SECRET_TOKEN not in text
