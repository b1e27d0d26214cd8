"""System checks on RUNS_APP: each problem is an error with an id and names the exact key to set."""

import pytest
from django.core import checks
from django.test import override_settings

GOOD = {"KIND": "azure_openai", "ENDPOINT": "https://res.openai.azure.com", "API_KEY": "k-123"}


def run_checks(runs_app, include_deployment_checks=False):
    with override_settings(RUNS_APP=runs_app):
        return [
            m
            for m in checks.run_checks(include_deployment_checks=include_deployment_checks)
            if m.id and m.id.startswith("runs_app.")
        ]


def only(messages):
    assert len(messages) == 1, [m.msg for m in messages]
    return messages[0]


def test_valid_configuration_has_no_messages():
    assert run_checks({"CONNECTIONS": {"default": GOOD}}) == []


def test_entra_configuration_is_valid():
    conn = {"KIND": "foundry_agents", "ENDPOINT": "https://r.services.ai.azure.com/api/projects/p", "AUTH": "entra"}
    assert run_checks({"CONNECTIONS": {"default": conn}}) == []


def test_setting_not_a_dict():
    assert only(run_checks(["x"])).id == "runs_app.E001"


def test_unknown_top_level_key():
    message = only(run_checks({"CONNECTIONS": {"default": GOOD}, "CONECTIONS": {}}))
    assert message.id == "runs_app.E002"
    assert "RUNS_APP['CONECTIONS']" in message.msg


def test_no_connection_at_all_is_an_error_hinting_at_a_default_one():
    message = only(run_checks({"CONNECTIONS": {}}))
    assert message.id == "runs_app.E003"
    assert "RUNS_APP['CONNECTIONS']['default']" in message.hint


def test_default_connection_must_exist():
    message = only(run_checks({"CONNECTIONS": {"east": GOOD}}))
    assert message.id == "runs_app.E003"
    assert "RUNS_APP['DEFAULT_CONNECTION']" in message.msg


def test_an_unknown_key_in_a_connection_is_an_error_naming_it():
    message = only(run_checks({"CONNECTIONS": {"default": {**GOOD, "APIKEY": "x"}}}))
    assert (message.id, "RUNS_APP['CONNECTIONS']['default']['APIKEY']" in message.msg) == ("runs_app.E004", True)


def test_an_unknown_kind_is_an_error_naming_the_setting():
    message = only(run_checks({"CONNECTIONS": {"default": {**GOOD, "KIND": "azure"}}}))
    assert message.id == "runs_app.E005"
    assert "RUNS_APP['CONNECTIONS']['default']['KIND']" in message.msg


@pytest.mark.parametrize("endpoint", ["", None, "res.openai.azure.com", "ftp://res"])
def test_missing_or_bad_endpoint_names_the_setting(endpoint):
    message = only(run_checks({"CONNECTIONS": {"default": {**GOOD, "ENDPOINT": endpoint}}}))
    assert message.id == "runs_app.E006"
    assert "RUNS_APP['CONNECTIONS']['default']['ENDPOINT']" in message.msg


def test_missing_api_key_names_the_setting():
    message = only(run_checks({"CONNECTIONS": {"default": {**GOOD, "API_KEY": ""}}}))
    assert message.id == "runs_app.E007"
    assert "RUNS_APP['CONNECTIONS']['default']['API_KEY']" in message.msg


def test_foundry_refuses_api_key_auth():
    conn = {"KIND": "foundry_agents", "ENDPOINT": "https://r.services.ai.azure.com/api/projects/p", "API_KEY": "k"}
    message = only(run_checks({"CONNECTIONS": {"default": conn}}))
    assert message.id == "runs_app.E008"
    assert "Entra ID only" in message.msg


def test_an_unknown_auth_value_is_an_error():
    message = only(run_checks({"CONNECTIONS": {"default": {**GOOD, "AUTH": "aad"}}}))
    assert message.id == "runs_app.E008"


