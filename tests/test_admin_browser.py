"""The demo site's admin logs in, in a real Chromium."""

import pytest
from django.db import connections

pytestmark = pytest.mark.browser


@pytest.fixture
def page(chromium_path, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # playwright's sync API runs an event loop
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        try:
            yield browser.new_page()
        finally:
            # Inside playwright's event loop asgiref gives this context its own database connection:
            # close it here, or PostgreSQL cannot drop the test database.
            connections.close_all()
            browser.close()


def test_admin_login_and_connections_page(live_server, django_user_model, page):
    django_user_model.objects.create_superuser("ops", "ops@example.com", "s3cret-pass-42")
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "s3cret-pass-42")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    assert "runs_app control room" in page.inner_text("#site-name")
    page.goto(f"{live_server.url}/connections/")
    assert page.locator("#connections td").first.inner_text().startswith("default")
    assert "tests-only" not in page.content()
