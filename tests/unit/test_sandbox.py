"""User SQL (`autointerp sql`, --where, --label-where) runs sandboxed: one SELECT, no files, no other
databases, no extensions, no settings changes; ordinary queries over tables and views still work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autointerp import store
from autointerp.collect.stage import collect_stage
from autointerp.config import CollectConfig
from autointerp.errors import BadInput, InternalError

HOOK = "blocks.0.mlp.hook_post"


@pytest.fixture(scope="module")
def db(tmp_path_factory, tiny_model, tiny_model_dir, corpus_file) -> Path:
    path = tmp_path_factory.mktemp("sandbox") / "s.duckdb"
    collect_stage(path, CollectConfig(model=str(tiny_model_dir), hook=HOOK, dataset=str(corpus_file), n_tokens=800,
                                      ctx_len=16), model=tiny_model)
    return path


def user_sql(db: Path, sql: str, allow_files: bool = False):
    with store.open_store(db, read_only=True) as con:
        return store.user_query(con, sql, allow_files=allow_files)


def cli(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autointerp", "sql", "--db", str(db), *args],
                          capture_output=True, text=True, timeout=120)


def test_ordinary_selects_over_tables_and_views_work(db):
    cols, rows = user_sql(db, "SELECT feature, max_act FROM features ORDER BY max_act DESC LIMIT 3")
    assert cols == ["feature", "max_act"] and len(rows) == 3
    cols, rows = user_sql(db, "SELECT count(*) AS n FROM contexts WHERE kind = 'top'")
    assert rows[0][0] > 0
    _, rows = user_sql(db, "WITH s AS (SELECT * FROM dictionary_summary) SELECT count(*) FROM s")
    assert rows == [(0,)]  # nothing labelled yet, but the view answers
    _, rows = user_sql(db, "DESCRIBE features")
    assert "hist_counts" in {r[0] for r in rows}


@pytest.mark.parametrize(("sql", "message", "left_behind"), [
    ("COPY (SELECT * FROM features) TO '{tmp}/out.csv'", "COPY statement", "out.csv"),
    ("ATTACH '{tmp}/other.duckdb' AS o (READ_WRITE)", "ATTACH statement", "other.duckdb"),
    ("EXPORT DATABASE '{tmp}/export'", "EXPORT statement", "export"),
    ("INSTALL httpfs", "LOAD statement", None),
    ("LOAD httpfs", "LOAD statement", None),
    ("SET enable_external_access = true", "settings cannot be changed", None),
    ("RESET lock_configuration", "settings cannot be changed", None),
    ("PRAGMA enable_profiling = 'json'", "settings cannot be changed", None),
    ("PRAGMA profiling_output = '{tmp}/profile.json'", "settings cannot be changed", None),
    ("CREATE TEMP TABLE t AS SELECT 1", "CREATE statement", None),
    ("CALL checkpoint()", "CALL statement", None),
    ("SELECT 1; SELECT 2", "one statement per call; this has 2", None),
    ("SELECT 1; DROP TABLE features", "one statement per call; this has 2", None),
    ("SELECT * FROM read_csv('/etc/passwd')", "cannot read or write files", None),
    ("SELECT * FROM read_text('{tmp}/../s.duckdb')", "cannot read or write files", None),
    ("SELECT * FROM glob('/etc/*')", "cannot read or write files", None),
])
def test_each_escape_is_refused_with_a_clear_message(db, tmp_path, sql, message, left_behind):
    with pytest.raises(BadInput, match="refused") as err:
        user_sql(db, sql.format(tmp=tmp_path))
    assert message in str(err.value)
    if left_behind:
        assert not (tmp_path / left_behind).exists()
    # Still one dictionary, intact.
    assert user_sql(db, "SELECT count(*) FROM features")[1][0][0] == 64


def test_the_sandbox_holds_even_for_a_statement_the_parser_check_let_through(db, tmp_path):
    """The second layer: on a sandboxed connection, DuckDB itself refuses files, settings and extensions."""
    with store.open_store(db, read_only=True) as con:
        store.sandbox(con)
        for sql in (f"COPY (SELECT 1) TO '{tmp_path}/x.csv'", f"ATTACH '{tmp_path}/y.duckdb'",
                    "SELECT * FROM read_csv('/etc/passwd')", "LOAD httpfs"):
            with pytest.raises(duckdb.PermissionException):
                con.execute(sql)
        for sql in ("SET enable_external_access = true", "SET lock_configuration = false"):
            with pytest.raises(duckdb.InvalidInputException, match="locked"):
                con.execute(sql)
    assert not list(tmp_path.iterdir())


def test_allow_files_lets_a_select_read_a_parquet_file_but_still_writes_nothing(db, tmp_path):
    notes = tmp_path / "notes.parquet"
    pq.write_table(pa.table({"feature": [0, 1, 2], "note": ["a", "b", "c"]}), notes)
    join = f"SELECT f.feature, n.note FROM features f JOIN read_parquet('{notes}') n USING (feature) ORDER BY 1"
    with pytest.raises(BadInput, match="--allow-files"):
        user_sql(db, join)
    assert user_sql(db, join, allow_files=True)[1] == [(0, "a"), (1, "b"), (2, "c")]
    with pytest.raises(BadInput, match="COPY statement"):
        user_sql(db, f"COPY (SELECT 1) TO '{tmp_path}/out.csv'", allow_files=True)
    with pytest.raises(BadInput, match="LOAD statement"):
        user_sql(db, "INSTALL httpfs", allow_files=True)
    assert not (tmp_path / "out.csv").exists()


def test_the_sql_command_refuses_and_allows_files_through_the_cli(db, tmp_path):
    out = cli(db, f"COPY features TO '{tmp_path}/out.csv'")
    assert out.returncode == 2 and "refused" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "out.csv").exists()
    out = cli(db, "SELECT * FROM read_csv('/etc/passwd')")
    assert out.returncode == 2 and "--allow-files" in out.stderr and "root" not in out.stdout
    notes = tmp_path / "notes.parquet"
    pq.write_table(pa.table({"feature": [3], "note": ["x"]}), notes)
    out = cli(db, f"SELECT f.feature, n.note FROM features f JOIN read_parquet('{notes}') n USING (feature)",
              "--allow-files", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"feature": 3, "note": "x"}]


@pytest.mark.parametrize(("where", "message"), [
    ("1=1; DROP TABLE features", "one statement per call"),
    ("1=1) ORDER BY feature; COPY features TO '{tmp}/w.csv' --", "one statement per call"),
    ("feature IN (SELECT 1); COPY features TO '{tmp}/w.csv'", "one statement per call"),
    ("feature IN (SELECT column0::INT FROM read_csv('/etc/passwd'))", "cannot read or write files"),
])
def test_a_where_condition_cannot_escape(db, tmp_path, where, message):
    with store.open_store(db, read_only=True) as con, pytest.raises(BadInput, match="refused") as err:
        store.select_features(con, 1, where.format(tmp=tmp_path))
    assert message in str(err.value)
    assert not (tmp_path / "w.csv").exists()
    assert user_sql(db, "SELECT count(*) FROM features")[1][0][0] == 64


def test_a_where_condition_still_selects_with_subqueries_over_the_store(db):
    with store.open_store(db, read_only=True) as con:
        strong = store.select_features(con, 1, "feature IN (SELECT feature FROM features ORDER BY max_act DESC LIMIT 5)")
        expected = sorted(r[0] for r in con.execute(
            "SELECT feature FROM features ORDER BY max_act DESC LIMIT 5").fetchall())
    assert strong == expected


def test_a_where_condition_is_never_run_on_a_writable_connection(db):
    with store.open_store(db) as con, pytest.raises(InternalError, match="read-only"):
        store.select_features(con, 1, "max_act > 0")
