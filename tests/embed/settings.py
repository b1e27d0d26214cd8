"""A minimal existing site that embeds runs_app: its own user model, runs_app under /ops/runs/."""

import os

SECRET_KEY = "embed-test-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
ROOT_URLCONF = "tests.embed.urls"
USE_TZ = True
AUTH_USER_MODEL = "accounts.Operator"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "django_q",
    "tests.embed.accounts",
    "runs_app",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["EMBED_DB"]}}
STATIC_URL = "static/"
Q_CLUSTER = {"name": "embed", "orm": "default", "timeout": 30, "retry": 60, "max_attempts": 2}
RUNS_APP = {
    "CONNECTIONS": {
        "default": {
            "KIND": "foundry_agents",
            "ENDPOINT": "https://res.services.ai.azure.com/api/projects/demo",
            "AUTH": "entra",
        },
        "legacy": {"KIND": "azure_openai", "ENDPOINT": "https://res.openai.azure.com", "API_KEY": "embed-key"},
    },
}
