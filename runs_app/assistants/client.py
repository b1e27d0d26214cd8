"""``AssistantsClient``: the one place that speaks HTTP to an Assistants-protocol service.

Built from a named ``RUNS_APP["CONNECTIONS"]`` entry. Returns the service's JSON objects as dicts and
raises the ladder in ``runs_app.assistants.errors``. See docs/client.md for the
retry and duplicate-run rules.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import requests
import urllib3
from django.core.signals import setting_changed

import runs_app
from runs_app.assistants import errors
from runs_app.assistants.auth import ApiKeyAuth, EntraAuth
from runs_app.assistants.retries import backoff_delay, server_retry_after, should_retry
from runs_app.assistants.streaming import EventStream
from runs_app.conf import AUTH_ENTRA, KIND_AZURE_OPENAI, KIND_FOUNDRY_AGENTS, KIND_OPENAI, app_settings

logger = logging.getLogger("runs_app.client")

#: Metadata key that tags a create request, so that after a lost response the run can be found
#: instead of being created twice.
REQUEST_TAG = "runs_app_request_id"
#: How many of a thread's newest runs/messages are searched for a tagged create after a lost response.
TAG_SEARCH_WINDOW = 20

RUN_FIELDS = frozenset({
    "model", "instructions", "additional_instructions", "additional_messages", "tools", "metadata",
    "temperature", "top_p", "max_prompt_tokens", "max_completion_tokens", "truncation_strategy",
    "tool_choice", "response_format", "parallel_tool_calls",
})
THREAD_AND_RUN_FIELDS = (RUN_FIELDS - {"additional_instructions", "additional_messages"}) | {"tool_resources"}
KIND_LABELS = {KIND_AZURE_OPENAI: "Azure OpenAI", KIND_FOUNDRY_AGENTS: "Foundry agents", KIND_OPENAI: "OpenAI"}

_sessions = threading.local()


def _session_for(connection: str, endpoint: str) -> requests.Session:
    """One pooled session per connection and thread (requests.Session is not thread-safe)."""
    pool = _sessions.__dict__.setdefault("by_connection", {})
    session = pool.get((connection, endpoint))
    if session is None:
        session = requests.Session()
        # Proxy and CA-bundle environment variables are read once here, not on every request (requests
        # re-reads them, and ~/.netrc, per request when trust_env is on: a large share of a poll's cost).
        session.proxies.update(requests.utils.get_environ_proxies(endpoint))
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        session.trust_env = False
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        pool[(connection, endpoint)] = session
    return session


_entra_lock = threading.Lock()
_entra_auths: dict[tuple[str, str, str], EntraAuth] = {}


def shared_entra_auth(connection: str, endpoint: str, scope: str) -> EntraAuth:
    """One credential and cached token per connection and process: a client is made for every poll, and a new
    DefaultAzureCredential would ask the identity endpoint (IMDS, App Service…) for a token each time."""
    key = (connection, endpoint, scope)
    with _entra_lock:
        auth = _entra_auths.get(key)
        if auth is None:
            auth = _entra_auths[key] = EntraAuth(scope)
        return auth


def forget_shared_credentials(**_signal_kwargs) -> None:
    """Drop the shared credentials (connected to ``setting_changed``: a connection may have changed)."""
    with _entra_lock:
        _entra_auths.clear()


setting_changed.connect(forget_shared_credentials)


class _Uncertain(Exception):
    """Internal: the request may have taken effect; carries the error to raise if it cannot be settled."""

    def __init__(self, error: errors.AssistantsError):
        super().__init__(str(error))
        self.error = error


class AssistantsClient:
    """A client for one named connection.

    ``credential`` replaces azure-identity's DefaultAzureCredential (any TokenCredential); ``budget`` paces every
    attempt (``acquire()``) and hears of every 429 (``rate_limited(seconds)``); ``rng``,
    ``sleep`` and ``clock`` are injectable for tests; ``settings`` bypasses RUNS_APP (a connection dict
    with the keys of ``RUNS_APP["CONNECTIONS"][name]``).
    """

    def __init__(self, connection: str | None = None, *, settings: dict | None = None, credential=None,
                 rng: Callable[[], float] = random.random, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time, max_retries: int | None = None,
                 connect_timeout: float | None = None, read_timeout: float | None = None, budget=None,
                 wait_on_rate_limit: bool = True):
        self.connection = connection or app_settings.DEFAULT_CONNECTION
        conf = settings if settings is not None else app_settings.connection(self.connection)
        self.kind = conf["KIND"]
        self.endpoint = conf["ENDPOINT"].rstrip("/")
        self.api_version = conf.get("API_VERSION")
        self._base = _base_url(self.kind, self.endpoint)
        self._params = {"api-version": self.api_version} if self.kind != KIND_OPENAI and self.api_version else {}
        if conf.get("AUTH") == AUTH_ENTRA:
            scope = conf.get("ENTRA_SCOPE") or ""
            if credential is None and clock is time.time:
                self._auth = shared_entra_auth(self.connection, self.endpoint, scope)
            else:
                self._auth = EntraAuth(scope, credential=credential, clock=clock)
        else:
            header = "api-key" if self.kind == KIND_AZURE_OPENAI else "authorization"
            self._auth = ApiKeyAuth(conf.get("API_KEY") or "", header=header)
        self.connect_timeout = app_settings.CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        self.read_timeout = app_settings.READ_TIMEOUT if read_timeout is None else read_timeout
        self.stream_idle_timeout = app_settings.STREAM_IDLE_TIMEOUT
        self.max_retries = app_settings.MAX_RETRIES if max_retries is None else max_retries
        self.retry_after_cap = app_settings.RETRY_AFTER_CAP
        # A request budget (the poller's): ``acquire()`` before every attempt, ``rate_limited(seconds)`` on a 429.
        self._budget = budget
        # False: a 429 raises RateLimited at once instead of being waited out and resent, for a caller that has
        # other work meanwhile (a poll pass reschedules that run and goes on with the others).
        self.wait_on_rate_limit = wait_on_rate_limit
        self._rng, self._sleep, self._clock = rng, sleep, clock

    def __repr__(self) -> str:
        return f"<AssistantsClient connection={self.connection!r} kind={self.kind} endpoint={self.endpoint!r}>"

    # --- threads and messages ----------------------------------------------------------------------

    def create_thread(self, *, messages: list | None = None, tool_resources: dict | None = None,
                      metadata: dict | None = None) -> dict:
        # A resent create after a lost response can leave an empty orphan thread; no run is duplicated.
        body = _drop_none({"messages": messages, "tool_resources": tool_resources, "metadata": metadata})
        return self._request("POST", "/threads", json=body, idempotent=True)

    def list_threads(self, **params) -> dict:
        """``GET /threads``: documented by Foundry classic agents, answered undocumented by Azure OpenAI."""
        return self._request("GET", "/threads", params=_list_params(params))

    def retrieve_thread(self, thread_id: str) -> dict:
        return self._request("GET", f"/threads/{_id(thread_id)}")

    def create_message(self, thread_id: str, *, content: str | list, role: str = "user",
                       attachments: list | None = None, metadata: dict | None = None) -> dict:
        path = f"/threads/{_id(thread_id)}/messages"
        metadata, tag = _tagged(metadata)
        body = _drop_none({"role": role, "content": content, "attachments": attachments, "metadata": metadata})
        settle = self._find_tagged(f"{path}", tag) if tag else None
        return self._request("POST", path, json=body, settle=settle)

    def list_messages(self, thread_id: str, **params) -> dict:
        return self._request("GET", f"/threads/{_id(thread_id)}/messages", params=_list_params(params))

    def iter_messages(self, thread_id: str, **params) -> Iterator[dict]:
        return self._iterate(f"/threads/{_id(thread_id)}/messages", params)

    # --- assistants -------------------------------------------------------------------------------

    def create_assistant(self, *, model: str, name: str | None = None, instructions: str | None = None,
                         tools: list | None = None, metadata: dict | None = None, **fields) -> dict:
        # Not resent after a lost response: assistants cannot be searched by a tag, and a duplicate
        # assistant is the lesser harm than a guess.
        body = _drop_none({"model": model, "name": name, "instructions": instructions, "tools": tools,
                           "metadata": metadata, **fields})
        return self._request("POST", "/assistants", json=body)

    def retrieve_assistant(self, assistant_id: str) -> dict:
        return self._request("GET", f"/assistants/{_id(assistant_id)}")

    def list_assistants(self, **params) -> dict:
        return self._request("GET", "/assistants", params=_list_params(params))

    def iter_assistants(self, **params) -> Iterator[dict]:
        return self._iterate("/assistants", params)

    # --- runs -------------------------------------------------------------------------------------

    def create_run(self, thread_id: str, *, assistant_id: str, include: list[str] | None = None,
                   **fields) -> dict:
        return self._create_run(thread_id, assistant_id, include, fields, stream=False)

    def create_run_stream(self, thread_id: str, *, assistant_id: str, include: list[str] | None = None,
                          **fields) -> EventStream:
        return self._create_run(thread_id, assistant_id, include, fields, stream=True)

    def create_thread_and_run(self, *, assistant_id: str, thread: dict | None = None, **fields) -> dict:
        return self._create_thread_and_run(assistant_id, thread, fields, stream=False)

    def create_thread_and_run_stream(self, *, assistant_id: str, thread: dict | None = None,
                                     **fields) -> EventStream:
        return self._create_thread_and_run(assistant_id, thread, fields, stream=True)

    def list_runs(self, thread_id: str, **params) -> dict:
        return self._request("GET", f"/threads/{_id(thread_id)}/runs", params=_list_params(params))

    def iter_runs(self, thread_id: str, **params) -> Iterator[dict]:
        return self._iterate(f"/threads/{_id(thread_id)}/runs", params)

    def retrieve_run(self, thread_id: str, run_id: str) -> dict:
        return self._request("GET", _run_path(thread_id, run_id))

    def modify_run(self, thread_id: str, run_id: str, *, metadata: dict) -> dict:
        # Setting the same metadata twice is harmless: safe to resend.
        return self._request("POST", _run_path(thread_id, run_id), json={"metadata": metadata}, idempotent=True)

    def submit_tool_outputs(self, thread_id: str, run_id: str, *, tool_outputs: list[dict]) -> dict:
        return self._request(
            "POST", _run_path(thread_id, run_id) + "/submit_tool_outputs", json={"tool_outputs": tool_outputs},
            settle=self._settle_submitted(thread_id, run_id, tool_outputs),
        )

    def submit_tool_outputs_stream(self, thread_id: str, run_id: str, *, tool_outputs: list[dict]) -> EventStream:
        return self._request(
            "POST", _run_path(thread_id, run_id) + "/submit_tool_outputs",
            json={"tool_outputs": tool_outputs, "stream": True}, stream=True,
            settle=self._settle_submitted(thread_id, run_id, tool_outputs),
        )

    def cancel_run(self, thread_id: str, run_id: str) -> dict:
        def settle():
            run = self.retrieve_run(thread_id, run_id)
            return run if run["status"] in ("cancelling", "cancelled") else None

        return self._request("POST", _run_path(thread_id, run_id) + "/cancel", settle=settle)

    # --- run steps --------------------------------------------------------------------------------

    def list_run_steps(self, thread_id: str, run_id: str, *, include: list[str] | None = None, **params) -> dict:
        params = _list_params(params)
        if include:
            params["include[]"] = list(include)
        return self._request("GET", _run_path(thread_id, run_id) + "/steps", params=params)

    def iter_run_steps(self, thread_id: str, run_id: str, *, include: list[str] | None = None,
                       **params) -> Iterator[dict]:
        if include:
            params["include[]"] = list(include)
        return self._iterate(_run_path(thread_id, run_id) + "/steps", params)

    def retrieve_run_step(self, thread_id: str, run_id: str, step_id: str, *,
                          include: list[str] | None = None) -> dict:
        params = {"include[]": list(include)} if include else None
        return self._request("GET", _run_path(thread_id, run_id) + f"/steps/{_id(step_id)}", params=params)

    # --- run creation with the duplicate-run guard --------------------------------------------------

    def _create_run(self, thread_id, assistant_id, include, fields, *, stream):
        _check_fields(fields, RUN_FIELDS, "create_run")
        path = f"/threads/{_id(thread_id)}/runs"
        metadata, tag = _tagged(fields.pop("metadata", None))
        body = {"assistant_id": assistant_id, **fields, "metadata": metadata}
        if stream:
            body["stream"] = True
        params = {"include[]": list(include)} if include else None
        settle = self._find_tagged(path, tag) if tag else None
        return self._request("POST", path, json=body, params=params, stream=stream, settle=settle)

    def _create_thread_and_run(self, assistant_id, thread, fields, *, stream):
        _check_fields(fields, THREAD_AND_RUN_FIELDS, "create_thread_and_run")
        # One request, never a thread then a run: the service checks the whole request before it creates the
        # thread, so a refused run (unknown assistant, bad tool) leaves no empty thread behind. The thread and the
        # run carry the same request tag, so a lost response is settled by finding the thread among the newest
        # (``GET /threads``) and the run on it; where threads cannot be listed, it is not resent.
        metadata, tag = _tagged(fields.pop("metadata", None))
        thread = dict(thread or {})
        thread_metadata, thread_tag = _tagged(thread.get("metadata"), tag=tag)
        if thread_metadata is not None:
            thread["metadata"] = thread_metadata
        body = {"assistant_id": assistant_id, "thread": thread, **_drop_none(fields), "metadata": metadata}
        if stream:
            body["stream"] = True
        settle = self._find_tagged_thread_run(tag) if tag and thread_tag == tag else None
        return self._request("POST", "/threads/runs", json=body, stream=stream, settle=settle)

    def _find_tagged_thread_run(self, tag: str) -> Callable[[], dict | None]:
        def settle():
            threads = self._request("GET", "/threads", params={"limit": TAG_SEARCH_WINDOW, "order": "desc"})
            for thread in threads.get("data", []):
                if (thread.get("metadata") or {}).get(REQUEST_TAG) == tag:
                    return self._find_tagged(f"/threads/{_id(thread['id'])}/runs", tag)()
            return None

        return settle

    def _find_tagged(self, list_path: str, tag: str) -> Callable[[], dict | None]:
        def settle():
            page = self._request("GET", list_path, params={"limit": TAG_SEARCH_WINDOW, "order": "desc"})
            for item in page.get("data", []):
                if (item.get("metadata") or {}).get(REQUEST_TAG) == tag:
                    logger.info("%s %s: the lost create had taken effect as %s; not resent",
                                self.connection, list_path, item.get("id"))
                    return item
            return None

        return settle

    def _settle_submitted(self, thread_id, run_id, tool_outputs):
        def settle():
            run = self.retrieve_run(thread_id, run_id)
            pending = ((run.get("required_action") or {}).get("submit_tool_outputs") or {}).get("tool_calls") or []
            sent = {o.get("tool_call_id") for o in tool_outputs}
            if run["status"] != "requires_action" or not sent & {c.get("id") for c in pending}:
                return run  # the outputs were taken
            return None

        return settle

    # --- transport --------------------------------------------------------------------------------

    def _iterate(self, path: str, params: dict) -> Iterator[dict]:
        params = _list_params(params)
        params.setdefault("limit", 100)
        while True:
            page = self._request("GET", path, params=params)
            data = page.get("data") or []
            yield from data
            if not page.get("has_more") or not data:
                return
            # openai-python pages on the last item's id (the spec example's last_id is not reliable).
            params = {**params, "after": data[-1]["id"]}

    def _request(self, method: str, path: str, *, json: dict | None = None, params: dict | None = None,
                 stream: bool = False, idempotent: bool | None = None,
                 settle: Callable[[], Any] | None = None) -> Any:
        """Send with retries. ``idempotent`` (default: GET) requests are resent freely. Others are resent
        after a failure that may have taken effect only if ``settle`` finds they did not (it returns the
        result when they did), or if nothing could have happened (connect failure, 408, 409, 429)."""
        if idempotent is None:
            idempotent = method == "GET"
        context = {"connection": self.connection, "method": method, "path": path}
        retries_done = 0
        while True:
            try:
                return self._attempt(method, path, json, params, stream, retries_done + 1, context)
            except _Uncertain as uncertain:
                error = uncertain.error
                if not idempotent:
                    if settle is None:
                        raise error from None  # nothing can tell whether it happened: never resend blindly
                    try:
                        settled = settle()
                    except errors.AssistantsError:
                        raise error from None
                    if settled is not None:
                        if stream:
                            interrupted = errors.StreamInterrupted(
                                "The stream's response was lost but the request took effect; poll the run",
                                maybe_applied=True, **{**context, "request_id": error.request_id},
                            )
                            interrupted.result = settled
                            raise interrupted from error
                        return settled
                if retries_done >= self.max_retries:
                    raise error from None
                delay = backoff_delay(retries_done, self._rng)
            except _Retryable as retryable:
                if retries_done >= self.max_retries:
                    raise retryable.error from None
                delay = retryable.delay if retryable.delay is not None else backoff_delay(retries_done, self._rng)
            retries_done += 1
            logger.info("%s %s %s: retry %d of %d in %.2f s", self.connection, method, path, retries_done,
                        self.max_retries, delay)
            self._sleep(delay)

    def _attempt(self, method, path, json, params, stream, attempt, context):
        headers = {
            **self._auth.headers(),
            "Accept": "text/event-stream" if stream else "application/json",
            "User-Agent": f"runs_app/{runs_app.__version__}",
            "x-ms-client-request-id": str(uuid.uuid4()),
        }
        if self.kind == KIND_OPENAI:
            headers["OpenAI-Beta"] = "assistants=v2"
        query = {**self._params, **(params or {})}
        timeout = (self.connect_timeout, self.stream_idle_timeout if stream else self.read_timeout)
        if self._budget is not None:
            self._budget.acquire()
        started = time.monotonic()
        try:
            response = _session_for(self.connection, self.endpoint).request(
                method, self._base + path, params=query, json=json, headers=headers, timeout=timeout, stream=stream
            )
        except requests.exceptions.RequestException as exc:
            self._log(method, path, "-", started, attempt, None, failure=type(exc).__name__)
            raise self._transport_error(exc, context) from None
        request_id = _request_id(response.headers)
        context = {**context, "request_id": request_id}
        self._log(method, path, response.status_code, started, attempt, request_id)

        if response.status_code >= 400:
            self._raise_status(response, context)
        if stream and response.headers.get("content-type", "").startswith("text/event-stream"):
            return EventStream(response, context=context)
        try:
            return response.json()
        except (ValueError, requests.exceptions.RequestException):
            error = errors.MalformedResponse(
                f"The service answered {response.status_code} with a body that is not JSON",
                status=response.status_code, body_excerpt=response.text[:200] if response.content else "",
                **context,
            )
            raise _Uncertain(error) from None
        finally:
            response.close()

    def _raise_status(self, response: requests.Response, context: dict):
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = response.text[:500]
        finally:
            response.close()
        message, code, param, type_ = errors.parse_error_body(body)
        if message is None:
            message = (body.strip() if isinstance(body, str) and body.strip() else response.reason) or "no message"
        cls = errors.error_class_for(status)
        kwargs = {"status": status, "code": code, "param": param, "type": type_, "body": body, **context}
        retry_after = server_retry_after(response.headers, self._clock)
        if cls is errors.RateLimited:
            error = errors.RateLimited(message, retry_after=retry_after, **kwargs)
            if self._budget is not None:
                self._budget.rate_limited(retry_after)
        else:
            error = cls(message, **kwargs)
        if status == 401 and isinstance(self._auth, EntraAuth):
            self._auth.invalidate()
        if not should_retry(status, response.headers):
            raise error
        if isinstance(error, errors.RateLimited) and not self.wait_on_rate_limit:
            raise error
        if retry_after is not None and retry_after > self.retry_after_cap:
            # Too long to wait inside a request: the caller reschedules (e.g. pauses the connection).
            raise error if isinstance(error, errors.RateLimited) else errors.RateLimited(
                message, retry_after=retry_after, **kwargs)
        if status >= 500:
            raise _Uncertain(error)
        raise _Retryable(error, retry_after)

    def _transport_error(self, exc: requests.exceptions.RequestException, context: dict) -> Exception:
        if isinstance(exc, requests.exceptions.ConnectTimeout) or _never_sent(exc):
            kind = errors.Timeout if isinstance(exc, requests.exceptions.ConnectTimeout) else errors.ConnectionError
            return _Retryable(kind(f"Could not connect to {self.endpoint} ({type(exc).__name__})", **context), None)
        if isinstance(exc, requests.exceptions.Timeout):
            error = errors.Timeout(f"No answer within {self.read_timeout:g} s", maybe_applied=True, **context)
        else:
            error = errors.ConnectionError(
                f"The connection to {self.endpoint} failed before an answer ({type(exc).__name__})",
                maybe_applied=True, **context,
            )
        return _Uncertain(error)

    def _log(self, method, path, status, started, attempt, request_id, failure=None):
        logger.info(
            "%s %s %s -> %s in %.0f ms (attempt %d, request id %s)%s", self.connection, method, path, status,
            (time.monotonic() - started) * 1000, attempt, request_id or "-", f" {failure}" if failure else "",
        )


class _Retryable(Exception):
    """Internal: nothing took effect; resend after ``delay`` (None: backoff)."""

    def __init__(self, error: errors.AssistantsError, delay: float | None):
        super().__init__(str(error))
        self.error = error
        self.delay = delay


def _base_url(kind: str, endpoint: str) -> str:
    if kind == KIND_AZURE_OPENAI:
        return endpoint if endpoint.endswith("/openai") else endpoint + "/openai"
    if kind == KIND_OPENAI:
        return endpoint if endpoint.endswith("/v1") else endpoint + "/v1"
    return endpoint  # Foundry: the project endpoint is the base


def _never_sent(exc: Exception) -> bool:
    """True for failures that happen before a request leaves (refused, DNS): resending is safe."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, urllib3.exceptions.NewConnectionError | urllib3.exceptions.NameResolutionError):
            return True
        if isinstance(exc, ConnectionRefusedError):
            return True
        nxt = getattr(exc, "reason", None)
        exc = nxt if isinstance(nxt, BaseException) else (exc.args[0] if exc.args and isinstance(
            exc.args[0], BaseException) else exc.__cause__ or exc.__context__)
    return False


