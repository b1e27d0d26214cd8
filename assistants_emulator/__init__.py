"""A faithful, stdlib-only emulator of the Assistants protocol (threads / runs / steps / messages).

It serves the Azure OpenAI Assistants (``/openai/...?api-version=``), Foundry classic agents
(``/api/projects/{project}/...``) and OpenAI (``/v1/...``) wire formats from one base URL.

    url, handle = serve_in_thread(api_key="k", speed=50)
    ...
    handle.stop()

See assistants_emulator/README.md for the scripted model's triggers and the control endpoint.
"""

from __future__ import annotations

import threading

from .engine import Store
from .faults import FaultInjector, describe
from .server import EmulatorHTTPServer

__all__ = ["serve_in_thread", "EmulatorHandle", "Store"]


class EmulatorHandle:
    """A running emulator: its URL, its in-memory state, and controls for tests."""

    def __init__(self, server: EmulatorHTTPServer, thread: threading.Thread, api_key: str | None):
        self._server = server
        self._thread = thread
        self.api_key = api_key
        host, port = server.server_address[:2]
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.state: Store = server.store
        self._stopped = False

    # Endpoints for the three wire formats (the openai SDK's AzureOpenAI appends /openai itself).
    @property
    def azure_endpoint(self) -> str:
        return self.url

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    def foundry_endpoint(self, project: str = "demo") -> str:
        return f"{self.url}/api/projects/{project}"

    # Controls.
    def set_faults(self, spec) -> dict:
        return describe(self._server.faults.set(spec))

    def faults(self) -> dict:
        return describe(self._server.faults.config)

    def faults_injected(self) -> dict:
        """The faults injected since the last ``set_faults``/``reset``, by kind (e.g. ``{"drop": 1}``)."""
        return dict(self._server.faults.injected)

    def events(self, since: int = 0) -> list:
        """The state-change record: every status change of runs, steps and messages, in order."""
        return self.state.events_since(since)

    def reset(self) -> None:
        """Forget every object and event; faults go back to the start-up configuration."""
        self.state.reset()
        self._server.faults.reset()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.stopping = True
        self._server.shutdown()
        self._server.server_close()
        self._server.close_all()
        self.state.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> EmulatorHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmulatorHandle {self.url}>"


def make_server(host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None, speed: float = 1.0,
                expire_after: float = 600, faults=None, seed: int = 0, control: bool = False) -> EmulatorHTTPServer:
    store = Store(speed=speed, expire_after=expire_after, seed=seed)
    injector = FaultInjector(faults, seed=seed)
    try:
        return EmulatorHTTPServer((host, port), store=store, faults=injector, api_key=api_key, control=control)
    except Exception:
        store.close()
        raise


def serve_in_thread(host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None, speed: float = 1.0,
                    expire_after: float = 600, faults=None, seed: int = 0, control: bool = False):
    """Start the emulator on a daemon thread. Returns ``(url, handle)``; ``handle.stop()`` shuts it down."""
    server = make_server(host, port, api_key=api_key, speed=speed, expire_after=expire_after, faults=faults,
                         seed=seed, control=control)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="emulator-http", daemon=True)
    thread.start()
    handle = EmulatorHandle(server, thread, api_key)
    return handle.url, handle
