"""The OpenAPI schema holds against the live API: schemathesis generates requests for every operation from
``/api/schema/`` and sends them through the WSGI application as an authenticated staff user (backed by the
emulator), checking for no server errors and for responses that match the schema (status, content type, body)."""


import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from rest_framework.authtoken.models import Token
from schemathesis import checks

from runs_app import services
from runs_app.models import Run
from tests.factories import TERMINAL, settled, start_run, superuser

# slow: hypothesis generates many requests for every operation of the API.
pytestmark = [pytest.mark.django_db, pytest.mark.slow]

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance, checks.ignored_auth]
# identity: the demo site gzips responses for clients that accept it, and the WSGI transport does not inflate.
# A token, as scripts authenticate (a write with a password would need a CSRF token: tests/test_hardening.py).
SCHEMA_TOKEN = "cnry7" + "5c4e9a" * 5 + "0b7f3"  # DRF token keys are 40 characters
AUTH = {"Authorization": f"Token {SCHEMA_TOKEN}", "Accept-Encoding": "identity"}
EXAMPLES_PER_OPERATION = 10


@pytest.fixture
def wsgi_in_test_transaction():
    """Like Django's test client: requests must not close the connection holding the test's transaction."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    # The handler project.wsgi builds, without its django.setup(): setting Django up again would run
    # dictConfig, which closes every logging handler, pytest's --log-file handler included.
    yield WSGIHandler()
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def seeded(mirror_settings, assistant, django_user_model):
    Token.objects.create(user=superuser(django_user_model, "schema-staff"), key=SCHEMA_TOKEN)
    waiting = settled(start_run(assistant, "get_weather", metadata={"team": "ops"}))
    assert waiting.status == "requires_action"
    done = settled(start_run(assistant, "hello"), TERMINAL)
    assert done.status == "completed"
    services.run_refresh(run=Run.objects.get(pk=done.pk))
    step = Run.objects.get(pk=done.pk).steps.first()
    message = Run.objects.get(pk=done.pk).thread.messages.first()
    return {"thread_id": done.thread.remote_id, "run_id": waiting.remote_id, "step_id": step.remote_id,
            "message_id": message.remote_id}


def test_every_operation_conforms_to_the_schema(seeded, wsgi_in_test_transaction):
    schema = schemathesis.openapi.from_wsgi("/api/schema/", wsgi_in_test_transaction, headers=AUTH)
    failures, operations = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        path_names = [p.name for p in operation.path_parameters]
        strategies = [operation.as_strategy()]
        if path_names:  # random ids (404s) and the seeded ones (real rows)
            strategies.append(operation.as_strategy(path_parameters={name: seeded[name] for name in path_names}))
        for strategy in strategies:
            # derandomize: CI sees the same examples on every run (a change to the schema changes them);
            # explore more by hand with a higher EXAMPLES_PER_OPERATION and derandomize off.
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            @given(case=strategy)
            def call(case):
                case.call_and_validate(headers=AUTH, checks=CHECKS)

            try:
                call()
            except Exception as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.label}: {exc}")
    assert operations == 19
    assert not failures, "\n\n".join(failures)
