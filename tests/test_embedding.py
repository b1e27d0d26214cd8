"""runs_app embeds in an existing site: custom user model, URLs under another prefix."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# slow: manage.py of an embedding site, in a fresh Python per command.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def manage(tmp_path, *args):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.embed.settings", "EMBED_DB": str(tmp_path / "embed.db")}
    return subprocess.run(
        [sys.executable, "-m", "django", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_check_passes_in_an_embedding_site(tmp_path):
    result = manage(tmp_path, "check", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_migrations_apply_and_reverse_in_an_embedding_site(tmp_path):
    result = manage(tmp_path, "migrate", "--noinput")
    assert result.returncode == 0, result.stderr
    assert "Applying accounts.0001_initial" in result.stdout
    assert manage(tmp_path, "makemigrations", "--check", "--dry-run", "runs_app").returncode == 0
    result = manage(tmp_path, "migrate", "runs_app", "zero", "--noinput")
    assert result.returncode == 0, result.stderr


def test_urls_mount_under_the_sites_prefix(tmp_path):
    result = manage(
        tmp_path,
        "shell",
        "--no-imports",
        "-c",
        "from django.urls import reverse; print(reverse('runs_app:connection-list'))",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "/ops/runs/connections/"
