"""The DuckDB store's foundation: connections, named migrations, transactions, the SQL sandbox for
user SQL, and Arrow inserts. The only module that imports duckdb; the other store modules (the only
modules with SQL) take its connections.

DuckDB lets one process write at a time, so writers hold a connection only while they write (see
`open_store`), and readers open read-only; both wait a bounded time for a lock held by another process.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from autointerp import __version__
from autointerp.errors import BadInput, InternalError, LockTimeout, cause
from autointerp.redact import redact
from autointerp.resources import data_dir

Connection = duckdb.DuckDBPyConnection
DBError = duckdb.Error
LOCK_WAIT_S = 60.0
# Set when connecting, before any statement: a file DuckDB does not recognise (SQLite, say) would
# otherwise make it download and load a scanner extension before the sandbox could refuse it.
_NO_EXTENSION_AUTOLOAD = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def lock_wait_s() -> float:
    """How long a connection waits for a lock held elsewhere: AUTOINTERP_LOCK_WAIT_S, else LOCK_WAIT_S
    (read when a connection opens, so a test or a script can shorten it)."""
    value = os.environ.get("AUTOINTERP_LOCK_WAIT_S")
    try:
        return float(value) if value else LOCK_WAIT_S
    except ValueError:
        raise BadInput(f"AUTOINTERP_LOCK_WAIT_S={value!r} is not a number of seconds") from None


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
            return duckdb.connect(str(path), read_only=read_only, config=dict(_NO_EXTENSION_AUTOLOAD))
        except duckdb.Error as exc:
            if not isinstance(exc, duckdb.IOException) or "lock" not in str(exc).lower():
                raise BadInput(f"cannot open {path}: not a DuckDB database this version can read, or a damaged "
                               f"one ({cause(exc)})") from exc
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
    # duckdb_tables(), not information_schema.tables: the latter lists every view's columns first (~60 ms a
    # call, paid by every request of `autointerp serve`).
    has_table = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_migrations'").fetchone()
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
        raise BadInput(
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
    path: str | Path, read_only: bool = False, wait_s: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the database at `path`, migrated to this version's schema (writers),
    or checked against it (readers), waiting `wait_s` (default `lock_wait_s()`) for a lock held
    elsewhere. Closed on exit, so other processes can get the lock."""
    path = Path(path)
    wait_s = lock_wait_s() if wait_s is None else wait_s
    if read_only and not path.exists():
        raise BadInput(f"no database at {path}: run `autointerp collect --db {path} ...` first")
    con = _connect(path, read_only, wait_s)
    try:
        try:
            pending = check_schema(con, path) if read_only else []
            if not read_only:
                migrate(con, path)
        except (duckdb.IOException, duckdb.SerializationException) as exc:  # a truncated file opens, then fails
            raise BadInput(f"cannot read {path}: a damaged DuckDB database ({cause(exc)})") from exc
        if pending:
            raise BadInput(
                f"{path} uses an older schema ({len(pending)} migration(s) behind); any writing command, "
                "such as `autointerp collect`, upgrades it"
            )
        try:
            yield con
        except (duckdb.IOException, duckdb.SerializationException) as exc:
            if "read" not in str(exc).lower():
                raise
            raise BadInput(f"cannot read {path}: a damaged DuckDB database ({cause(exc)})") from exc
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
    shares them until all are closed: sandbox only a read-only connection opened for the user's SQL (or an
    in-memory one that holds nothing), and close it afterwards, never reuse it for writes."""
    mode, name = con.execute("SELECT current_setting('access_mode'), current_database()").fetchone() or ("", "")
    if mode != "read_only" and name != "memory":
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


def _statement_kind(statement: Any) -> str:
    """The statement's type name; this duckdb's Python enum lacks some of its parser's types (UPDATE
    EXTENSIONS is 29), and those are refused like any other non-SELECT."""
    try:
        return str(statement.type.name)
    except ValueError:
        return "UNKNOWN"


def _one_select(con: duckdb.DuckDBPyConnection, sql: str, what: str) -> None:
    """Refuse anything but exactly one SELECT, using DuckDB's own parser."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise BadInput(f"SQL error: {cause(exc)}") from exc
    if len(statements) != 1:
        raise BadInput(f"refused: {what} runs one statement per call; this has {len(statements)}")
    kind = _statement_kind(statements[0])
    if kind != "SELECT":
        hint = {"SET": " (settings cannot be changed)", "PRAGMA": " (settings cannot be changed)",
                "LOAD": " (extensions cannot be installed or loaded)",
                "ATTACH": " (other databases cannot be attached)",
                "COPY": " (files cannot be written)", "EXPORT": " (files cannot be written)"}.get(kind, "")
        raise BadInput(f"refused: {what} is read-only and runs only SELECT queries; this is a {kind} statement{hint}")


def _sandbox_error(exc: duckdb.Error, what: str) -> BadInput:
    if isinstance(exc, duckdb.PermissionException):
        return BadInput(f"refused: {what} cannot read or write files, attach databases or load extensions "
                        f"({cause(exc)}); `autointerp sql --allow-files` lets a SELECT read files")
    return BadInput(f"SQL error: {cause(exc)}")


