"""Settings of the demo site. Everything comes from environment variables (docs/configuration.md).

Defaults are production-safe: DEBUG is off unless DJANGO_DEBUG says otherwise, and then a secret key
must be given. ``make run`` sets DJANGO_DEBUG=1 for the local stack.
"""

from pathlib import Path

import dj_database_url
from csp.constants import NONCE
from django.core.exceptions import ImproperlyConfigured

from project.env import env_bool, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = env_str("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set DJANGO_SECRET_KEY (or DJANGO_DEBUG=1 for local development).")
    SECRET_KEY = "django-insecure-local-development-only"  # noqa: S105 (used only with DEBUG on)

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc served from here: the docs work offline
    "django_q",
    "runs_app",
    "project",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",  # Content-Security-Policy on every response (CONTENT_SECURITY_POLICY below)
    "runs_app.middleware.GZipMiddleware",  # Django's, except for the live pages' event streams
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=int(env_str("DATABASE_CONN_MAX_AGE", "0")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and int(env_str("DATABASE_POOL_MAX_SIZE", "0")):
    # Opt-in: psycopg's pool (Django >= 5.1). Each process keeps up to DATABASE_POOL_MAX_SIZE connections and
    # lends them per request, poll pass and relay batch. A request holds its connection while it waits for the
    # service, so size it near the threads per process (a request that waits DATABASE_POOL_TIMEOUT seconds for
    # a connection fails). Incompatible with DATABASE_CONN_MAX_AGE > 0.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1, "max_size": int(env_str("DATABASE_POOL_MAX_SIZE", "0")),
        "timeout": float(env_str("DATABASE_POOL_TIMEOUT", "30")),
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while the q cluster writes; with WAL, synchronous=NORMAL is crash-safe
    # and saves an fsync per commit (the poller commits once per poll).
    DATABASES["default"].setdefault("OPTIONS", {})["init_command"] = (
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    # One writer at a time: under load (many relayed streams) a writer waits up to 30 s, not 5, for its turn.
    DATABASES["default"]["OPTIONS"]["timeout"] = 30

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "admin:login"

# --- Remote service -------------------------------------------------------------------------------
# With no AZURE_OPENAI_ENDPOINT, the local stack uses the bundled emulator (started by `make run`).
# Production (DEBUG off) never falls back to it: a missing endpoint is the runs_app.E006 check error.
EMULATOR_URL = env_str("EMULATOR_URL", "http://127.0.0.1:8089")
EMULATOR_API_KEY = env_str("EMULATOR_API_KEY", "emulator-local-key")
AZURE_OPENAI_ENDPOINT = env_str("AZURE_OPENAI_ENDPOINT", "")
USING_EMULATOR = not AZURE_OPENAI_ENDPOINT and DEBUG

RUNS_APP_KIND = env_str("RUNS_APP_KIND", "azure_openai")
# The emulator serves Foundry classic agents under a project path, as Foundry does.
EMULATOR_ENDPOINT = EMULATOR_URL + ("/api/projects/demo" if RUNS_APP_KIND == "foundry_agents" else "")

RUNS_APP = {
    "CONNECTIONS": {
        "default": {
            "KIND": RUNS_APP_KIND,
            "ENDPOINT": EMULATOR_ENDPOINT if USING_EMULATOR else AZURE_OPENAI_ENDPOINT,
            # Unset: the kind's own default (runs_app.conf.DEFAULT_API_VERSIONS), never Azure's for Foundry.
            "API_VERSION": env_str("AZURE_OPENAI_API_VERSION", "") or None,
            "AUTH": env_str("AZURE_OPENAI_AUTH", "api_key"),
            "API_KEY": EMULATOR_API_KEY if USING_EMULATOR else env_str("AZURE_OPENAI_API_KEY", ""),
        },
    },
}
if env_str("RUNS_APP_DISCOVER_THREADS", ""):
    RUNS_APP["CONNECTIONS"]["default"]["DISCOVER_THREADS"] = env_bool("RUNS_APP_DISCOVER_THREADS", False)
# Scale-out knobs (docs/operations.md): poll lanes across all q clusters, threads per lane, runs claimed per
# pass; the /metrics bearer token.
for _key, _cast in [("POLLER_LANES", int), ("POLL_THREADS", int), ("CLAIM_BATCH", int), ("METRICS_TOKEN", str)]:
    if env_str(f"RUNS_APP_{_key}", ""):
        RUNS_APP[_key] = _cast(env_str(f"RUNS_APP_{_key}", ""))

# --- django-q2 ------------------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "")
Q_CLUSTER = {
    "name": "runs_app",
    "workers": int(env_str("Q_WORKERS", "2")),
    "timeout": 60,
    "retry": 90,  # must exceed timeout
    "max_attempts": 3,
    "catch_up": False,
    "label": "Task queue",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
    Q_CLUSTER["poll"] = 0.2

# --- REST framework -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Token first: a request without credentials gets 401 with "WWW-Authenticate: Token", which no browser
    # answers with a password prompt (a Basic challenge would make it store and replay the password). Scripts
    # send "Authorization: Token …"; the session serves the browsable docs. Basic stays accepted for reads
    # (curl -u); a write with it must pass CSRF like a session (runs_app.web.csrf).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "runs_app internal API",
    "DESCRIPTION": "Mirror of Assistants-protocol threads, runs, steps and messages, and operator actions.",
    "VERSION": "0.1.0",
    # The schema and the docs describe what a user may read: for staff holding runs_app.view_run.
    "SERVE_PERMISSIONS": ["runs_app.api.permissions.CanViewRuns"],
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# --- Content-Security-Policy (django-csp) -----------------------------------------------------------------
# Scripts only from this site (or inline with the per-response nonce, {{ request.csp_nonce }}); nothing from
# another origin at all. Styles may be inline: Swagger UI and the admin's widgets set style attributes, and
# drf-spectacular's Swagger page has a <style> block.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'", NONCE],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],  # as X-Frame-Options: DENY
    },
}

# --- Logging --------------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("DJANGO_LOG_LEVEL", "INFO")},
    # DEBUG shows every claim and release of the poll lanes.
    "loggers": {"runs_app.poller": {"level": env_str("RUNS_APP_POLLER_LOG_LEVEL", "INFO")}},
}

# --- Production-safe defaults ---------------------------------------------------------------------
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = int(env_str("DJANGO_SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"
