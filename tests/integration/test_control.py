"""The random-init control on SmolLM2 neurons, end to end through the CLI with the loopback LLM server."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pytest

from tests.llm_server import LoopbackLLM
from tests.unit.test_labelling import good_script

pytestmark = pytest.mark.integration


def cli(db, *args, timeout=900):
    proc = subprocess.run([sys.executable, "-m", "autointerp", *args, "--db", str(db)], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_control_then_compare_on_smollm2(tmp_path):
    db = tmp_path / "control.duckdb"
    llm_args = ["--explainer-model", "e", "--simulator-model", "s", "--sim-top", "6", "--sim-random", "6",
                "--concurrency", "4"]
    with LoopbackLLM(good_script) as server:
        cli(db, "collect", "--tokens", "6400", "--ctx-len", "32")
        cli(db, "label", "--dictionary", "1", "--features", "0:8", "--base-url", server.base_url, *llm_args)
        out = cli(db, "behaviour", "--dictionary", "1")
        assert "behaviour scored for 8 features" in out
        out = cli(db, "control", "--like", "1", "--label-features", "0:8", "--base-url", server.base_url, *llm_args)
        assert "control dictionary 2 (random init: init, seed 0) of dictionary 1" in out
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT dictionary_id, random_init, seed, n_tokens FROM dictionaries ORDER BY 1").fetchall() == [
        (1, False, 0, 6400), (2, True, 0, 6400)]
    # Same tokens: the control's contexts are the trained run's contexts.
    same = con.execute("SELECT count(*) FROM sequences a JOIN sequences b ON a.seq = b.seq "
                       "WHERE a.dictionary_id = 1 AND b.dictionary_id = 2 AND a.token_ids <> b.token_ids").fetchone()
    assert same == (0,)
    behaviour = con.execute("SELECT dictionary_id, count(*) FROM scores WHERE method = 'behaviour' "
                            "GROUP BY 1 ORDER BY 1").fetchall()
    assert [d for d, _ in behaviour] == [1, 2]
    summary = con.execute("SELECT dictionary_id, explainer, labels, mean_behaviour, behaviour_captured "
                          "FROM dictionary_summary ORDER BY 1, 2").fetchall()
    # Each dictionary's labels beside their nulls (other features' labels, and a constant label).
    assert {(d, e) for d, e, *_ in summary} == {
        (d, e) for d in (1, 2) for e in ("baseline:token-lookup", "e", "null:shuffled:e", "null:constant")}
    con.close()
    rows = json.loads(cli(db, "compare", "1", "2", "--format", "json").split("\n", 1)[1])
    methods = {(r["explainer"], r["method"]) for r in rows}
    assert ("e", "correlation_top_random") in methods and ("baseline:token-lookup", "behaviour") in methods
    for r in rows:
        assert r["verdict"] and r["diff_ci"].startswith("[")
    corr = next(r for r in rows if r["explainer"] == "baseline:token-lookup" and r["method"] == "correlation_top_random")
    assert corr["paired"] == 8 and corr["mean_a"] is not None and corr["mean_b"] is not None
