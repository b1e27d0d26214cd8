"""Shared test helpers.

Under CI=true a test that needs PostgreSQL, Redis or Chromium fails when the service is missing;
on a developer's machine it is skipped with the reason.
"""

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(what: str, available: bool, reason: str) -> None:
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is unavailable: {reason}")
    pytest.skip(f"{what} unavailable: {reason}")


@pytest.fixture(scope="session")
def chromium_path():
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    require("Chromium", bool(path), "no chromium on PATH (apt-get install chromium)")
    return path
