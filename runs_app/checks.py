"""System checks for ``settings.RUNS_APP``. Every message names the exact key to set."""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.utils.module_loading import import_string

from runs_app.conf import (
    AUTH_API_KEY,
    AUTH_ENTRA,
    AUTHS,
    CONNECTION_DEFAULTS,
    DEFAULT_API_VERSIONS,
    DEFAULTS,
    KIND_FOUNDRY_AGENTS,
    KIND_OPENAI,
    KINDS,
    KNOWN_API_VERSIONS,
    SETTING_NAME,
)

API_VERSION_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}(-preview)?|v1)$")


def _key(*parts: str) -> str:
    return SETTING_NAME + "".join(f"[{p!r}]" for p in parts)


@register("runs_app")
def check_runs_app_settings(app_configs=None, **kwargs):
    raw = getattr(settings, SETTING_NAME, None)
    if raw is None:
        return [
            Error(
                f"{SETTING_NAME} is not set.",
                hint=f"Add {SETTING_NAME} = {{'CONNECTIONS': {{'default': {{...}}}}}} to your settings "
                "(see docs/configuration.md).",
                id="runs_app.E001",
            )
        ]
    if not isinstance(raw, dict):
        return [Error(f"{SETTING_NAME} must be a dict, not {type(raw).__name__}.", id="runs_app.E001")]

    errors = []
    for key in sorted(set(raw) - set(DEFAULTS)):
        errors.append(
            Error(
                f"Unknown setting {_key(key)}.",
                hint="Valid keys: " + ", ".join(sorted(DEFAULTS)) + ".",
                id="runs_app.E002",
            )
        )
    errors += _check_numbers(raw)

    connections = raw.get("CONNECTIONS", {})
    if not isinstance(connections, dict) or not connections:
        errors.append(
            Error(
                f"{_key('CONNECTIONS')} must name at least one connection.",
                hint=f"Set {_key('CONNECTIONS', 'default')} = {{'KIND': 'azure_openai', 'ENDPOINT': ..., "
                "'API_KEY': ...}.",
                id="runs_app.E003",
            )
        )
        return errors
    default = raw.get("DEFAULT_CONNECTION", DEFAULTS["DEFAULT_CONNECTION"])
    if default not in connections:
        errors.append(
            Error(
                f"{_key('DEFAULT_CONNECTION')} is {default!r}, which is not in {_key('CONNECTIONS')}.",
                hint=f"Add {_key('CONNECTIONS', str(default))} or set {_key('DEFAULT_CONNECTION')} to one of "
                + ", ".join(map(repr, connections))
                + ".",
                id="runs_app.E003",
            )
        )
    for name, conn in connections.items():
        errors += _check_connection(str(name), conn)
    return errors


def _check_numbers(raw: dict) -> list:
    errors = []
    for key in ("CONNECT_TIMEOUT", "READ_TIMEOUT", "STREAM_IDLE_TIMEOUT", "RETRY_AFTER_CAP", "POLL_FAST",
                "POLL_INTERVAL",
                "ACTIVE_WINDOW", "POLL_SLOW", "POLL_WAITING", "CLAIM_LEASE", "CYCLE_SECONDS", "DISCOVERY_INTERVAL",
                "DISCOVERY_MAX_INTERVAL", "EXPIRING_WITHIN", "LANE_STALE_AFTER", "HEALTH_PROBE_AFTER",
                "LIVE_HEARTBEAT"):
        value = raw.get(key, DEFAULTS[key])
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            errors.append(Error(f"{_key(key)} must be a positive number of seconds, not {value!r}.",
                                id="runs_app.E011"))
    for key, minimum in (("MAX_RETRIES", 0), ("POLLER_LANES", 1), ("POLL_THREADS", 1), ("CLAIM_BATCH", 1),
                         ("LIVE_MAX_FEEDS_PER_USER", 1)):
        value = raw.get(key, DEFAULTS[key])
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            errors.append(Error(f"{_key(key)} must be a whole number ≥ {minimum}, not {value!r}.",
                                id="runs_app.E011"))
    stuck = raw.get("STUCK_AFTER", DEFAULTS["STUCK_AFTER"])
    if not isinstance(stuck, dict) or not all(
        k in ("queued", "in_progress", "cancelling") and isinstance(v, int | float) and v > 0 for k, v in stuck.items()
    ):
        errors.append(Error(f"{_key('STUCK_AFTER')} must map queued / in_progress / cancelling to seconds.",
                            id="runs_app.E011"))
    q_timeout = (getattr(settings, "Q_CLUSTER", None) or {}).get("timeout")
    cycle = raw.get("CYCLE_SECONDS", DEFAULTS["CYCLE_SECONDS"])
    if isinstance(q_timeout, int | float) and isinstance(cycle, int | float) and q_timeout <= cycle + 5:
        errors.append(Error(
            f"Q_CLUSTER['timeout'] ({q_timeout} s) must exceed {_key('CYCLE_SECONDS')} ({cycle} s) by more than 5 s, "
            "or the q cluster kills every poll lane.",
            hint=f"Raise Q_CLUSTER['timeout'] or lower {_key('CYCLE_SECONDS')}.", id="runs_app.E012"))
    return errors


