"""The DuckDB store: connections, named migrations, typed writes and reads.

The only module that imports duckdb. DuckDB lets one process write at a time, so
writers hold a connection only while they write (see `open_store`), and readers
open read-only; both wait a bounded time for a lock held by another process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from autointerp import __version__
from autointerp.errors import AutointerpError
from autointerp.resources import data_dir

LOCK_WAIT_S = 60.0


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str


def known_migrations() -> list[Migration]:
    """Migrations shipped with this version, in the order they apply (by file name)."""
    files = sorted(data_dir("store").glob("[0-9][0-9][0-9]_*.sql"))
    return [Migration(f.stem, f.read_text()) for f in files]


def _connect(path: Path, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            # Another process holds the write lock; it lets go between writes.
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise AutointerpError(
                    f"cannot open {path}: {exc}. Another autointerp process may be writing to it; "
                    "try again when it finishes a write"
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def applied_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    has_table = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
    ).fetchone()
    if not has_table or has_table[0] == 0:
        return []
    return [r[0] for r in con.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()]


def check_schema(con: duckdb.DuckDBPyConnection, path: Path) -> list[Migration]:
    """Refuse a database from a newer autointerp; return the migrations still to apply."""
    known = known_migrations()
    known_names = {m.name for m in known}
    applied = applied_migrations(con)
    unknown = [n for n in applied if n not in known_names]
    if unknown:
        raise AutointerpError(
            f"{path} was written by a newer autointerp: it has migrations this version does not know "
            f"({', '.join(unknown)}). Upgrade autointerp (this is {__version__}) to open it."
        )
    return [m for m in known if m.name not in set(applied)]


def migrate(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns the names applied."""
    pending = check_schema(con, path)
    con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    for m in pending:
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(m.sql)
            con.execute("INSERT INTO schema_migrations VALUES (?, current_timestamp)", [m.name])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    return [m.name for m in pending]


