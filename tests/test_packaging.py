"""runs_app and the emulator build into one wheel with templates, static files and migrations; the emulator ships
as `assistants_emulator`, with a console script and no pytest plugin that loads itself into other projects."""

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

# slow: each test reads a wheel that pip builds from a copy of the checkout.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def source_tree(dest: Path) -> Path:
    """The checkout's files as git sees them (tracked or new, never ignored): setuptools reuses an in-tree build/
    directory, whose leftovers (a package since renamed) would otherwise end up in the wheel."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():  # listed in the index but deleted in the working tree: not part of it
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    src = source_tree(tmp_path_factory.mktemp("src"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    [path] = out.glob("django_runs_app-*.whl")
    return zipfile.ZipFile(path)


def entry_points(wheel: zipfile.ZipFile) -> configparser.ConfigParser:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # entry point names are case-sensitive
    parser.read_string(wheel.read(name).decode())
    return parser


def test_one_wheel_carries_both_packages_and_their_data(wheel):
    names = set(wheel.namelist())
    for expected in ("runs_app/migrations/0001_initial.py", "runs_app/static/runs_app/admin.css",
                     "runs_app/templates/runs_app/connection_list.html", "runs_app/assistants/client.py",
                     "assistants_emulator/__init__.py", "assistants_emulator/__main__.py",
                     "assistants_emulator/pytest_plugin.py", "assistants_emulator/README.md"):
        assert expected in names


def test_the_emulator_ships_only_under_its_own_name_and_without_its_tests(wheel):
    top_level = {name.split("/")[0] for name in wheel.namelist() if ".dist-info/" not in name}
    assert top_level == {"runs_app", "assistants_emulator"}, "no top-level `emulator`, `tests`, `project` or `bench`"
    assert not [name for name in wheel.namelist() if name.startswith("assistants_emulator/tests/")]


def test_no_pytest_plugin_loads_itself_and_the_emulator_has_a_console_script(wheel):
    points = entry_points(wheel)
    assert not points.has_section("pytest11"), "installing the app must not add fixtures to other projects' runs"
    assert points["console_scripts"]["assistants-emulator"].strip() == "assistants_emulator.__main__:main"