def _request_id(headers) -> str | None:
    return headers.get("apim-request-id") or headers.get("x-request-id") or headers.get("x-ms-request-id")


def _id(value: str) -> str:
    if not value or not isinstance(value, str):
        raise ValueError(f"An object id must be a non-empty string, not {value!r}")
    return quote(value, safe="")


def _run_path(thread_id: str, run_id: str) -> str:
    return f"/threads/{_id(thread_id)}/runs/{_id(run_id)}"


def _drop_none(body: dict) -> dict:
    return {k: v for k, v in body.items() if v is not None}


def _list_params(params: dict) -> dict:
    allowed = {"limit", "order", "after", "before", "run_id", "include[]"}
    unknown = set(params) - allowed
    if unknown:
        raise TypeError(f"Unknown list parameter(s): {', '.join(sorted(unknown))}")
    return _drop_none(dict(params))


def _check_fields(fields: dict, allowed: frozenset, operation: str) -> None:
    unknown = set(fields) - allowed - {"stream"}
    if unknown:
        raise TypeError(f"{operation}() got unknown field(s): {', '.join(sorted(unknown))}")
    fields.pop("stream", None)
    for key in [k for k, v in fields.items() if v is None]:
        del fields[key]


def _tagged(metadata: dict | None, *, tag: str | None = None) -> tuple[dict | None, str | None]:
    """Add the request tag (a new one, or ``tag``) when the metadata has room for it (the service allows 16
    keys)."""
    metadata = dict(metadata or {})
    if len(metadata) >= 16 or REQUEST_TAG in metadata:
        return (metadata or None), metadata.get(REQUEST_TAG)
    tag = tag or uuid.uuid4().hex
    metadata[REQUEST_TAG] = tag
    return metadata, tag
