"""The fixed run (tests/fixed_run.py: collect, live label with the scripted loopback server in echo and chat
mode, nulls and the reference, behaviour, and a Batch API label of a copy) gives the rows of
tests/data/fixed_run.json, table by table and row for row.

After a deliberate change of results (a new score definition), regenerate the golden file and review its diff:
    PYTHONPATH=$PWD .venv/bin/python -m tests.fixed_run tests/data/fixed_run.json
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import fixed_run

GOLDEN = Path(__file__).parent.parent / "data" / "fixed_run.json"


@pytest.fixture(scope="module")
def recomputed() -> dict:
    return json.loads(fixed_run.dumps(fixed_run.compute()))


@pytest.mark.parametrize("run", ["live", "batch"])
def test_the_fixed_run_gives_the_golden_rows(recomputed, run):
    golden = json.loads(GOLDEN.read_text())[run]
    got = recomputed[run]
    assert sorted(got) == sorted(golden), "tables differ"
    for table in golden:
        assert got[table]["columns"] == golden[table]["columns"], table
        if isinstance(golden[table]["rows"], list):
            missing = [r for r in golden[table]["rows"] if r not in got[table]["rows"]]
            extra = [r for r in got[table]["rows"] if r not in golden[table]["rows"]]
            assert (missing, extra) == ([], []), f"{run}.{table}: rows missing / extra"
        assert got[table] == golden[table], f"{run}.{table}"
