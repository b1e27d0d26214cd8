"""An App Service–style managed identity token endpoint on loopback, for azure-identity's ManagedIdentityCredential.

With ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` set (and no ``IDENTITY_SERVER_THUMBPRINT``, which would mean
Service Fabric), ``ManagedIdentityCredential()`` asks msal to fetch its token from App Service's endpoint:

    GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<scope without /.default>
    X-IDENTITY-HEADER: {IDENTITY_HEADER}

and expects ``{"access_token", "expires_on" (epoch seconds), "resource", "token_type"}``
(msal ``managed_identity._obtain_token_on_app_service``). This endpoint grants, as its access token, the
emulator's api key: the emulator's Foundry dialect accepts a Bearer token iff it equals its key.

The ``managed_identity`` fixture reaches a suite through its conftest (this package's conftest imports it; the
project's ``tests/conftest.py`` names ``tests.identity``, which re-exports it, in ``pytest_plugins``) and needs the
``emulator`` fixture of ``assistants_emulator.pytest_plugin``. Without pytest: ``serve_managed_identity(token)``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

__all__ = ["IDENTITY_HEADER_SECRET", "ManagedIdentityEndpoint", "managed_identity", "serve_managed_identity"]

# The secret App Service puts in IDENTITY_HEADER. "cnry7": CI greps every log of a test run for it.
IDENTITY_HEADER_SECRET = "mi-hdr-0-cnry7-3f9d2c71a8e4"
APP_SERVICE_API_VERSION = "2019-08-01"
TOKEN_LIFETIME = 3600


class ManagedIdentityEndpoint:
    """What the tests see: where the endpoint listens, the token it grants, and who asked for what."""

    def __init__(self, token: str, secret: str = IDENTITY_HEADER_SECRET):
        self.token = token
        self.secret = secret
        self.endpoint = ""
        self.requests: list[str] = []    # the `resource` of every token granted, in order
        self.refused = 0                 # requests turned away (wrong method, header, api-version or resource)
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        """Every request the endpoint answered, granted or refused."""
        with self._lock:
            return len(self.requests) + self.refused

    def __repr__(self) -> str:   # never show the token or the secret
        return f"<ManagedIdentityEndpoint {self.endpoint} granted={len(self.requests)} refused={self.refused}>"


def _handler(state: ManagedIdentityEndpoint):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):   # noqa: A002 - the stdlib's signature
            pass   # the request line is harmless, but this endpoint stays silent like every credential path

        def _answer(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _refuse(self, status: int, message: str) -> None:
            with state._lock:
                state.refused += 1
            # App Service's error body; msal reports statusCode and message.
            self._answer(status, {"statusCode": status, "message": message})

        def do_GET(self):   # noqa: N802 - the stdlib's naming
            query = parse_qs(urlsplit(self.path).query)
            if self.headers.get("X-IDENTITY-HEADER") != state.secret:
                return self._refuse(401, "The X-IDENTITY-HEADER header is missing or wrong.")
            if query.get("api-version") != [APP_SERVICE_API_VERSION]:
                return self._refuse(400, f"api-version must be {APP_SERVICE_API_VERSION}.")
            resource = (query.get("resource") or [""])[-1]
            if not resource:
                return self._refuse(400, "The resource parameter is required.")
            with state._lock:
                state.requests.append(resource)
            self._answer(200, {"access_token": state.token, "expires_on": str(int(time.time()) + TOKEN_LIFETIME),
                               "resource": resource, "token_type": "Bearer", "client_id": "emulated-app-service-mi"})

        def _not_get(self):
            self._refuse(405, "Only GET is supported.")

        do_POST = do_PUT = do_DELETE = do_PATCH = _not_get

    return Handler


@contextlib.contextmanager
def serve_managed_identity(token: str, secret: str = IDENTITY_HEADER_SECRET):
    """Serve the token endpoint on 127.0.0.1 in a thread; yields a ManagedIdentityEndpoint (env vars untouched)."""
    state = ManagedIdentityEndpoint(token, secret)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="managed-identity", daemon=True)
    thread.start()
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}/msi/token"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def managed_identity(emulator, monkeypatch):
    """An App Service managed identity whose token is the emulator's api key; IDENTITY_* env vars point at it."""
    with serve_managed_identity(emulator.api_key) as state:
        monkeypatch.setenv("IDENTITY_ENDPOINT", state.endpoint)
        monkeypatch.setenv("IDENTITY_HEADER", state.secret)
        # With a thumbprint azure-identity would pick Service Fabric instead of App Service.
        monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
        yield state
