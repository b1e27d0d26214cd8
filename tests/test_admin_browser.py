"""The demo site's admin logs in, in a real Chromium."""

import pytest

from tests.factories import password_for, superuser

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser_page):
    return browser_page


def test_admin_login_and_connections_page(live_server, django_user_model, page):
    superuser(django_user_model, "ops")
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", password_for("ops"))
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    assert "runs_app control room" in page.inner_text("#site-name")
    page.goto(f"{live_server.url}/connections/")
    assert page.locator("#connections td").first.inner_text().startswith("default")
    assert "tests-only" not in page.content()
