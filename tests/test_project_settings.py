"""The demo site's settings come from environment variables, with production-safe defaults."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# slow: the demo settings load in a fresh Python per test.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ENV_VARS = (
    "DATABASE_URL", "REDIS_URL", "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_API_VERSION",
    "DJANGO_SECRET_KEY", "DJANGO_DEBUG", "DJANGO_ALLOWED_HOSTS", "EMULATOR_URL", "EMULATOR_API_KEY", "RUNS_APP_KIND",
    "AZURE_OPENAI_AUTH", "RUNS_APP_DISCOVER_THREADS",
)
PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": "a-long-random-production-secret-key-0123456789-abcdefghijklmnop",
    "DJANGO_ALLOWED_HOSTS": "runs.example.com",
    "AZURE_OPENAI_ENDPOINT": "https://contoso.openai.azure.com",
    "AZURE_OPENAI_API_KEY": "prod-key-cnry7-9f8e7d6c",
}


def clean_env(**overrides):
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["DJANGO_SETTINGS_MODULE"] = "project.settings"
    env.update(overrides)
    return env


def load_settings(**env):
    code = (
        "import json, django; from django.conf import settings as s; django.setup(); print(json.dumps({"
        "'debug': s.DEBUG, 'engine': s.DATABASES['default']['ENGINE'], 'db': s.DATABASES['default']['NAME'], "
        "'q': s.Q_CLUSTER, 'conn': s.RUNS_APP['CONNECTIONS']['default'], 'hosts': s.ALLOWED_HOSTS, "
        "'ssl': getattr(s, 'SECURE_SSL_REDIRECT', False), 'hsts': getattr(s, 'SECURE_HSTS_SECONDS', 0)}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(**env), capture_output=True,
                            text=True, timeout=60)
    return result


def manage(*args, **env):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=clean_env(**env),
                          capture_output=True, text=True, timeout=60)


def test_local_defaults_are_sqlite_orm_broker_and_the_emulator():
    result = load_settings(DJANGO_DEBUG="1")
    assert result.returncode == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["engine"] == "django.db.backends.sqlite3"
    assert s["db"].endswith("db.sqlite3")
    assert s["q"]["orm"] == "default" and "redis" not in s["q"]
    assert s["conn"]["ENDPOINT"] == "http://127.0.0.1:8089"
    assert s["conn"]["API_VERSION"] is None  # the kind's own default (runs_app.conf.DEFAULT_API_VERSIONS)


class CapturingService:
    """A loopback HTTP server that records each request line and answers an empty protocol list."""

    def __init__(self):
        import http.server
        import threading

        requests = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append({"path": self.path, "authorization": bool(self.headers.get("Authorization")),
                                 "api_key": bool(self.headers.get("api-key"))})
                body = b'{"object":"list","data":[],"first_id":null,"last_id":null,"has_more":false}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("kind", "version", "path"), [
    ("foundry_agents", "2025-05-01", "/api/projects/demo/assistants"),
    ("azure_openai", "2024-08-01-preview", "/openai/assistants"),
])
def test_demo_site_sends_each_kinds_own_api_version_when_none_is_configured(kind, version, path):
    service = CapturingService()
    try:
        code = ("import django; django.setup(); from runs_app.assistants import AssistantsClient; "
                "AssistantsClient().list_assistants(limit=1)")
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                                env=clean_env(DJANGO_DEBUG="1", RUNS_APP_KIND=kind, EMULATOR_URL=service.url,
                                              EMULATOR_API_KEY="local-key-cnry7-for-tests"))
    finally:
        service.close()
    assert result.returncode == 0, result.stderr
    [request] = service.requests
    assert request["path"] == f"{path}?api-version={version}&limit=1"
    # Foundry takes a bearer token only (the emulator's key stands in for Entra ID on loopback).
    assert request["authorization"] != request["api_key"] and request["authorization"] == (kind == "foundry_agents")


def test_demo_site_on_foundry_passes_its_system_checks():
    result = manage("check", DJANGO_DEBUG="1", RUNS_APP_KIND="foundry_agents")
    assert result.returncode == 0, result.stderr
    assert "runs_app.E008" not in result.stderr + result.stdout


def test_database_and_redis_urls():
    result = load_settings(DJANGO_DEBUG="1", DATABASE_URL="postgres://u@127.0.0.1:5432/runs",
                           REDIS_URL="redis://127.0.0.1:6379/3")
    s = json.loads(result.stdout)
    assert s["engine"] == "django.db.backends.postgresql"
    assert s["db"] == "runs"
    assert s["q"]["redis"] == "redis://127.0.0.1:6379/3" and "orm" not in s["q"]


def test_azure_variables_fill_the_default_connection():
    result = load_settings(**PRODUCTION, AZURE_OPENAI_API_VERSION="2024-05-01-preview")
    s = json.loads(result.stdout)
    assert s["conn"] == {"KIND": "azure_openai", "ENDPOINT": "https://contoso.openai.azure.com",
                         "API_VERSION": "2024-05-01-preview", "AUTH": "api_key", "API_KEY": "prod-key-cnry7-9f8e7d6c"}


def test_debug_is_off_by_default_and_production_defaults_apply():
    result = load_settings(DJANGO_SECRET_KEY="x" * 60)
    s = json.loads(result.stdout)
    assert s["debug"] is False
    assert s["ssl"] is True and s["hsts"] >= 31536000
    assert s["conn"]["ENDPOINT"] == ""  # never silently the emulator in production


def test_production_without_secret_key_refuses_to_start():
    result = load_settings(DJANGO_DEBUG="0")
    assert result.returncode != 0
    assert "Set DJANGO_SECRET_KEY" in result.stderr


def test_bad_boolean_is_a_clear_error():
    result = load_settings(DJANGO_DEBUG="maybe")
    assert "DJANGO_DEBUG must be one of" in result.stderr


def test_check_deploy_with_production_variables_has_no_warnings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    assert PRODUCTION["AZURE_OPENAI_API_KEY"] not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("missing", "check_id", "setting"),
    [
        ("AZURE_OPENAI_ENDPOINT", "runs_app.E006", "RUNS_APP['CONNECTIONS']['default']['ENDPOINT']"),
        ("AZURE_OPENAI_API_KEY", "runs_app.E007", "RUNS_APP['CONNECTIONS']['default']['API_KEY']"),
    ],
)
def test_missing_endpoint_or_key_is_a_check_error_naming_the_setting(missing, check_id, setting):
    env = {k: v for k, v in PRODUCTION.items() if k != missing}
    result = manage("check", "--deploy", **env)
    assert result.returncode != 0
    assert check_id in result.stderr
    assert setting in result.stderr
