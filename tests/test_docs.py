"""The documentation against the code: docs/configuration.md's settings tables against ``runs_app.conf``, its checks
table against ``runs_app.checks``, its environment table against what ``project/`` reads, and every relative link
between the documents.

A table row is ``| `KEY` | default | meaning |``. A default is the conf value rendered as ``render`` does, in
backticks; a default that depends on the connection's kind (conf's value is None) reads
``per kind: `azure_openai`: `…`, `foundry_agents`: `…`, `openai`: `…```.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from runs_app import conf

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
DOCUMENTS = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "bench" / "README.md",
             *sorted((ROOT / "docs").glob("*.md"))]

#: conf's per-kind defaults, for the keys whose CONNECTION_DEFAULTS value is None.
PER_KIND = {
    "API_VERSION": conf.DEFAULT_API_VERSIONS,
    "ENTRA_SCOPE": conf.DEFAULT_ENTRA_SCOPES,
    "DISCOVER_THREADS": conf.DEFAULT_DISCOVER_THREADS,
}
PER_KIND_PREFIX = "per kind: "
CODE = re.compile(r"`([^`]*)`")


def render(value) -> str:
    """A default as the tables write it: Python's spelling for numbers, booleans and None, JSON for the rest."""
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def table_under(heading: str, path: Path = CONFIGURATION) -> list[list[str]]:
    """The body rows (cells stripped) of the first table after the line ``heading``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert heading in lines, f"{path.name} has no heading {heading!r}"
    rows = []
    for line in lines[lines.index(heading) + 1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows or line.startswith("#"):
            break
    assert len(rows) > 2, f"no table under {heading!r} in {path.name}"
    return rows[2:]  # without the header and the |---| line


def keyed_defaults(heading: str) -> dict[str, str]:
    rows = table_under(heading)
    keys = [CODE.fullmatch(row[0]) for row in rows]
    assert all(keys), f"under {heading!r}, every first cell is one key in backticks: {[r[0] for r in rows]}"
    shown = {key.group(1): row[1] for key, row in zip(keys, rows, strict=True)}
    assert len(shown) == len(rows), f"a key is listed twice under {heading!r}"
    return shown


def assert_defaults_shown(shown: dict[str, str], defaults: dict, where: str) -> None:
    assert set(shown) == set(defaults), (
        f"{where}: keys in conf but not in the docs: {sorted(set(defaults) - set(shown))}; "
        f"in the docs but not in conf: {sorted(set(shown) - set(defaults))}")
    for key, cell in shown.items():
        if cell.startswith(PER_KIND_PREFIX):
            assert defaults[key] is None and key in PER_KIND, (
                f"{where}: {key} says 'per kind', but conf's default is {defaults[key]!r}")
            per_kind = dict(re.findall(r"`(\w+)`: `([^`]*)`", cell[len(PER_KIND_PREFIX):]))
            assert per_kind == {kind: render(value) for kind, value in PER_KIND[key].items()}, (
                f"{where}: {key}'s per-kind defaults {per_kind} differ from conf's {PER_KIND[key]}")
        else:
            assert cell == f"`{render(defaults[key])}`", (
                f"{where}: {key}'s default is shown as {cell}, conf has `{render(defaults[key])}`")


def test_the_runs_app_table_lists_every_key_of_conf_defaults_with_its_default():
    assert_defaults_shown(keyed_defaults("### RUNS_APP keys"), conf.DEFAULTS, "RUNS_APP keys")


def test_the_connection_table_lists_every_connection_key_with_its_default():
    assert_defaults_shown(keyed_defaults("### Connection keys"), conf.CONNECTION_DEFAULTS, "Connection keys")


def test_a_default_that_differs_from_conf_fails_the_comparison():
    shown = {key: f"`{render(value)}`" for key, value in conf.DEFAULTS.items()}
    assert_defaults_shown(shown, conf.DEFAULTS, "rendered from conf")
    with pytest.raises(AssertionError, match="MAX_RETRIES"):
        assert_defaults_shown({**shown, "MAX_RETRIES": "`3`"}, conf.DEFAULTS, "changed")
    with pytest.raises(AssertionError, match="NEW_KEY"):
        assert_defaults_shown(shown, {**conf.DEFAULTS, "NEW_KEY": 1}, "conf grew")
    with pytest.raises(AssertionError, match="per kind"):
        assert_defaults_shown({**shown, "MAX_RETRIES": "per kind: `openai`: `2`"}, conf.DEFAULTS, "per kind")


def test_the_checks_table_lists_every_check_id_in_checks_py_and_no_other():
    source = (ROOT / "runs_app" / "checks.py").read_text(encoding="utf-8")
    in_code = set(re.findall(r'id="(runs_app\.[EW]\d{3})"', source))
    assert in_code, "no check ids found in runs_app/checks.py"
    rows = table_under("## System checks")
    in_docs = [CODE.fullmatch(row[0]).group(1) for row in rows]
    assert len(in_docs) == len(set(in_docs)), "a check id is listed twice"
    assert set(in_docs) == in_code, (f"in checks.py but not in the docs: {sorted(in_code - set(in_docs))}; "
                                     f"in the docs but not in checks.py: {sorted(set(in_docs) - in_code)}")
    for row in rows:
        level = "warning" if ".W" in row[0] else "error"
        assert row[1] == level, f"{row[0]} is a{'n' * (level == 'error')} {level}, the table says {row[1]}"


def test_every_environment_variable_the_demo_site_reads_is_documented():
    read = set()
    for path in (ROOT / "project").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        read |= set(re.findall(r'env_(?:str|bool|list)\(\s*"([A-Z][A-Z0-9_]+)"', text))
        read |= set(re.findall(r'os\.environ\.get\(\s*"([A-Z][A-Z0-9_]+)"', text))
    assert "DATABASE_URL" in read, "the scan of project/ found nothing"
    documented = {name for row in table_under("## Environment variables of the demo site")
                  for name in CODE.findall(row[0])}
    assert read <= documented, f"read by project/ but not documented: {sorted(read - documented)}"


def github_anchor(heading: str) -> str:
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            anchor = github_anchor(match.group(1))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            out.add(anchor if count == 0 else f"{anchor}-{count}")
    return out


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(document):
    assert document.exists(), f"{document.relative_to(ROOT)} is missing"
    text = re.sub(r"```.*?```", "", document.read_text(encoding="utf-8"), flags=re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path_part, _, fragment = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        if not linked.exists() or (fragment and linked.suffix == ".md" and fragment not in anchors(linked)):
            broken.append(target)
    assert not broken, f"{document.relative_to(ROOT)}: broken links {broken}"


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if d.name != "CHANGELOG.md"],  # history may name it
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_documents_name_the_emulator_by_its_package_name(document):
    text = document.read_text(encoding="utf-8")
    old = re.findall(r"-m emulator\b|\bemulator\.pytest_plugin|\bfrom emulator\b|`emulator/`", text)
    assert not old, f"{document.relative_to(ROOT)} still names the old package: {old}"
