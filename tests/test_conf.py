"""runs_app.conf: one RUNS_APP dict, defaults, lazy reads, reload on override_settings."""

import pytest
from django.test import override_settings

from runs_app.conf import DEFAULTS, app_settings


def test_defaults_fill_unset_keys():
    with override_settings(RUNS_APP={"CONNECTIONS": {"default": {"ENDPOINT": "https://x", "API_KEY": "k"}}}):
        assert app_settings.MAX_RETRIES == DEFAULTS["MAX_RETRIES"]
        assert app_settings.DEFAULT_CONNECTION == "default"


def test_override_settings_reloads():
    with override_settings(RUNS_APP={"MAX_RETRIES": 7, "CONNECTIONS": {}}):
        assert app_settings.MAX_RETRIES == 7
    with override_settings(RUNS_APP={"MAX_RETRIES": 1, "CONNECTIONS": {}}):
        assert app_settings.MAX_RETRIES == 1


def test_unknown_attribute_is_an_error():
    with pytest.raises(AttributeError, match="Invalid RUNS_APP setting"):
        app_settings.NOT_A_SETTING  # noqa: B018


@pytest.mark.parametrize(
    ("kind", "version", "scope"),
    [
        ("azure_openai", "2024-08-01-preview", "https://cognitiveservices.azure.com/.default"),
        ("foundry_agents", "2025-05-01", "https://ai.azure.com/.default"),
        ("openai", None, None),
    ],
)
def test_connection_fills_kind_defaults(kind, version, scope):
    with override_settings(RUNS_APP={"CONNECTIONS": {"c": {"KIND": kind, "ENDPOINT": "https://x"}}}):
        conn = app_settings.connection("c")
    assert conn["API_VERSION"] == version
    assert conn["ENTRA_SCOPE"] == scope
    assert conn["AUTH"] == "api_key"


def test_connection_keeps_explicit_api_version():
    conns = {"default": {"KIND": "azure_openai", "ENDPOINT": "https://x", "API_VERSION": "2024-05-01-preview"}}
    with override_settings(RUNS_APP={"CONNECTIONS": conns}):
        assert app_settings.connection()["API_VERSION"] == "2024-05-01-preview"


def test_unknown_connection_names_the_setting():
    with override_settings(RUNS_APP={"CONNECTIONS": {}}), pytest.raises(KeyError, match=r"CONNECTIONS.*'nope'"):
        app_settings.connection("nope")