def _check_connection(name: str, conn) -> list:
    if not isinstance(conn, dict):
        return [Error(f"{_key('CONNECTIONS', name)} must be a dict.", id="runs_app.E004")]
    errors = []
    for key in sorted(set(conn) - set(CONNECTION_DEFAULTS)):
        errors.append(
            Error(
                f"Unknown setting {_key('CONNECTIONS', name, key)}.",
                hint="Valid keys: " + ", ".join(sorted(CONNECTION_DEFAULTS)) + ".",
                id="runs_app.E004",
            )
        )
    kind = conn.get("KIND", CONNECTION_DEFAULTS["KIND"])
    if kind not in KINDS:
        errors.append(
            Error(
                f"{_key('CONNECTIONS', name, 'KIND')} is {kind!r}.",
                hint="Set it to one of " + ", ".join(map(repr, KINDS)) + ".",
                id="runs_app.E005",
            )
        )
    endpoint = conn.get("ENDPOINT") or ""
    parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
    if not parts or parts.scheme not in ("http", "https") or not parts.hostname:
        errors.append(
            Error(
                f"{_key('CONNECTIONS', name, 'ENDPOINT')} is missing or not an http(s) URL.",
                hint="Set it to the service's base URL, e.g. https://my-resource.openai.azure.com "
                "(Azure OpenAI) or https://my-resource.services.ai.azure.com/api/projects/my-project (Foundry).",
                id="runs_app.E006",
            )
        )
    auth = conn.get("AUTH", CONNECTION_DEFAULTS["AUTH"])
    if auth not in AUTHS:
        errors.append(
            Error(
                f"{_key('CONNECTIONS', name, 'AUTH')} is {auth!r}.",
                hint="Set it to 'api_key' or 'entra'.",
                id="runs_app.E008",
            )
        )
    elif auth == AUTH_API_KEY and kind == KIND_FOUNDRY_AGENTS and not (parts and _is_loopback(parts.hostname or "")):
        # (The bundled emulator, on loopback, takes the key as the bearer token Foundry expects.)
        errors.append(
            Error(
                f"{_key('CONNECTIONS', name, 'AUTH')} is 'api_key', but Foundry classic agents accept Entra ID only.",
                hint=f"Set {_key('CONNECTIONS', name, 'AUTH')} = 'entra' and install the 'entra' extra.",
                id="runs_app.E008",
            )
        )
    elif auth == AUTH_API_KEY and not conn.get("API_KEY"):
        errors.append(
            Error(
                f"{_key('CONNECTIONS', name, 'API_KEY')} is missing.",
                hint=f"Set it to the service's key, or set {_key('CONNECTIONS', name, 'AUTH')} = 'entra' to use "
                "Entra ID.",
                id="runs_app.E007",
            )
        )
    elif auth == AUTH_ENTRA and importlib.util.find_spec("azure.identity") is None:
        errors.append(
            Error(
                f"{_key('CONNECTIONS', name, 'AUTH')} is 'entra', but azure-identity is not installed.",
                hint="pip install 'django-runs-app[entra]'.",
                id="runs_app.E009",
            )
        )
    version = conn.get("API_VERSION")
    if version is not None and (not isinstance(version, str) or not API_VERSION_RE.match(version)):
        errors.append(
            Error(
                f"{_key('CONNECTIONS', name, 'API_VERSION')} is {version!r}.",
                hint="Use an api-version such as '2024-08-01-preview' (Azure OpenAI) or '2025-05-01' (Foundry), "
                "or leave it unset for the kind's default.",
                id="runs_app.E010",
            )
        )
    elif version is not None and kind in KINDS and version not in KNOWN_API_VERSIONS[kind]:
        if kind == KIND_OPENAI:
            message = f"{_key('CONNECTIONS', name, 'API_VERSION')} is set, but OpenAI takes no api-version."
        else:
            known = ", ".join(KNOWN_API_VERSIONS[kind])
            message = (f"{_key('CONNECTIONS', name, 'API_VERSION')} is {version!r}, which {kind} is not known to "
                       f"serve the Assistants protocol on (known: {known}).")
        errors.append(
            Warning(
                message,
                hint=f"Leave it unset for the kind's default ({DEFAULT_API_VERSIONS[kind] or 'none'}), or check "
                "the service's documentation; an api-version the service does not serve answers 404 to every call.",
                id="runs_app.W003",
            )
        )
    errors += _check_thread_discovery(name, conn, kind)
    return errors


