"""The one settings dict, ``settings.RUNS_APP``, read lazily.

Modelled on ``rest_framework.settings``: a ``DEFAULTS`` dict, attribute access that reads the
user's dict on first use, and a reload on ``setting_changed`` so ``override_settings`` works.
Validation lives in ``runs_app.checks`` (system checks), not here, so a bad value never makes
importing the app fail.
"""

from __future__ import annotations

import copy

from django.conf import settings
from django.core.signals import setting_changed

SETTING_NAME = "RUNS_APP"

KIND_AZURE_OPENAI = "azure_openai"
KIND_FOUNDRY_AGENTS = "foundry_agents"
KIND_OPENAI = "openai"
KINDS = (KIND_AZURE_OPENAI, KIND_FOUNDRY_AGENTS, KIND_OPENAI)

AUTH_API_KEY = "api_key"
AUTH_ENTRA = "entra"
AUTHS = (AUTH_API_KEY, AUTH_ENTRA)

#: api-version used when a connection leaves ``API_VERSION`` unset. OpenAI has none.
DEFAULT_API_VERSIONS = {
    KIND_AZURE_OPENAI: "2024-08-01-preview",
    KIND_FOUNDRY_AGENTS: "2025-05-01",
    KIND_OPENAI: None,
}

#: The api-versions each kind is known to serve the Assistants protocol on (check runs_app.W003 warns on others):
#: Azure OpenAI's Assistants v1/v2 previews, and the three Foundry classic agents values seen in Microsoft's own
#: SDK traffic (protocol.md §10).
KNOWN_API_VERSIONS = {
    KIND_AZURE_OPENAI: (
        "2024-02-15-preview", "2024-03-01-preview", "2024-04-01-preview", "2024-05-01-preview", "2024-07-01-preview",
        "2024-08-01-preview", "2024-09-01-preview", "2024-10-01-preview", "2024-12-01-preview", "2025-01-01-preview",
        "2025-02-01-preview", "2025-03-01-preview", "2025-04-01-preview",
    ),
    KIND_FOUNDRY_AGENTS: ("2025-05-01", "2025-05-15-preview", "v1"),
    KIND_OPENAI: (),
}

#: Whether a connection lists the service's threads (``GET /threads``) to find conversations started elsewhere,
#: when ``DISCOVER_THREADS`` is left unset: Foundry documents the listing; Azure OpenAI answers it undocumented;
#: OpenAI never offered it.
DEFAULT_DISCOVER_THREADS = {KIND_AZURE_OPENAI: False, KIND_FOUNDRY_AGENTS: True, KIND_OPENAI: False}