@contextmanager
def open_store(
    path: str | Path, read_only: bool = False, wait_s: float = LOCK_WAIT_S
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the database at `path`, migrated to this version's schema (writers),
    or checked against it (readers). Closed on exit, so other processes can get the lock."""
    path = Path(path)
    if read_only and not path.exists():
        raise AutointerpError(f"no database at {path}: run `autointerp collect --db {path} ...` first")
    con = _connect(path, read_only, wait_s)
    try:
        if read_only:
            pending = check_schema(con, path)
            if pending:
                raise AutointerpError(
                    f"{path} uses an older schema ({len(pending)} migration(s) behind); any writing command, "
                    "such as `autointerp collect`, upgrades it"
                )
        else:
            migrate(con, path)
        yield con
    finally:
        con.close()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


# ---------------------------------------------------------------- dictionaries


@dataclass(frozen=True)
class DictionaryRow:
    dictionary_id: int
    model: str
    hook: str
    kind: str
    sae: str | None
    random_init: bool
    seed: int
    dataset: str
    ctx_len: int
    n_tokens: int | None
    n_contexts: int | None
    n_features: int
    status: str
    config_hash: str
    config: dict[str, Any]


_DICT_COLS = (
    "dictionary_id, model, hook, kind, sae, random_init, seed, dataset, ctx_len, n_tokens, n_contexts, "
    "n_features, status, config_hash, config"
)


def _dictionary(row: tuple[Any, ...]) -> DictionaryRow:
    values = list(row)
    values[-1] = json.loads(values[-1]) if isinstance(values[-1], str) else values[-1]
    return DictionaryRow(*values)


def get_dictionary(con: duckdb.DuckDBPyConnection, dictionary_id: int) -> DictionaryRow:
    row = con.execute(f"SELECT {_DICT_COLS} FROM dictionaries WHERE dictionary_id = ?", [dictionary_id]).fetchone()
    if row is None:
        raise AutointerpError(f"no dictionary {dictionary_id}; `autointerp status` lists them")
    return _dictionary(row)


def list_dictionaries(con: duckdb.DuckDBPyConnection) -> list[DictionaryRow]:
    rows = con.execute(f"SELECT {_DICT_COLS} FROM dictionaries ORDER BY dictionary_id").fetchall()
    return [_dictionary(r) for r in rows]


def find_dictionary(con: duckdb.DuckDBPyConnection, config_hash: str) -> DictionaryRow | None:
    row = con.execute(
        f"SELECT {_DICT_COLS} FROM dictionaries WHERE config_hash = ? ORDER BY dictionary_id DESC LIMIT 1",
        [config_hash],
    ).fetchone()
    return None if row is None else _dictionary(row)


def begin_dictionary(
    con: duckdb.DuckDBPyConnection,
    *,
    model: str,
    hook: str,
    kind: str,
    sae: str | None,
    random_init: bool,
    seed: int,
    dataset: str,
    ctx_len: int,
    n_features: int,
    config_hash: str,
    config: dict[str, Any],
) -> int:
    """Register a collection as 'incomplete' before the long run, so a kill leaves a marked row.
    An incomplete dictionary with the same config is reused (its partial rows cleared)."""
    with transaction(con):
        existing = find_dictionary(con, config_hash)
        if existing is not None and existing.status == "incomplete":
            _delete_rows(con, existing.dictionary_id)
            return existing.dictionary_id
        next_id = con.execute("SELECT coalesce(max(dictionary_id), 0) + 1 FROM dictionaries").fetchone()
        assert next_id is not None
        dictionary_id = int(next_id[0])
        con.execute(
            "INSERT INTO dictionaries (dictionary_id, model, hook, kind, sae, random_init, seed, dataset, ctx_len, "
            "n_features, status, config_hash, config, autointerp_version) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'incomplete', ?, ?, ?)",
            [dictionary_id, model, hook, kind, sae, random_init, seed, dataset, ctx_len, n_features,
             config_hash, json.dumps(config, sort_keys=True), __version__],
        )
    return dictionary_id


def _delete_rows(con: duckdb.DuckDBPyConnection, dictionary_id: int) -> None:
    for table in ("examples", "features", "sequences"):
        con.execute(f"DELETE FROM {table} WHERE dictionary_id = ?", [dictionary_id])


def delete_dictionary(con: duckdb.DuckDBPyConnection, dictionary_id: int) -> None:
    """Remove a dictionary and everything collected for it (used to undo a run that failed on bad input)."""
    with transaction(con):
        _delete_rows(con, dictionary_id)
        con.execute("DELETE FROM dictionaries WHERE dictionary_id = ?", [dictionary_id])


def complete_dictionary(
    con: duckdb.DuckDBPyConnection,
    dictionary_id: int,
    *,
    n_tokens: int,
    n_contexts: int,
    sequences: pa.Table,
    features: pa.Table,
    examples: pa.Table,
) -> None:
    """Write a finished collection in one transaction and mark it complete: readers see all of it or none."""
    with transaction(con):
        _delete_rows(con, dictionary_id)
        for name, table in (("sequences", sequences), ("features", features), ("examples", examples)):
            insert_rows(con, name, table)
        con.execute(
            "UPDATE dictionaries SET status = 'complete', n_tokens = ?, n_contexts = ?, completed_at = current_timestamp "
            "WHERE dictionary_id = ?",
            [n_tokens, n_contexts, dictionary_id],
        )


# ---------------------------------------------------------------- reads


@dataclass(frozen=True)
class ContextRow:
    split: str
    kind: str
    rank: int
    tokens: list[str]
    acts: list[float]
    max_act: float
    quantile: int | None


def feature_contexts(
    con: duckdb.DuckDBPyConnection, dictionary_id: int, feature: int
) -> list[ContextRow]:
    rows = con.execute(
        "SELECT split, kind, rank, tokens, acts, max_act, quantile FROM contexts "
        "WHERE dictionary_id = ? AND feature = ? "
        "ORDER BY split, CASE kind WHEN 'top' THEN 0 WHEN 'quantile' THEN 1 ELSE 2 END, quantile DESC, rank",
        [dictionary_id, feature],
    ).fetchall()
    return [ContextRow(*r) for r in rows]


def feature_stats(con: duckdb.DuckDBPyConnection, dictionary_id: int, feature: int) -> dict[str, Any] | None:
    cur = con.execute(
        "SELECT max_act, mean_act, frac_active, n_active, hist_bin_width, hist_counts FROM features "
        "WHERE dictionary_id = ? AND feature = ?",
        [dictionary_id, feature],
    )
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cur.description], row, strict=True))


def query(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run user SQL; returns column names and rows."""
    try:
        cur = con.execute(sql)
    except duckdb.Error as exc:
        raise AutointerpError(f"SQL error: {exc}") from exc
    if cur.description is None:
        return [], []
    return [d[0] for d in cur.description], cur.fetchall()


# ---------------------------------------------------------------- explain and score


def read_feature_contexts(
    con: duckdb.DuckDBPyConnection, dictionary_id: int, features: list[int]
) -> dict[int, Any]:
    """FeatureContexts records for the given features of a dictionary."""
    from autointerp.types import Context, FeatureContexts

    if not features:
        return {}
    con.register("_wanted", pa.table({"feature": pa.array(features, pa.int32())}))
    try:
        stats = dict(con.execute(
            "SELECT f.feature, f.max_act FROM features f JOIN _wanted USING (feature) WHERE f.dictionary_id = ?",
            [dictionary_id]).fetchall())
        rows = con.execute(
            "SELECT c.feature, c.seq, c.split, c.kind, c.rank, c.tokens, c.acts, c.quantile FROM contexts c "
            "JOIN _wanted USING (feature) "
            "WHERE c.dictionary_id = ? ORDER BY c.feature, c.split, c.kind, c.quantile, c.rank", [dictionary_id]).fetchall()
        found = con.execute("SELECT CAST(config->>'threshold' AS DOUBLE) FROM dictionaries WHERE dictionary_id = ?",
                            [dictionary_id]).fetchall()
    finally:
        con.unregister("_wanted")
    threshold = float(found[0][0]) if found and found[0][0] is not None else 0.0
    grouped: dict[int, list[Context]] = {f: [] for f in stats}
    for feature, seq, split, kind, rank, tokens, acts, quantile in rows:
        grouped[feature].append(Context(seq=seq, split=split, kind=kind, rank=rank, tokens=tokens, acts=acts,
                                        quantile=quantile))
    return {f: FeatureContexts(dictionary_id=dictionary_id, feature=f, max_act=float(stats[f]), contexts=ctxs,
                               threshold=threshold)
            for f, ctxs in grouped.items()}


def select_features(con: duckdb.DuckDBPyConnection, dictionary_id: int, where: str | None = None,
                    feature_range: tuple[int, int] | None = None) -> list[int]:
    """Features of a dictionary, optionally filtered by a range and a SQL condition on `features`."""
    sql = "SELECT feature FROM features WHERE dictionary_id = ?"
    params: list[Any] = [dictionary_id]
    if feature_range is not None:
        sql += " AND feature >= ? AND feature < ?"
        params += list(feature_range)
    if where:
        sql += f" AND ({where})"
    try:
        return [r[0] for r in con.execute(sql + " ORDER BY feature", params).fetchall()]
    except duckdb.Error as exc:
        raise AutointerpError(f"bad --where condition on features: {exc}") from exc


def explained_features(con: duckdb.DuckDBPyConnection, dictionary_id: int, explainer: str, prompt_hash: str) -> set[int]:
    return {r[0] for r in con.execute(
        "SELECT feature FROM explanations WHERE dictionary_id = ? AND explainer = ? AND prompt_hash = ?",
        [dictionary_id, explainer, prompt_hash]).fetchall()}


def unscored_explanations(con: duckdb.DuckDBPyConnection, dictionary_id: int, simulator: str, prompt_hash: str,
                          explainers: list[str] | None = None) -> list[tuple[str, int, str, str]]:
    """(explanation_id, feature, label, explainer) of ok explanations with no score run for this simulator."""
    sql = ("SELECT e.explanation_id, e.feature, e.label, e.explainer FROM explanations e "
           "WHERE e.dictionary_id = ? AND e.status = 'ok' AND NOT EXISTS (SELECT 1 FROM score_runs r "
           "WHERE r.explanation_id = e.explanation_id AND r.simulator = ? AND r.prompt_hash = ?)")
    params: list[Any] = [dictionary_id, simulator, prompt_hash]
    if explainers:
        sql += f" AND e.explainer IN ({', '.join('?' * len(explainers))})"
        params += explainers
    return [tuple(r) for r in con.execute(sql + " ORDER BY e.feature, e.explainer", params).fetchall()]  # type: ignore[misc]


RESULT_TABLES = ("explanations", "score_runs", "simulations", "scores", "llm_calls")


@dataclass
class Bundle:
    """One finished unit of work (a feature explained and/or scored) and the rows it adds.
    `explains` / `scores` name what it completes, so a second copy of the same work is never stored."""

    rows: dict[str, list[dict[str, Any]]]
    explains: tuple[int, int, str, str] | None = None  # (dictionary_id, feature, explainer, prompt_hash)
    scores: list[tuple[str, str, str]] | None = None  # [(explanation_id, simulator, prompt_hash)]


def write_bundles(con: duckdb.DuckDBPyConnection, bundles: list[Bundle]) -> int:
    """Insert finished work in one transaction: each bundle's rows become visible together or not at all.
    A bundle whose work is already recorded (another process did it) is dropped whole. Returns bundles written."""
    with transaction(con):
        merged: dict[str, list[dict[str, Any]]] = {t: [] for t in RESULT_TABLES}
        written = 0
        for b in bundles:
            if b.explains is not None and con.execute(
                "SELECT 1 FROM explanations WHERE dictionary_id = ? AND feature = ? AND explainer = ? AND prompt_hash = ?",
                list(b.explains)).fetchone():
                continue
            if b.scores and any(con.execute(
                "SELECT 1 FROM score_runs WHERE explanation_id = ? AND simulator = ? AND prompt_hash = ?",
                list(k)).fetchone() for k in b.scores):
                continue
            for table, rows in b.rows.items():
                merged[table] += rows
            written += 1
        for table in RESULT_TABLES:
            insert_rows(con, table, merged[table])
    return written


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table | list[dict[str, Any]]) -> None:
    """Insert an Arrow table or dict rows (all with the same keys), inside the caller's transaction."""
    arrow = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    if arrow.num_rows == 0:
        return
    con.register("_incoming", arrow)
    try:
        cols = ", ".join(arrow.column_names)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _incoming")
    finally:
        con.unregister("_incoming")
