"""The docs cannot drift from the code: the generated reference pages equal what the code makes now (and a
changed option or description makes them stale), the CLI page equals what `--help` prints in a real
process, the architecture page names every module, and the README stays short with its two commands first."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_docs = _gen_docs()


def test_generated_pages_are_current():
    assert gen_docs.stale_pages() == []
    assert gen_docs.main(["--check"]) == 0


def test_a_new_option_without_regenerating_makes_the_cli_page_stale(tmp_path):
    from autointerp.cli import main

    reference = tmp_path / "reference"
    shutil.copytree(DOCS / "reference", reference)
    sql = main.commands["sql"]
    sql.params.append(click.Option(["--new-flag"], is_flag=True, help="An option the page does not know."))
    try:
        assert gen_docs.stale_pages(reference) == ["cli.md"]
    finally:
        sql.params.pop()
    assert gen_docs.stale_pages(reference) == []


def test_a_changed_field_description_makes_the_configs_page_stale(tmp_path):
    from autointerp.config import CollectConfig

    reference = tmp_path / "reference"
    shutil.copytree(DOCS / "reference", reference)
    field = CollectConfig.model_fields["seed"]
    before = field.description
    field.description = "a description the page does not have"
    try:
        assert gen_docs.stale_pages(reference) == ["configs.md"]
    finally:
        field.description = before


def test_a_missing_page_is_stale(tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(DOCS / "reference", reference)
    (reference / "schema.md").unlink()
    assert gen_docs.stale_pages(reference) == ["schema.md"]


@pytest.mark.parametrize("command", [["sql"], ["batch", "export"]])
def test_cli_page_equals_help_in_a_real_process(command):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-c", "from autointerp.cli import main; main(prog_name='autointerp')", *command, "--help"],
        capture_output=True, text=True, env=env, check=True, cwd=ROOT).stdout
    page = (DOCS / "reference" / "cli.md").read_text()
    anchor = "-".join(command)
    block = re.search(rf"## {' '.join(command)} \{{#{anchor}\}}\n\n```text\n(.*?)\n```\n", page, re.S)
    assert block, f"no section for `autointerp {' '.join(command)}` in cli.md"
    assert block.group(1) == out.rstrip("\n")


def test_schema_page_has_every_table_and_view_of_the_sql_contract():
    schema = (DOCS / "reference" / "schema.md").read_text()
    contract = (DOCS / "guide" / "querying.md").read_text()
    generated = set(re.findall(r"^## (\w+) \{#", schema, re.M))
    assert {"dictionaries", "features", "contexts", "labels", "llm_calls", "schema_migrations"} <= generated
    section = contract.split("## The SQL contract", 1)[1]
    first_cells = re.findall(r"^\| ([^|]+) \|", section, re.M)
    documented = {name for cell in first_cells for name in re.findall(r"`(\w+)`", cell)}
    assert generated == documented, (f"in the schema but not the SQL contract: {sorted(generated - documented)}; "
                                     f"in the contract but not the schema: {sorted(documented - generated)}")


def _module_names() -> list[str]:
    names = []
    for path in sorted((ROOT / "autointerp").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        names.append(rel[: -len("__init__.py")] if path.name == "__init__.py" else rel)
    return names


def test_architecture_page_names_every_module():
    page = (DOCS / "architecture.md").read_text()
    rows = set(re.findall(r"^\| `(autointerp/[\w/.]*)`", page, re.M))
    missing = [m for m in _module_names() if m not in rows]
    assert not missing, f"modules missing from docs/architecture.md: {missing}"
    assert "autointerp/collect/stage.py" in rows and "autointerp/" in rows


def test_architecture_check_catches_a_new_module():
    new = ROOT / "autointerp" / "collect" / "zz_docs_test_probe.py"
    new.write_text('"""A module the architecture page does not name."""\n')
    try:
        with pytest.raises(AssertionError, match="zz_docs_test_probe"):
            test_architecture_page_names_every_module()
    finally:
        new.unlink()


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    block = lines[lines.index("```bash") + 1: lines.index("```bash") + 6]
    assert block == [
        "# 1. set up everything and run the main job on the embedded default (SmolLM2-135M, offline)",
        "bash scripts/setup.sh && bash scripts/demo.sh",
        "",
        "# 2. set up everything and run the tests",
        "bash scripts/setup.sh && bash scripts/test.sh",
    ]
    assert lines.index("```bash") < 10