#: Top-level keys of ``RUNS_APP`` and their defaults. Documented in docs/configuration.md (a test checks the table).
DEFAULTS = {
    # Named remote services. Each entry: see CONNECTION_DEFAULTS.
    "CONNECTIONS": {},
    # The connection used when a request does not name one.
    "DEFAULT_CONNECTION": "default",
    # Seconds to wait for a connection / for each read from the service.
    "CONNECT_TIMEOUT": 5.0,
    "READ_TIMEOUT": 60.0,
    # Seconds a stream may stay silent before it is given up (the service sends no heartbeats).
    "STREAM_IDLE_TIMEOUT": 120.0,
    # Retries of one request after a connection error, timeout, 408, 409, 429 or 5xx.
    "MAX_RETRIES": 2,
    # The longest server-requested delay (retry-after) waited inside a request; longer ones raise
    # RateLimited with the delay, for the caller to reschedule.
    "RETRY_AFTER_CAP": 60.0,
    # --- the poller (runs_app/poller/) ---
    # The first look at a run after it was created or changed by an action or a stream (it starts within ~1 s).
    "POLL_FAST": 1.0,
    # Seconds between looks at an active run whose change may come any time: the longest the mirror lags it.
    "POLL_INTERVAL": 2.0,
    # Seconds unchanged after which an active run is looked at less and less often (1 s more per 10 s), up to
    # POLL_SLOW.
    "ACTIVE_WINDOW": 300.0,
    # The slowest poll of an unchanged active run, and the poll of a run waiting in requires_action.
    "POLL_SLOW": 15.0,
    "POLL_WAITING": 5.0,
    # Poll loops ("lanes") running at once across all q clusters, threads per lane, runs claimed per pass.
    "POLLER_LANES": 1,
    "POLL_THREADS": 4,
    "CLAIM_BATCH": 50,
    # Seconds a claim holds before another lane may take the run (a crashed worker's claims lapse).
    "CLAIM_LEASE": 30.0,
    # Seconds one lane task runs before handing over to its successor (below the q cluster's timeout).
    "CYCLE_SECONDS": 20.0,
    # Seconds without a heartbeat after which a lane counts as dead (its worker killed) and is started again
    # by the lane watcher in the q workers, a new run, or the watchdog. A live lane beats every fifth of this.
    "LANE_STALE_AFTER": 15.0,
    # Listing a tracked thread's runs to discover runs created elsewhere: first and longest interval.
    "DISCOVERY_INTERVAL": 30.0,
    "DISCOVERY_MAX_INTERVAL": 600.0,
    # Seconds in a status after which a run is flagged stuck, and the warning horizon before expires_at.
    "STUCK_AFTER": {"queued": 120, "in_progress": 600, "cancelling": 120},
    "EXPIRING_WITHIN": 120.0,
    # /healthz: a connection that made no call for this many seconds is probed (one cheap call) by the check.
    "HEALTH_PROBE_AFTER": 15.0,
    # /metrics: a bearer token Prometheus sends (Authorization: Bearer …); without it, staff users only.
    "METRICS_TOKEN": "",
    # Create the per-minute watchdog schedule (django-q2) on migrate; run the lane watcher in q workers.
    "POLLER_AUTOSTART": True,
    # --- live pages (runs_app/web/) ---
    # Seconds of silence after which a live feed sends a heartbeat comment; a client that left is noticed within
    # one heartbeat (at once on runserver and gunicorn, which expose the client's socket).
    "LIVE_HEARTBEAT": 15.0,
    # Live feeds (GET …/live/runs/<id>/events) one user may hold open in one server process; more are refused
    # with 429. A live page holds one; each holds a server thread and a database connection.
    "LIVE_MAX_FEEDS_PER_USER": 8,
    # The API's permission policy: dotted paths of DRF permission classes.
    "API_PERMISSION_CLASSES": ["runs_app.api.permissions.IsRunsOperator"],
}

#: Keys of one ``RUNS_APP["CONNECTIONS"][name]`` entry and their defaults.
CONNECTION_DEFAULTS = {
    # azure_openai | foundry_agents | openai
    "KIND": KIND_AZURE_OPENAI,
    # Azure: https://{resource}.openai.azure.com; Foundry: the project endpoint
    # https://{resource}.services.ai.azure.com/api/projects/{project}; OpenAI: https://api.openai.com
    "ENDPOINT": "",
    # None: the kind's default (DEFAULT_API_VERSIONS).
    "API_VERSION": None,
    # api_key | entra. Foundry classic agents accept Entra ID only.
    "AUTH": AUTH_API_KEY,
    # Required when AUTH is api_key.
    "API_KEY": "",
    # Entra ID token scope; None: the kind's default.
    "ENTRA_SCOPE": None,
    # List the service's threads every DISCOVERY_INTERVAL and follow the new ones; None: the kind's default
    # (on for foundry_agents). Only threads created within DISCOVER_THREADS_SINCE seconds are taken.
    "DISCOVER_THREADS": None,
    "DISCOVER_THREADS_SINCE": 86400.0,
    # The poller's request budget for this connection, shared by every lane of every process (runs_app.poller.budget).
    "MAX_REQUESTS_PER_SECOND": 1000.0,
}

