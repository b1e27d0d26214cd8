"""The emulator and its suite stand alone: nothing of the Django app, the demo site or the app's tests.

`lint-imports` keeps `runs_app` out of the package; this also covers the project's `tests` and `project`
packages, which import-linter does not see, and the emulator's own tests.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = {"runs_app", "tests", "project", "django", "bench"}


def imported_top_levels(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_of_the_emulator_or_its_tests_imports_the_project():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 20, f"found only {len(modules)} modules under {PACKAGE}"
    offenders = {str(path.relative_to(PACKAGE)): sorted(imported_top_levels(path) & PROJECT_PACKAGES)
                 for path in modules}
    assert {path: names for path, names in offenders.items() if names} == {}
