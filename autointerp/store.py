"""The DuckDB store: connections, named migrations, typed writes and reads.

The only module that imports duckdb. DuckDB lets one process write at a time, so
writers hold a connection only while they write (see `open_store`), and readers
open read-only; both wait a bounded time for a lock held by another process.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from autointerp import __version__
from autointerp.errors import AutointerpError, BadInput, InternalError, LockTimeout
from autointerp.resources import data_dir
from autointerp.types import CallRow, Explanation, ScoreRow, ScoreRun, SimulatedContext, Simulation

LOCK_WAIT_S = 60.0


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str


def known_migrations() -> list[Migration]:
    """Migrations shipped with this version, in the order they apply (by file name)."""
    files = sorted(data_dir("store").glob("[0-9][0-9][0-9]_*.sql"))
    return [Migration(f.stem, f.read_text()) for f in files]


_HOLDER = re.compile(r"lock is held in (.+?) \(PID (\d+)\)")
_log = logging.getLogger("autointerp.store")


def lock_holder(message: str) -> str | None:
    """'PROGRAM (PID N)' of the process holding the lock, as DuckDB's lock error names it."""
    m = _HOLDER.search(message)
    return f"{m.group(1)} (PID {m.group(2)})" if m else None


def _connect(path: Path, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
    """Connect, waiting up to `wait_s` for a lock held by another process; says (on the
    'autointerp.store' logger, stderr by default) who holds it when the wait is long."""
    start = time.monotonic()
    delay = 0.05
    announced = 0.0  # when we last said we were waiting
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise BadInput(f"cannot open {path}: {exc}") from exc
            holder = lock_holder(str(exc))
            waited = time.monotonic() - start
            if waited > wait_s:
                raise LockTimeout(
                    f"cannot open {path}: the database stayed locked by {holder or 'another process'} for "
                    f"{waited:.0f}s. Close that connection (a notebook, the DuckDB CLI, a long `autointerp sql`) "
                    "and try again", holder,
                ) from exc
            if waited >= 1.0 and (not announced or waited - announced >= 60.0):
                # Short waits are normal (writers let go between writes); a long one must be visible.
                _log.warning("waiting for the database lock on %s held by %s (%.0fs so far, up to %.0fs)",
                             path, holder or "another process", waited, wait_s)
                announced = waited
            pause = min(delay, max(0.0, wait_s - waited) + 0.01)
            if not announced and waited < 1.0:
                pause = min(pause, 1.0 - waited + 0.01)  # wake to announce at one second
            time.sleep(pause)
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


# ---------------------------------------------------------------- user SQL

# DuckDB settings that keep user SQL inside the database: no file or network access (COPY TO, ATTACH,
# EXPORT, read_csv of any path), no extension install or load, and no way to SET them back.
_SANDBOX_SETTINGS = ("SET autoinstall_known_extensions = false", "SET autoload_known_extensions = false",
                     "SET python_enable_replacements = false")
_LOCK = "SET lock_configuration = true"


def sandbox(con: duckdb.DuckDBPyConnection, allow_files: bool = False) -> None:
    """Lock `con` down before it runs user SQL: no file system access (unless `allow_files`, which lets
    SELECTs read files such as read_parquet), no extensions, and the configuration locked.

    The settings belong to the database instance, so every connection to the same file in this process
    shares them until all are closed: sandbox only a read-only connection opened for the user's SQL, and
    close it afterwards, never reuse it for writes."""
    if con.execute("SELECT current_setting('access_mode')").fetchone() != ("read_only",):
        raise InternalError("user SQL runs only on a read-only connection")
    locked, external = con.execute(
        "SELECT current_setting('lock_configuration'), current_setting('enable_external_access')").fetchone() or (0, 0)
    if locked:  # sandboxed already (a second query on the same connection)
        if external and not allow_files:
            raise InternalError("this connection was sandboxed with file access; open a new one")
        return
    for statement in _SANDBOX_SETTINGS + (() if allow_files else ("SET enable_external_access = false",)):
        con.execute(statement)
    con.execute(_LOCK)


def _one_select(con: duckdb.DuckDBPyConnection, sql: str, what: str) -> None:
    """Refuse anything but exactly one SELECT, using DuckDB's own parser."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise BadInput(f"SQL error: {exc}") from exc
    if len(statements) != 1:
        raise BadInput(f"refused: {what} runs one statement per call; this has {len(statements)}")
    kind = statements[0].type.name
    if kind != "SELECT":
        hint = {"SET": " (settings cannot be changed)", "PRAGMA": " (settings cannot be changed)",
                "LOAD": " (extensions cannot be installed or loaded)",
                "ATTACH": " (other databases cannot be attached)",
                "COPY": " (files cannot be written)", "EXPORT": " (files cannot be written)"}.get(kind, "")
        raise BadInput(f"refused: {what} is read-only and runs only SELECT queries; this is a {kind} statement{hint}")


def _sandbox_error(exc: duckdb.Error, what: str) -> BadInput:
    if isinstance(exc, duckdb.PermissionException):
        return BadInput(f"refused: {what} cannot read or write files, attach databases or load extensions "
                        f"({exc}); `autointerp sql --allow-files` lets a SELECT read files")
    return BadInput(f"SQL error: {exc}")


def query(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run our own SQL; returns column names and rows. User SQL goes through `user_query`."""
    try:
        cur = con.execute(sql)
    except duckdb.Error as exc:
        raise AutointerpError(f"SQL error: {exc}") from exc
    if cur.description is None:
        return [], []
    return [d[0] for d in cur.description], cur.fetchall()


def user_query(con: duckdb.DuckDBPyConnection, sql: str, allow_files: bool = False
               ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one user SELECT in a sandbox (see `sandbox`: `con` must be read-only, and the caller closes
    it afterwards); returns column names and rows."""
    _one_select(con, sql, "`autointerp sql`")
    sandbox(con, allow_files)
    try:
        cur = con.execute(sql)
    except duckdb.Error as exc:
        raise _sandbox_error(exc, "`autointerp sql`") from exc
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
            "SELECT c.feature, c.seq, c.split, c.kind, c.rank, c.tokens, c.acts FROM contexts c JOIN _wanted USING (feature) "
            "WHERE c.dictionary_id = ? ORDER BY c.feature, c.split, c.kind, c.quantile, c.rank", [dictionary_id]).fetchall()
    finally:
        con.unregister("_wanted")
    grouped: dict[int, list[Context]] = {f: [] for f in stats}
    for feature, seq, split, kind, rank, tokens, acts in rows:
        grouped[feature].append(Context(seq=seq, split=split, kind=kind, rank=rank, tokens=tokens, acts=acts))
    return {f: FeatureContexts(dictionary_id=dictionary_id, feature=f, max_act=float(stats[f]), contexts=ctxs)
            for f, ctxs in grouped.items()}


def select_features(con: duckdb.DuckDBPyConnection, dictionary_id: int, where: str | None = None,
                    feature_range: tuple[int, int] | None = None) -> list[int]:
    """Features of a dictionary, optionally filtered by a range and a SQL condition on `features`.
    A condition is user SQL: `con` must then be read-only and is sandboxed (see `sandbox`)."""
    sql = "SELECT feature FROM features WHERE dictionary_id = ?"
    params: list[Any] = [dictionary_id]
    if feature_range is not None:
        sql += " AND feature >= ? AND feature < ?"
        params += list(feature_range)
    if where:
        sql += f" AND ({where})"
        # The condition alone and spliced in must each parse as one SELECT: a condition that only parses
        # spliced in (unbalanced parentheses) would reach outside its parentheses.
        problems = []
        for candidate in (f"SELECT feature FROM features WHERE {where}", sql + " ORDER BY feature"):
            try:
                _one_select(con, candidate, "--where")
            except BadInput as exc:
                problems.append(str(exc))
        refused = [p for p in problems if p.startswith("refused")]
        if refused:
            raise BadInput(refused[0])
        if problems:
            raise BadInput(f"bad --where condition on features: {problems[0].removeprefix('SQL error: ')}")
        sandbox(con)
    try:
        return [r[0] for r in con.execute(sql + " ORDER BY feature", params).fetchall()]
    except duckdb.Error as exc:
        if isinstance(exc, duckdb.PermissionException):
            raise _sandbox_error(exc, "--where") from exc
        raise BadInput(f"bad --where condition on features: {exc}") from exc


def explained_features(con: duckdb.DuckDBPyConnection, dictionary_id: int, explainer: str, prompt_hash: str,
                       retry_failed: bool = False) -> set[int]:
    """Features whose explanation by `explainer` with these prompts is done: an ok row exists, or a failed
    one and failures are not being retried."""
    return {r[0] for r in con.execute(
        "SELECT feature FROM explanations WHERE dictionary_id = ? AND explainer = ? AND prompt_hash = ? "
        "GROUP BY feature HAVING bool_or(status = 'ok') OR NOT ?",
        [dictionary_id, explainer, prompt_hash, retry_failed]).fetchall()}


@dataclass(frozen=True)
class PendingScore:
    explanation_id: str
    feature: int
    label: str
    explainer: str


def unscored_explanations(con: duckdb.DuckDBPyConnection, dictionary_id: int, simulator: str, settings_hash: str,
                          explainers: list[str], retry_failed: bool = False) -> list[PendingScore]:
    """Ok explanations by these explainers with no simulation run of these settings (ok, or failed when
    failures are not being retried)."""
    if not explainers:
        return []
    rows = con.execute(f"""
        SELECT e.explanation_id, e.feature, e.label, e.explainer FROM explanations e
        WHERE e.dictionary_id = ? AND e.status = 'ok' AND e.explainer IN ({', '.join('?' * len(explainers))})
          AND NOT EXISTS (SELECT 1 FROM score_runs r WHERE r.explanation_id = e.explanation_id AND r.stage = 'simulation'
                          AND r.simulator = ? AND r.settings_hash = ? AND (r.status = 'ok' OR NOT ?))
        ORDER BY e.feature, e.explainer""", [dictionary_id, *explainers, simulator, settings_hash, retry_failed])
    return [PendingScore(*r) for r in rows.fetchall()]


def null_explanations(con: duckdb.DuckDBPyConnection, dictionary_id: int, explainer: str) -> list[Explanation]:
    """The null labels made for `explainer`'s labels in this dictionary (shuffled and constant)."""
    cur = con.execute(
        "SELECT * EXCLUDE (autointerp_version, created_at) FROM explanations WHERE dictionary_id = ? "
        "AND ((null_kind = 'shuffled' AND null_of = ?) OR null_kind = 'constant') ORDER BY feature",
        [dictionary_id, explainer])
    cols = [d[0] for d in cur.description]
    return [Explanation(**dict(zip(cols, r, strict=True))) for r in cur.fetchall()]


def ok_labels(con: duckdb.DuckDBPyConnection, dictionary_id: int, explainer: str) -> dict[int, str]:
    """feature -> label of the newest ok explanation by `explainer` (real labels, not nulls)."""
    return dict(con.execute(
        "SELECT feature, label FROM explanations WHERE dictionary_id = ? AND explainer = ? AND status = 'ok' "
        "AND null_kind IS NULL QUALIFY row_number() OVER (PARTITION BY feature ORDER BY created_at DESC) = 1",
        [dictionary_id, explainer]).fetchall())


@dataclass
class Bundle:
    """One finished unit of work (a feature explained and/or scored) and the rows it adds, as records.
    Written whole or not at all; a bundle whose ok work is already recorded (another process did it) is
    dropped whole, so nothing is stored twice."""

    explanations: list[Explanation] = field(default_factory=list)
    runs: list[ScoreRun] = field(default_factory=list)
    simulations: list[Simulation] = field(default_factory=list)
    scores: list[ScoreRow] = field(default_factory=list)
    calls: list[CallRow] = field(default_factory=list)

    def extend(self, other: Bundle) -> None:
        for name in ("explanations", "runs", "simulations", "scores", "calls"):
            getattr(self, name).extend(getattr(other, name))


def _already_done(con: duckdb.DuckDBPyConnection, b: Bundle) -> bool:
    for e in b.explanations:
        if e.status == "ok" and con.execute(
                "SELECT 1 FROM explanations WHERE dictionary_id = ? AND feature = ? AND explainer = ? "
                "AND prompt_hash = ? AND status = 'ok'",
                [e.dictionary_id, e.feature, e.explainer, e.prompt_hash]).fetchone():
            return True
    return any(r.status == "ok" and con.execute(
        "SELECT 1 FROM score_runs WHERE explanation_id = ? AND simulator = ? AND stage = ? AND settings_hash = ? "
        "AND status = 'ok'", [r.explanation_id, r.simulator, r.stage, r.settings_hash]).fetchone() for r in b.runs)


def write_bundles(con: duckdb.DuckDBPyConnection, bundles: list[Bundle]) -> int:
    """Insert finished work in one transaction: each bundle's rows become visible together or not at all.
    Returns the bundles written."""
    with transaction(con):
        merged = Bundle()
        written = 0
        for b in bundles:
            if _already_done(con, b):
                continue
            merged.extend(b)
            written += 1
        version = {"autointerp_version": __version__}
        insert_rows(con, "explanations", [{**e.model_dump(), **version} for e in merged.explanations])
        insert_rows(con, "score_runs", [{**r.model_dump(), **version} for r in merged.runs])
        insert_rows(con, "simulations", [s.model_dump() for s in merged.simulations])
        insert_rows(con, "scores", [s.model_dump() for s in merged.scores])
        insert_rows(con, "llm_calls", [c.model_dump() for c in merged.calls])
    return written


# ---------------------------------------------------------------- behaviour


@dataclass(frozen=True)
class SimulationRunRef:
    run_id: str
    explanation_id: str
    feature: int
    simulator: str
    prompt_hash: str


def behaviour_pending(con: duckdb.DuckDBPyConnection, dictionary_id: int, settings_hash: str,
                      features: list[int] | None = None, retry_failed: bool = False) -> list[SimulationRunRef]:
    """The newest ok simulation run of each explanation and simulator that has no behaviour run with these
    settings (ok, or failed when failures are not being retried)."""
    rows = con.execute("""
        WITH newest AS (
            SELECT * FROM score_runs WHERE dictionary_id = ? AND stage = 'simulation'
            QUALIFY row_number() OVER (PARTITION BY explanation_id, simulator ORDER BY created_at DESC, run_id) = 1)
        SELECT n.run_id, n.explanation_id, n.feature, n.simulator, n.prompt_hash FROM newest n
        WHERE n.status = 'ok' AND NOT EXISTS (
            SELECT 1 FROM score_runs b WHERE b.source_run_id = n.run_id AND b.stage = 'behaviour'
            AND b.settings_hash = ? AND (b.status = 'ok' OR NOT ?))
        ORDER BY n.feature, n.explanation_id, n.simulator""", [dictionary_id, settings_hash, retry_failed]).fetchall()
    refs = [SimulationRunRef(*r) for r in rows]
    if features is not None:
        wanted = set(features)
        refs = [r for r in refs if r.feature in wanted]
    return refs


def feature_mean(con: duckdb.DuckDBPyConnection, dictionary_id: int, feature: int) -> float:
    row = con.execute("SELECT mean_act FROM features WHERE dictionary_id = ? AND feature = ?",
                      [dictionary_id, feature]).fetchone()
    if row is None:
        raise AutointerpError(f"dictionary {dictionary_id} has no feature {feature}")
    return float(row[0])


def simulated_contexts(con: duckdb.DuckDBPyConnection, run_id: str) -> list[SimulatedContext]:
    """One simulation run's contexts, each with its tokens, true and predicted activations: all from
    that run, so tokens and predictions always belong together."""
    rows = con.execute("""
        SELECT s.seq, s.kind, s.purpose, q.token_ids, e.acts, s.predicted FROM simulations s
        JOIN examples e ON e.dictionary_id = s.dictionary_id AND e.feature = s.feature AND e.seq = s.seq
             AND e.split = s.split AND e.kind = s.kind AND e.rank = s.rank
        JOIN sequences q ON q.dictionary_id = s.dictionary_id AND q.seq = s.seq
        WHERE s.run_id = ? ORDER BY s.purpose, s.kind DESC, s.rank""", [run_id]).fetchall()
    return [SimulatedContext(seq=r[0], kind=r[1], purpose=r[2], token_ids=r[3], acts=r[4], predicted=r[5])
            for r in rows]


# ---------------------------------------------------------------- reads for status, compare, export, report


@dataclass(frozen=True)
class Table:
    """Rows to show as they are (status, summaries, usage): column names and row tuples."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


def _table(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Table:
    cur = con.execute(sql, params or [])
    return Table([d[0] for d in cur.description], cur.fetchall())


def dictionary_status(con: duckdb.DuckDBPyConnection) -> Table:
    return _table(con, """
        SELECT d.dictionary_id AS id, d.model, d.hook, d.kind, d.random_init,
               coalesce(json_extract_string(d.config, '$.init_scheme'), CASE WHEN d.random_init THEN 'init' END)
                 AS scheme, d.status, d.n_tokens, d.n_features, count(f.feature) AS features_stored,
               (SELECT count(*) FROM examples e WHERE e.dictionary_id = d.dictionary_id) AS examples,
               (SELECT count(*) FROM labels x WHERE x.dictionary_id = d.dictionary_id AND x.status = 'ok'
                  AND x.null_kind IS NULL AND x.explainer NOT LIKE 'baseline:%') AS llm_labels,
               (SELECT count(*) FROM labels x WHERE x.dictionary_id = d.dictionary_id
                  AND x.status = 'failed') AS failed_labels,
               (SELECT count(DISTINCT s.explanation_id) FROM scores s
                  WHERE s.dictionary_id = d.dictionary_id) AS scored_labels,
               d.dataset, d.created_at
        FROM dictionaries d LEFT JOIN features f USING (dictionary_id)
        GROUP BY ALL ORDER BY id""")


@dataclass(frozen=True)
class LabelScores:
    """One row of the `labels` view: a label and its scores (method -> value, None where undefined)."""

    dictionary_id: int
    feature: int
    explainer: str
    simulator: str | None
    label: str | None
    null_kind: str | None
    values: dict[str, float | None]


def label_scores(con: duckdb.DuckDBPyConnection, methods: tuple[str, ...],
                 dictionary_ids: list[int] | None = None) -> list[LabelScores]:
    """Ok labels (real and null) with the given score columns of the `labels` view."""
    known = {d[0] for d in con.execute("DESCRIBE labels").fetchall()}
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise AutointerpError(f"no score columns {unknown} in the labels view")
    sql = (f"SELECT dictionary_id, feature, explainer, simulator, label, null_kind, {', '.join(methods)} "
           "FROM labels WHERE status = 'ok'")
    params: list[Any] = []
    if dictionary_ids is not None:
        sql += f" AND dictionary_id IN ({', '.join('?' * len(dictionary_ids))})"
        params = list(dictionary_ids)
    rows = con.execute(sql + " ORDER BY dictionary_id, explainer, feature", params).fetchall()
    return [LabelScores(*r[:6], dict(zip(methods, r[6:], strict=True))) for r in rows]  # type: ignore[call-arg]


@dataclass(frozen=True)
class ScoreValue:
    dictionary_id: int
    feature: int
    explainer: str
    simulator: str
    settings_hash: str
    method: str
    value: float | None


def score_values(con: duckdb.DuckDBPyConnection, dictionary_ids: list[int]) -> list[ScoreValue]:
    """Every score of the newest runs of these dictionaries' real labels, with the run's settings hash."""
    rows = con.execute(f"""
        SELECT l.dictionary_id, l.feature, l.explainer, l.simulator, r.settings_hash, l.method, l.value
        FROM latest_scores l JOIN score_runs r USING (run_id)
        WHERE l.dictionary_id IN ({', '.join('?' * len(dictionary_ids))}) AND l.null_kind IS NULL
        ORDER BY ALL""", dictionary_ids).fetchall()
    return [ScoreValue(*r) for r in rows]


def labels_table(con: duckdb.DuckDBPyConnection, dictionary_id: int) -> Table:
    """The `labels` view of one dictionary: every column, for export."""
    return _table(con, "SELECT * FROM labels WHERE dictionary_id = ? ORDER BY feature, explainer, simulator",
                  [dictionary_id])


def summary_table(con: duckdb.DuckDBPyConnection, dictionary_ids: list[int], columns: list[str]) -> Table:
    """Columns of the `dictionary_summary` view for these dictionaries."""
    return _table(con, f"SELECT {', '.join(columns)} FROM dictionary_summary "
                       f"WHERE dictionary_id IN ({', '.join('?' * len(dictionary_ids))}) ORDER BY ALL",
                  dictionary_ids)


def llm_usage(con: duckdb.DuckDBPyConnection) -> Table:
    """Calls, errors, tokens and cost per role and model."""
    return _table(con, "SELECT role, model, count(*) AS calls, count(*) FILTER (status = 'error') AS errors, "
                       "sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens, "
                       "sum(cost_usd) AS cost_usd FROM llm_calls GROUP BY ALL ORDER BY ALL")


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