def query(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run our own SQL; returns column names and rows. User SQL goes through `user_query`."""
    try:
        cur = con.execute(sql)
    except duckdb.Error as exc:
        raise BadInput(f"SQL error: {cause(exc)}") from exc
    if cur.description is None:
        return [], []
    return [d[0] for d in cur.description], cur.fetchall()


def unique_columns(names: list[str]) -> list[str]:
    """Column names made unique (a, a_2, ...), so that no format that keys rows by name loses a column."""
    out: list[str] = []
    for name in names:
        new, n = name, 1
        while new in out or (new != name and new in names):
            n += 1
            new = f"{name}_{n}"
        out.append(new)
    return out


def _run_interruptibly(con: duckdb.DuckDBPyConnection, work: Any, timeout_s: float | None) -> Any:
    """`work()` on a worker thread while this thread waits, so that Ctrl-C and `timeout_s` interrupt the
    query at once. Ctrl-C only sets a flag: DuckDB polls Python's signal handlers from the worker, and a
    KeyboardInterrupt raised there aborts the process."""
    box: dict[str, Any] = {}
    stop = threading.Event()

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc

    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    except ValueError:  # not the main thread: no signal to catch
        previous = None
    thread = threading.Thread(target=target, name="autointerp-user-sql", daemon=True)
    deadline = None if not timeout_s else time.monotonic() + timeout_s
    try:
        thread.start()
        while thread.is_alive():
            thread.join(0.05)
            late = deadline is not None and time.monotonic() > deadline
            if thread.is_alive() and (late or stop.is_set()):
                con.interrupt()
                thread.join()
                if stop.is_set():
                    raise KeyboardInterrupt
                raise BadInput(f"the query ran longer than --timeout {timeout_s:g}s and was stopped; "
                               "narrow it or pass a larger --timeout (0: no limit)")
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def user_query(con: duckdb.DuckDBPyConnection, sql: str, allow_files: bool = False,
               timeout_s: float | None = None, max_rows: int | None = None
               ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one user SELECT in a sandbox (see `sandbox`: `con` must be read-only, and the caller closes
    it afterwards); returns column names (made unique) and rows: with `max_rows`, at most max_rows + 1,
    so the caller can tell a result that was cut. Stopped after `timeout_s` seconds (None or 0: never)."""
    _one_select(con, sql, "`autointerp sql`")
    sandbox(con, allow_files)

    def work() -> tuple[list[str], list[tuple[Any, ...]]]:
        cur = con.execute(sql)
        if cur.description is None:
            return [], []
        rows = cur.fetchall() if not max_rows else cur.fetchmany(max_rows + 1)
        return unique_columns([d[0] for d in cur.description]), rows

    try:
        result: tuple[list[str], list[tuple[Any, ...]]] = _run_interruptibly(con, work, timeout_s)
    except duckdb.Error as exc:
        raise _sandbox_error(exc, "`autointerp sql`") from exc
    return result


def _where_sql(where: str, option: str, con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse a condition that is empty, not one SELECT alone, or reaches outside its parentheses."""
    if not where.strip():
        raise BadInput(f"{option} is empty: leave the option out to select every feature")
    # The condition alone and spliced in must each parse as one SELECT: a condition that only parses
    # spliced in (unbalanced parentheses) would reach outside its parentheses.
    problems = []
    for candidate in (f"SELECT feature FROM features WHERE {where}", sql + " ORDER BY feature"):
        try:
            _one_select(con, candidate, option)
        except BadInput as exc:
            problems.append(str(exc))
    refused = [p for p in problems if p.startswith("refused")]
    if refused:
        raise BadInput(refused[0])
    if problems:
        raise BadInput(f"bad {option} condition on features: {problems[0].removeprefix('SQL error: ')}")


def select_features(con: duckdb.DuckDBPyConnection, dictionary_id: int, where: str | None = None,
                    feature_range: tuple[int, int] | None = None, option: str = "--where") -> list[int]:
    """Features of a dictionary, optionally filtered by a range and a SQL condition on `features` (given
    as `option`, for messages). A condition is user SQL: `con` must then be read-only and is sandboxed."""
    sql = "SELECT feature FROM features WHERE dictionary_id = ?"
    params: list[Any] = [dictionary_id]
    if feature_range is not None:
        sql += " AND feature >= ? AND feature < ?"
        params += list(feature_range)
    if where is not None:
        sql += f" AND ({where})"
        _where_sql(where, option, con, sql)
        sandbox(con)
    try:
        return [r[0] for r in con.execute(sql + " ORDER BY feature", params).fetchall()]
    except duckdb.Error as exc:
        if isinstance(exc, duckdb.PermissionException):
            raise _sandbox_error(exc, option) from exc
        raise BadInput(f"bad {option} condition on features: {cause(exc)}") from exc


def check_where(where: str, option: str) -> None:
    """Check a condition on `features` before there is a database to run it on (`run` checks its
    --label-where before collecting): against an empty in-memory copy of the schema, sandboxed."""
    con = duckdb.connect(":memory:", config=dict(_NO_EXTENSION_AUTOLOAD))
    try:
        migrate(con, Path(":memory:"))
        select_features(con, 0, where, option=option)
    finally:
        con.close()


def register(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """Register an Arrow table as a view. DuckDB refuses while a result of this connection is unread (a
    `fetchone()` of a one-row lookup leaves one), so that result is run to its end first."""
    con.complete()
    con.register(name, table)


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table | list[dict[str, Any]]) -> None:
    """Insert an Arrow table or dict rows (all with the same keys), inside the caller's transaction. An
    `error` of dict rows passes through `redact` first: every stored failure reason goes through here."""
    if not isinstance(rows, pa.Table) and rows and "error" in rows[0]:
        rows = [{**r, "error": redact(r["error"])} for r in rows]
    arrow = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    if arrow.num_rows == 0:
        return
    register(con, "_incoming", arrow)
    try:
        cols = ", ".join(arrow.column_names)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _incoming")
    finally:
        con.unregister("_incoming")
