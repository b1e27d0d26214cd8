"""Shared test helpers.

Under CI=true a test that needs PostgreSQL, Redis or Chromium fails when the service is missing;
on a developer's machine it is skipped with the reason.

Secrets: every API key, token, password or secret key a test configures contains the marker ``cnry7``, after
its first 8 and before its last 4 characters (so a key masked the way the service masks it does not show the
marker). CI searches the whole test output and every captured log line of both legs for the marker and fails
if it appears anywhere.
"""

import os
import shutil

import pytest

from tests import factories

IN_CI = os.environ.get("CI", "").lower() == "true"

# ``emulator``/``emulator_server``: the bundled emulator (its plugin is opt-in, never auto-loaded);
# ``managed_identity``: an App Service managed identity endpoint for azure-identity (tests/identity.py).
pytest_plugins = ["tests.identity", "assistants_emulator.pytest_plugin"]


def require(what: str, available: bool, reason: str) -> None:
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is unavailable: {reason}")
    pytest.skip(f"{what} unavailable: {reason}")


@pytest.fixture
def browser_page(chromium_path, monkeypatch):
    """A page in a real headless Chromium (Debian's), driven by playwright."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # playwright's sync API runs an event loop
    from django.db import connections
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        try:
            # A context of its own, so a test can open a second tab in the same session (context.new_page()).
            yield browser.new_context(viewport={"width": 1800, "height": 1000}).new_page()
        finally:
            # Inside playwright's event loop asgiref gives this context its own database connection:
            # close it here, or PostgreSQL cannot drop the test database.
            connections.close_all()
            browser.close()


@pytest.fixture(scope="session")
def chromium_path():
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    require("Chromium", bool(path), "no chromium on PATH (apt-get install chromium)")
    return path


# --- the mirror against the emulator, and real q clusters ---------------------------------------------

FAST_POLLER = {
    "POLL_FAST": 0.1, "POLL_INTERVAL": 0.2, "ACTIVE_WINDOW": 5.0, "POLL_SLOW": 1.0, "POLL_WAITING": 0.3,
    "CLAIM_LEASE": 10.0, "CYCLE_SECONDS": 5.0, "DISCOVERY_INTERVAL": 0.3, "DISCOVERY_MAX_INTERVAL": 1.0,
    "POLL_THREADS": 2,
}


def emulator_connection(emulator) -> dict:
    return {"KIND": "azure_openai", "ENDPOINT": emulator.azure_endpoint, "API_VERSION": "2024-08-01-preview",
            "API_KEY": emulator.api_key}


# --- the common fixtures, built by tests/factories.py ------------------------------------------------------------

@pytest.fixture
def remote(emulator):
    """A client straight to the emulator (outside runs_app's services): the service's own view of things."""
    return factories.remote_client(emulator)


@pytest.fixture
def assistant(remote):
    """An assistant with the get_weather function tool, created on the emulator."""
    return factories.weather_assistant(remote)


@pytest.fixture
def operator(django_user_model):
    """A staff user holding every runs_app permission (views, runs, threads, messages, actions)."""
    return factories.staff_user(django_user_model, "operator")


@pytest.fixture
def viewer(django_user_model):
    """A staff user who may only view threads and runs: every action is refused to them."""
    return factories.staff_user(django_user_model, "viewer", permissions=factories.VIEW_PERMISSIONS)


@pytest.fixture
def api(operator):
    """The REST API's test client, authenticated as the operator."""
    return factories.api_client(operator)


@pytest.fixture
def admin_user(db, django_user_model):
    """pytest-django's superuser (behind ``admin_client``), with a password that carries the log canary."""
    return factories.superuser(django_user_model, "admin")


class MaskedSettings(dict):
    """A RUNS_APP dict whose repr hides API keys: pytest prints fixture values in failure reports, and CI
    searches the whole test output for the configured secrets."""

    def __repr__(self):
        def mask(value):
            if isinstance(value, dict):
                return {k: ("***" if k == "API_KEY" and v else mask(v)) for k, v in value.items()}
            return value

        return repr(mask(dict(self)))


@pytest.fixture
def mirror_settings(emulator, settings):
    """RUNS_APP pointing the default connection at the emulator, with a fast poller."""
    settings.RUNS_APP = MaskedSettings({"CONNECTIONS": {"default": emulator_connection(emulator)}, **FAST_POLLER})
    return settings.RUNS_APP


def database_url_of_this_test_database() -> str:
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


class QCluster:
    """A real ``manage.py qcluster`` subprocess on this test's database and RUNS_APP."""

    def __init__(self, runs_app: dict, **env_overrides):
        import json
        import subprocess
        import sys
        import tempfile
        from pathlib import Path

        env = {**os.environ, "DATABASE_URL": database_url_of_this_test_database(),
               "DJANGO_SETTINGS_MODULE": "tests.settings", "RUNS_APP_TEST_SETTINGS": json.dumps(runs_app),
               **env_overrides}
        # A file, not a pipe: a chatty cluster must never block on a full pipe.
        # Kept in RUNS_APP_TEST_LOG_DIR when set (CI searches every log of the run for secrets).
        log_dir = os.environ.get("RUNS_APP_TEST_LOG_DIR") or None
        self.log = tempfile.NamedTemporaryFile("w+", prefix="qcluster-", suffix=".log", dir=log_dir,  # noqa: SIM115
                                               delete=log_dir is None)
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"], cwd=Path(__file__).resolve().parent.parent, env=env,
            stdout=self.log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole cluster (sentinel, workers, monitor): a machine dying mid-cycle."""
        import signal

        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> str:
        import signal
        import subprocess

        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.output()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()


@pytest.fixture
def q_cluster(transactional_db, mirror_settings):
    """Start q clusters with ``q_cluster()``; all are stopped after the test."""
    clusters = []

    def start(env=None, **overrides):
        cluster = QCluster({**mirror_settings, **overrides}, **(env or {}))
        clusters.append(cluster)
        return cluster

    yield start
    from runs_app.models import PollerLane

    PollerLane.objects.update(token="")  # lanes notice within one pass and hand over to no successor
    for cluster in clusters:
        cluster.stop()


# --- the slow tests: `make test-fast` (pytest -m "not slow") leaves them out --------------------------------------

# A test using one of these starts a real q cluster (a manage.py qcluster subprocess) or a real Chromium.
SLOW_FIXTURES = frozenset({"q_cluster", "browser_page"})


def pytest_collection_modifyitems(config, items):
    """Mark ``slow`` every test that uses a fixture of SLOW_FIXTURES (the fixtures it uses through others count).
    A test that starts such a process itself carries ``@pytest.mark.slow`` by hand."""
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Keep pytest's --log-file handler working for the whole run (CI searches that file for secrets).

    Code that configures logging again (django.setup() runs dictConfig) removes the root logger's handlers and
    *closes* them; a closed FileHandler opened with mode "w" then drops every record silently. So before each
    test the handler is reopened (appending) and put back on the root logger if that happened."""
    import logging

    plugin = item.config.pluginmanager.get_plugin("logging-plugin")
    handler = getattr(plugin, "log_file_handler", None)
    if handler is None or not getattr(item.config.option, "log_file", None):
        return
    if handler.stream is None:
        handler.mode = "a"
        handler.stream = handler._open()
    root = logging.getLogger()
    if handler not in root.handlers:
        root.addHandler(handler)
    if handler.level and root.level > handler.level:
        root.setLevel(handler.level)
