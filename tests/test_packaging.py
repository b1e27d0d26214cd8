"""runs_app and the emulator build into one wheel with templates, static files and migrations."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_one_wheel_carries_both_packages_and_their_data(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    [wheel] = tmp_path.glob("django_runs_app-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("runs_app/migrations/0001_initial.py", "runs_app/static/runs_app/admin.css",
                     "runs_app/templates/runs_app/connection_list.html", "emulator/__main__.py", "emulator/README.md",
                     "runs_app/assistants/client.py"):
        assert expected in names
    assert not any(name.startswith(("tests/", "project/", "bench/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "emulator = emulator.pytest_plugin" in zipfile.ZipFile(wheel).read(entry_points).decode()