def test_an_api_version_such_as_latest_is_an_error_naming_the_setting():
    message = only(run_checks({"CONNECTIONS": {"default": {**GOOD, "API_VERSION": "latest"}}}))
    assert message.id == "runs_app.E010"
    assert "RUNS_APP['CONNECTIONS']['default']['API_VERSION']" in message.msg


@pytest.mark.parametrize(("key", "value"), [("READ_TIMEOUT", 0), ("CONNECT_TIMEOUT", "5"), ("MAX_RETRIES", -1)])
def test_a_timeout_or_retry_count_that_is_no_valid_number_is_an_error_naming_the_setting(key, value):
    message = only(run_checks({"CONNECTIONS": {"default": GOOD}, key: value}))
    assert message.id == "runs_app.E011"
    assert f"RUNS_APP['{key}']" in message.msg


def test_errors_never_show_the_key():
    messages = run_checks({"CONNECTIONS": {"default": {**GOOD, "KIND": "bad", "API_KEY": "sk-check-cnry7-value"}}})
    assert messages
    assert all("sk-check-cnry7-value" not in f"{m.msg} {m.hint}" for m in messages)


def test_deploy_warns_about_plain_http_to_another_host():
    conn = {**GOOD, "ENDPOINT": "http://10.1.2.3:8089"}
    message = only(run_checks({"CONNECTIONS": {"default": conn}}, include_deployment_checks=True))
    assert message.id == "runs_app.W001"


def test_deploy_accepts_loopback_http():
    conn = {**GOOD, "ENDPOINT": "http://127.0.0.1:8089"}
    assert run_checks({"CONNECTIONS": {"default": conn}}, include_deployment_checks=True) == []


FOUNDRY = {"KIND": "foundry_agents", "ENDPOINT": "https://r.services.ai.azure.com/api/projects/p", "AUTH": "entra"}


@pytest.mark.parametrize(("conn", "version"), [
    (GOOD, "2025-05-01"),                 # Foundry's, on Azure OpenAI
    (FOUNDRY, "2024-08-01-preview"),      # Azure OpenAI's, on Foundry (Foundry does not serve it)
    ({**GOOD, "KIND": "openai", "ENDPOINT": "https://api.openai.com"}, "2025-05-01"),
])
def test_an_api_version_the_kind_is_not_known_to_serve_is_a_warning(conn, version):
    message = only(run_checks({"CONNECTIONS": {"default": {**conn, "API_VERSION": version}}}))
    assert message.id == "runs_app.W003" and message.level == checks.WARNING
    assert "RUNS_APP['CONNECTIONS']['default']['API_VERSION']" in message.msg


@pytest.mark.parametrize("version", ["2025-05-01", "2025-05-15-preview", "v1"])
def test_foundrys_known_api_versions_pass(version):
    assert run_checks({"CONNECTIONS": {"default": {**FOUNDRY, "API_VERSION": version}}}) == []


def test_foundry_with_a_key_is_an_error_except_on_the_loopback_emulator():
    keyed = {**FOUNDRY, "AUTH": "api_key", "API_KEY": "k"}
    assert only(run_checks({"CONNECTIONS": {"default": keyed}})).id == "runs_app.E008"
    local = {**keyed, "ENDPOINT": "http://127.0.0.1:8089/api/projects/demo"}
    assert run_checks({"CONNECTIONS": {"default": local}}) == []


@pytest.mark.parametrize("conn", [
    {**FOUNDRY, "DISCOVER_THREADS": "yes"},
    {**FOUNDRY, "DISCOVER_THREADS_SINCE": 0},
    {**GOOD, "KIND": "openai", "ENDPOINT": "https://api.openai.com", "DISCOVER_THREADS": True},
])
def test_thread_discovery_settings_are_checked(conn):
    message = only(run_checks({"CONNECTIONS": {"default": conn}}))
    assert message.id == "runs_app.E013" and "DISCOVER_THREADS" in message.msg