DEFAULT_ENTRA_SCOPES = {
    KIND_AZURE_OPENAI: "https://cognitiveservices.azure.com/.default",
    KIND_FOUNDRY_AGENTS: "https://ai.azure.com/.default",
    KIND_OPENAI: None,
}


#: Settings read as numbers: seconds (float) and counts (int). A value of another kind is left as given, for the
#: system checks to report (runs_app.E011).
SECONDS = frozenset({
    "CONNECT_TIMEOUT", "READ_TIMEOUT", "STREAM_IDLE_TIMEOUT", "RETRY_AFTER_CAP", "POLL_FAST", "POLL_INTERVAL",
    "ACTIVE_WINDOW",
    "POLL_SLOW", "POLL_WAITING", "CLAIM_LEASE", "CYCLE_SECONDS", "LANE_STALE_AFTER", "DISCOVERY_INTERVAL",
    "DISCOVERY_MAX_INTERVAL", "EXPIRING_WITHIN", "HEALTH_PROBE_AFTER", "DISCOVER_THREADS_SINCE",
    "MAX_REQUESTS_PER_SECOND", "LIVE_HEARTBEAT",
})
COUNTS = frozenset({"MAX_RETRIES", "POLLER_LANES", "POLL_THREADS", "CLAIM_BATCH", "LIVE_MAX_FEEDS_PER_USER"})


def typed(name: str, value):
    """The value as the type the setting has (float seconds, int counts), once, where it is read."""
    kind = float if name in SECONDS else int if name in COUNTS else None
    if kind is None or isinstance(value, bool):
        return value
    try:
        return kind(value)
    except (TypeError, ValueError):
        return value


class AppSettings:
    """Attribute access to ``settings.RUNS_APP`` merged over ``DEFAULTS``, read on first use."""

    def __init__(self, defaults=None):
        self._defaults = defaults or DEFAULTS
        self._cached = None

    @property
    def user_settings(self) -> dict:
        value = getattr(settings, SETTING_NAME, {})
        return value if isinstance(value, dict) else {}

    def _load(self) -> dict:
        if self._cached is None:
            merged = copy.deepcopy(self._defaults)
            merged.update({k: v for k, v in self.user_settings.items() if k in self._defaults})
            self._cached = {k: typed(k, v) for k, v in merged.items()}
        return self._cached

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in self._defaults:
            raise AttributeError(f"Invalid RUNS_APP setting: {name!r}")
        return self._load()[name]

    def connection(self, name: str | None = None) -> dict:
        """One connection's settings with defaults filled in (the raw dict is never mutated)."""
        name = name or self.DEFAULT_CONNECTION
        raw = self.CONNECTIONS.get(name)
        if raw is None:
            raise KeyError(f"RUNS_APP['CONNECTIONS'] has no connection named {name!r}")
        merged = {**CONNECTION_DEFAULTS, **raw}
        kind = merged["KIND"]
        if merged["API_VERSION"] is None:
            merged["API_VERSION"] = DEFAULT_API_VERSIONS.get(kind)
        if merged["ENTRA_SCOPE"] is None:
            merged["ENTRA_SCOPE"] = DEFAULT_ENTRA_SCOPES.get(kind)
        if merged["DISCOVER_THREADS"] is None:
            merged["DISCOVER_THREADS"] = DEFAULT_DISCOVER_THREADS.get(kind, False)
        for key in ("DISCOVER_THREADS_SINCE", "MAX_REQUESTS_PER_SECOND"):
            merged[key] = typed(key, merged[key])
        return merged

    def connections_discovering_threads(self) -> list[str]:
        """The connections whose threads are listed to find new conversations (``DISCOVER_THREADS``)."""
        return [name for name in self.CONNECTIONS if self.connection(name)["DISCOVER_THREADS"]]

    def reload(self):
        self._cached = None


app_settings = AppSettings()


def _reload_on_change(*, setting, **kwargs):
    if setting == SETTING_NAME:
        app_settings.reload()


setting_changed.connect(_reload_on_change)
