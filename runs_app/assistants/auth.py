"""Credentials per connection: an API key header, or an Entra ID bearer token from azure-identity."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from runs_app.assistants.errors import ConfigurationError

#: A cached token is refreshed this many seconds before it expires.
REFRESH_MARGIN = 300


class ApiKeyAuth:
    """``api-key: KEY`` (Azure OpenAI) or ``Authorization: Bearer KEY`` (OpenAI)."""

    def __init__(self, key: str, *, header: str):
        self._key = key
        self._header = header

    def headers(self) -> dict[str, str]:
        if self._header == "authorization":
            return {"Authorization": f"Bearer {self._key}"}
        return {"api-key": self._key}

    def __repr__(self) -> str:
        return f"<ApiKeyAuth header={self._header!r} key=***>"


class EntraAuth:
    """A bearer token from any azure-identity ``TokenCredential``, cached and refreshed before expiry."""

    def __init__(self, scope: str, *, credential=None, clock: Callable[[], float] = time.time):
        if credential is None:
            credential = default_credential()
        self._credential = credential
        self._scope = scope
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_on = 0.0

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._current_token()}"}

    def _current_token(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_on - REFRESH_MARGIN:
                access = self._credential.get_token(self._scope)
                self._token, self._expires_on = access.token, float(access.expires_on)
            return self._token

    def invalidate(self) -> None:
        """Forget the cached token (after a 401), so the next request fetches a new one."""
        with self._lock:
            self._token = None

    def __repr__(self) -> str:
        return f"<EntraAuth scope={self._scope!r} credential={type(self._credential).__name__} token=***>"


def default_credential():
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError as exc:
        raise ConfigurationError(
            "AUTH = 'entra' needs azure-identity, which is not installed: pip install 'django-runs-app[entra]'."
        ) from exc
    return DefaultAzureCredential()