def _check_thread_discovery(name: str, conn: dict, kind: str) -> list:
    errors = []
    discover = conn.get("DISCOVER_THREADS")
    if discover is not None and not isinstance(discover, bool):
        errors.append(Error(f"{_key('CONNECTIONS', name, 'DISCOVER_THREADS')} must be True, False or None "
                            f"(the kind's default), not {discover!r}.", id="runs_app.E013"))
    elif discover and kind == KIND_OPENAI:
        errors.append(Error(f"{_key('CONNECTIONS', name, 'DISCOVER_THREADS')} is True, but OpenAI cannot list "
                            "threads.", hint="Remove the key (or set it to False).", id="runs_app.E013"))
    rate = conn.get("MAX_REQUESTS_PER_SECOND", CONNECTION_DEFAULTS["MAX_REQUESTS_PER_SECOND"])
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
        errors.append(Error(f"{_key('CONNECTIONS', name, 'MAX_REQUESTS_PER_SECOND')} must be a positive number of "
                            f"requests per second, not {rate!r}.", id="runs_app.E011"))
    since = conn.get("DISCOVER_THREADS_SINCE", CONNECTION_DEFAULTS["DISCOVER_THREADS_SINCE"])
    if isinstance(since, bool) or not isinstance(since, int | float) or since <= 0:
        errors.append(Error(f"{_key('CONNECTIONS', name, 'DISCOVER_THREADS_SINCE')} must be a positive number of "
                            f"seconds, not {since!r}.", id="runs_app.E013"))
    return errors


@register("runs_app")
def check_api_permission_classes(app_configs=None, **kwargs):
    errors = []
    if hasattr(settings, "RUNS_APP_API_PERMISSION_CLASSES"):
        errors.append(Error("RUNS_APP_API_PERMISSION_CLASSES is no longer read.",
                            hint=f"Move it into the one settings dict: {_key('API_PERMISSION_CLASSES')}.",
                            id="runs_app.E014"))
    raw = getattr(settings, SETTING_NAME, None)
    paths = raw.get("API_PERMISSION_CLASSES") if isinstance(raw, dict) else None
    if paths is None:
        return errors
    if not isinstance(paths, list | tuple) or not all(isinstance(p, str) for p in paths):
        return [*errors, Error(f"{_key('API_PERMISSION_CLASSES')} must be a list of dotted paths.",
                               id="runs_app.E014")]
    for path in paths:
        try:
            import_string(path)
        except ImportError as exc:
            errors.append(Error(f"{_key('API_PERMISSION_CLASSES')} names {path!r}, which cannot be imported: {exc}",
                                id="runs_app.E014"))
    return errors


@register("runs_app", Tags.security, deploy=True)
def check_runs_app_deploy(app_configs=None, **kwargs):
    """Only with --deploy: a key sent over plain HTTP to another machine."""
    raw = getattr(settings, SETTING_NAME, None)
    if not isinstance(raw, dict) or not isinstance(raw.get("CONNECTIONS"), dict):
        return []
    warnings = []
    for name, conn in raw["CONNECTIONS"].items():
        if not isinstance(conn, dict) or not isinstance(conn.get("ENDPOINT"), str):
            continue
        parts = urlsplit(conn["ENDPOINT"])
        if parts.scheme == "http" and parts.hostname and not _is_loopback(parts.hostname):
            warnings.append(
                Warning(
                    f"{_key('CONNECTIONS', str(name), 'ENDPOINT')} uses plain http to {parts.hostname}: credentials "
                    "would cross the network unencrypted.",
                    hint="Use an https:// endpoint.",
                    id="runs_app.W001",
                )
            )
    return warnings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@register("runs_app")
def check_middleware(app_configs=None, **kwargs):
    """Django's GZipMiddleware would hold back the live relay's events until a gzip block fills."""
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if "django.middleware.gzip.GZipMiddleware" in middleware:
        return [
            Warning(
                "django.middleware.gzip.GZipMiddleware compresses the live pages' event streams, so their events "
                "reach the browser late, in bursts.",
                hint="Replace it in MIDDLEWARE with runs_app.middleware.GZipMiddleware (the same, except for "
                "text/event-stream responses).",
                id="runs_app.W002",
            )
        ]
    return []
