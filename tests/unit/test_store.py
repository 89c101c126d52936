"""Migrations and the read-only rules of the store, on real DuckDB files."""

from __future__ import annotations

import duckdb
import pytest

from autointerp import store
from autointerp.errors import AutointerpError

CONTRACT = {
    "dictionaries": {"dictionary_id", "model", "hook", "kind", "sae", "random_init", "seed", "dataset", "n_tokens",
                     "n_features", "created_at", "config"},
    "features": {"dictionary_id", "feature", "max_act", "mean_act", "frac_active"},
    "contexts": {"dictionary_id", "feature", "split", "kind", "rank", "tokens", "acts"},
    "labels": {"behaviour", "behaviour_low", "behaviour_high", "behaviour_resolved", "behaviour_random",
               "behaviour_note", "behaviour_loss", "behaviour_loss_note", "ablation_effect", "ablation_kl"},
    "dictionary_summary": {"mean_behaviour", "mean_behaviour_loss", "behaviour_scored", "behaviour_resolved",
                           "behaviour_no_effect", "behaviour_captured"},
}


def _columns(con, name):
    return {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [name]).fetchall()}


def test_blank_database_gets_every_migration_and_the_contract(tmp_path):
    db = tmp_path / "x.duckdb"
    with store.open_store(db) as con:
        applied = store.applied_migrations(con)
        assert applied == [m.name for m in store.known_migrations()]
        for name, cols in CONTRACT.items():
            assert cols <= _columns(con, name), name


def test_migration_numbers_are_unique():
    """Two branches that each took the same number give an order that depends on the rest of the name."""
    numbers = [m.name.split("_", 1)[0] for m in store.known_migrations()]
    assert len(numbers) == len(set(numbers)), f"migration numbers used twice: {sorted(numbers)}"


def test_upgrade_from_the_first_schema(tmp_path):
    db = tmp_path / "old.duckdb"
    first = store.known_migrations()[0]
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE schema_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    con.execute(first.sql)
    con.execute("INSERT INTO schema_migrations VALUES (?, current_timestamp)", [first.name])
    con.execute("INSERT INTO dictionaries (dictionary_id, model, hook, kind, seed, dataset, ctx_len, n_features, status, "
                "config_hash, config, autointerp_version) VALUES (1, 'm', 'h', 'neurons', 0, 'd', 8, 3, 'complete', "
                "'abc', '{}', '0')")
    con.close()
    with store.open_store(db) as con:
        assert store.applied_migrations(con) == [m.name for m in store.known_migrations()]
        assert store.get_dictionary(con, 1).model == "m"


def test_newer_database_is_refused(tmp_path):
    db = tmp_path / "new.duckdb"
    with store.open_store(db) as con:
        con.execute("INSERT INTO schema_migrations VALUES ('999_from_the_future', current_timestamp)")
    for read_only in (False, True):
        with pytest.raises(AutointerpError, match="newer autointerp.*999_from_the_future"), \
                store.open_store(db, read_only=read_only):
            pass


def test_read_only_connection_cannot_write(tmp_path):
    db = tmp_path / "ro.duckdb"
    with store.open_store(db):
        pass
    with store.open_store(db, read_only=True) as con, pytest.raises(AutointerpError, match="read-only|read only"):
        store.query(con, "DELETE FROM dictionaries")


def test_missing_database_is_a_clear_error_for_readers(tmp_path):
    with pytest.raises(AutointerpError, match="no database"), store.open_store(tmp_path / "nope.duckdb", read_only=True):
        pass
    assert not (tmp_path / "nope.duckdb").exists()


def test_incomplete_dictionary_is_reused_by_the_same_config(tmp_path):
    db = tmp_path / "r.duckdb"
    kw = dict(model="m", hook="h", kind="neurons", sae=None, random_init=False, seed=0, dataset="d", ctx_len=8,
              n_features=3, config={"a": 1})
    with store.open_store(db) as con:
        a = store.begin_dictionary(con, config_hash="same", **kw)
        b = store.begin_dictionary(con, config_hash="same", **kw)
        c = store.begin_dictionary(con, config_hash="other", **kw)
        assert a == b != c
        assert [d.status for d in store.list_dictionaries(con)] == ["incomplete", "incomplete"]


def test_reads_and_inserts_work_after_a_one_row_lookup(tmp_path):
    """A `fetchone()` leaves its result unread; DuckDB then refuses to register the Arrow tables that
    inserts and context reads go through, unless the store finishes that result first."""
    db = tmp_path / "x.duckdb"
    with store.open_store(db) as con:
        con.execute("CREATE TABLE t (x INTEGER)")
        con.execute("INSERT INTO t VALUES (1), (2)")
        assert con.execute("SELECT x FROM t ORDER BY x").fetchone() == (1,)
        store.insert_rows(con, "t", [{"x": 3}])
        assert con.execute("SELECT count(*) FROM t").fetchone() == (3,)
        assert store.read_feature_contexts(con, 1, [0]) == {}


def _behaviour_run(con, run_id: str, scores: dict[str, tuple[float | None, float | None, float | None]]) -> None:
    con.execute("INSERT INTO score_runs (run_id, explanation_id, dictionary_id, feature, stage, simulator, prompt_hash, "
                "settings_hash, status) VALUES (?, 'e', 1, 0, 'behaviour', 's', 'p', 'k', 'ok')", [run_id])
    for method, (value, lo, hi) in scores.items():
        con.execute("INSERT INTO scores (run_id, explanation_id, dictionary_id, feature, simulator, method, value, "
                    "n_examples, ci_low, ci_high) VALUES (?, 'e', 1, 0, 's', ?, ?, 12, ?, ?)", [run_id, method, value, lo, hi])


def test_upgrade_makes_the_kl_form_the_headline_and_gates_the_old_loss_form(tmp_path):
    """Behaviour runs written before the KL headline: behaviour_kl becomes behaviour, the loss form becomes
    behaviour_loss, undefined where its run's loss damage CI does not exclude 0."""
    db = tmp_path / "old.duckdb"
    before = [m for m in store.known_migrations() if m.name < "008"]
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE schema_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    for m in before:
        con.execute(m.sql)
        con.execute("INSERT INTO schema_migrations VALUES (?, current_timestamp)", [m.name])
    _behaviour_run(con, "sure", {"behaviour": (0.7, 0.6, 0.8), "behaviour_kl": (0.4, 0.3, 0.5),
                                 "behaviour_random": (0.9, 0.1, 2.0), "ablation_effect": (0.02, 0.01, 0.03)})
    _behaviour_run(con, "unsure", {"behaviour": (1.6, -3.0, 4.0), "behaviour_kl": (0.2, 0.1, 0.3),
                                   "ablation_effect": (-0.001, -0.004, 0.002)})
    con.close()
    with store.open_store(db) as con:
        rows = con.execute("SELECT run_id, method, value, note FROM scores ORDER BY run_id, method").fetchall()
    got = {(r, m): (v, n) for r, m, v, n in rows}
    assert got["sure", "behaviour"] == (0.4, None) and got["sure", "behaviour_loss"] == (0.7, None)
    assert ("sure", "behaviour_random") not in got and got["sure", "behaviour_loss_random"][0] == 0.9
    assert got["unsure", "behaviour"] == (0.2, None)
    assert got["unsure", "behaviour_loss"][0] is None and "does not exclude 0" in got["unsure", "behaviour_loss"][1]
    assert not any(m == "behaviour_kl" for _, m, _, _ in rows)
