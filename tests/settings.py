"""Settings for the test suite: the demo site's settings, read from the same environment variables.

DATABASE_URL and REDIS_URL pick the leg (SQLite + ORM broker by default; PostgreSQL + Redis in CI's
second leg). A secret key is supplied because the demo settings refuse to start without one.
"""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key-cnry7-not-for-production")

from project.settings import *  # noqa: E402,F403
from project.settings import BASE_DIR, DATABASES, Q_CLUSTER  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Tests talk to the server over plain http on loopback (live_server).
SECURE_SSL_REDIRECT = False
SECURE_HSTS_SECONDS = 0
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False

# No connection pool in tests: test databases are created and dropped under the pool's feet, and q clusters
# in subprocesses share the database (the pool is exercised by bench/relay.py on PostgreSQL).
DATABASES["default"].get("OPTIONS", {}).pop("pool", None)

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so a q cluster started in a subprocess sees the same test database.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f"test-db-{os.getpid()}.sqlite3")}

# A queue name of this run's own, inherited by q clusters the tests start, so concurrent runs sharing
# one Redis never take each other's tasks.
Q_CLUSTER = {**Q_CLUSTER, "name": os.environ.setdefault("RUNS_APP_TEST_Q_NAME", f"runs_app_test_{os.getpid()}")}

# Tests that talk to a service point this at the emulator fixture (override_settings); by default it
# points at a closed port, so nothing can reach a real service by accident.
RUNS_APP = {
    "CONNECTIONS": {
        "default": {"KIND": "azure_openai", "ENDPOINT": "http://127.0.0.1:9", "API_KEY": "tests-only-api-key-cnry7"},
    },
}
# A q cluster started by a test receives the test's RUNS_APP (pointing at its emulator) this way.
if os.environ.get("RUNS_APP_TEST_SETTINGS"):
    import json

    RUNS_APP = json.loads(os.environ["RUNS_APP_TEST_SETTINGS"])
