"""The demo site's runs_seed_demo: runs in every status on the emulator, tracked by the mirror, seeded once."""

import io

import pytest
from django.core.management import CommandError, call_command

from project.management.commands import runs_seed_demo
from runs_app import services
from runs_app.assistants import AssistantsClient
from runs_app.assistants import ConnectionError as ServiceConnectionError
from runs_app.models import OperatorAction, Run, Thread
from tests.client_helpers import wait_for

pytestmark = pytest.mark.django_db

EXPECTED = {"completed": "completed", "requires_action": "requires_action", "in_progress": "in_progress",
            "failed": "failed", "incomplete": "incomplete", "cancelled": "cancelled"}


@pytest.fixture
def demo_settings(mirror_settings, settings):
    settings.USING_EMULATOR = True
    return settings


def seed(*args):
    out = io.StringIO()
    call_command("runs_seed_demo", *args, stdout=out)
    return out.getvalue()


def statuses_by_scenario() -> dict[str, str]:
    return {run.metadata["scenario"]: run.status for run in Run.objects.filter(metadata__demo="runs_app")}


def refresh_until_settled() -> dict[str, str]:
    """Refresh every demo run through the service until each reached its scenario's status."""
    def settled():
        for run in Run.objects.select_related("thread").filter(metadata__demo="runs_app"):
            if run.status != EXPECTED[run.metadata["scenario"]]:
                services.run_refresh(run=run)
        current = statuses_by_scenario()
        return current if current == EXPECTED else None

    return wait_for(settled, timeout=10, interval=0.05)


def test_seed_creates_runs_in_every_status_tracked_by_the_mirror(demo_settings, emulator):
    out = seed()
    assert "Demo data seeded" in out

    assert refresh_until_settled() == EXPECTED
    assert Thread.objects.filter(metadata__demo="runs_app").count() == len(EXPECTED)
    waiting = Run.objects.get(metadata__scenario="requires_action")
    assert [c["function"]["name"] for c in waiting.pending_tool_calls] == ["get_weather"]
    assert Run.objects.get(metadata__scenario="failed").last_error_code == "server_error"
    # Created through the services: audited, and followed by the poller (due for a poll while active).
    assert OperatorAction.objects.filter(action="create_run", succeeded=True).count() == len(EXPECTED)
    assert OperatorAction.objects.filter(action="cancel_run", succeeded=True).count() == 1
    assert Run.objects.active().filter(next_poll_at__isnull=True).count() == 0
    [assistant] = emulator.state.assistants.values()
    assert assistant["metadata"] == {"demo": "runs_app"} and assistant["tools"][0]["function"]["name"] == "get_weather"


def test_second_seed_creates_nothing(demo_settings, emulator):
    seed()
    runs, threads, assistants = Run.objects.count(), len(emulator.state.threads), len(emulator.state.assistants)

    assert "Demo data already present" in seed()

    assert Run.objects.count() == runs
    assert (len(emulator.state.threads), len(emulator.state.assistants)) == (threads, assistants)


def test_seeds_again_when_the_emulator_forgot_the_demo(demo_settings, emulator):
    seed()
    # The emulator restarted (it keeps its state in memory only). Not emulator.reset(): that restarts its
    # id generator too, where `make run` starts each emulator with a fresh --seed.
    client = AssistantsClient("default")
    for thread in Thread.objects.all():
        client._request("DELETE", f"/threads/{thread.remote_id}")
    for assistant_id in list(emulator.state.assistants):
        client._request("DELETE", f"/assistants/{assistant_id}")

    out = seed()

    assert "no longer has the demo threads" in out and "Demo data seeded" in out
    assert len(emulator.state.threads) == len(EXPECTED) and len(emulator.state.assistants) == 1


def test_seed_skips_a_real_service(mirror_settings, settings, emulator):
    settings.USING_EMULATOR = False
    assert "Demo data skipped" in seed()
    assert not Run.objects.exists() and not emulator.state.threads


def test_seed_gives_up_with_a_clear_message_when_the_emulator_never_answers(settings):
    settings.USING_EMULATOR = True
    settings.RUNS_APP = {"CONNECTIONS": {"default": {"KIND": "azure_openai", "ENDPOINT": "http://127.0.0.1:9",
                                                     "API_KEY": "k"}}, "MAX_RETRIES": 0}
    with pytest.raises(CommandError, match=r"emulator at http://127.0.0.1:9 did not answer within 0.2 s"):
        seed("--wait", "0.2")


def test_seed_waits_for_the_emulator_to_come_up(demo_settings, emulator, monkeypatch):
    answer = AssistantsClient.list_assistants
    refusals = iter([True, True, False])

    def starting_up(self, **params):
        if next(refusals):
            raise ServiceConnectionError("Connection refused", connection=self.connection)
        return answer(self, **params)

    monkeypatch.setattr(AssistantsClient, "list_assistants", starting_up)
    naps = []
    monkeypatch.setattr(runs_seed_demo, "_sleep", naps.append)

    out = seed()

    assert "Waiting for the emulator" in out and "Demo data seeded" in out
    assert len(naps) == 2
