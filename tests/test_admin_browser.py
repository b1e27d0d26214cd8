"""The demo site's admin logs in, in a real Chromium."""

import pytest

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser_page):
    return browser_page


def test_admin_login_and_connections_page(live_server, django_user_model, page):
    django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-cnry7-ops-42")
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "pw-cnry7-ops-42")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    assert "runs_app control room" in page.inner_text("#site-name")
    page.goto(f"{live_server.url}/connections/")
    assert page.locator("#connections td").first.inner_text().startswith("default")
    assert "tests-only" not in page.content()
