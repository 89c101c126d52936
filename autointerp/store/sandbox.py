"""User SQL, run safely: the sandbox (no files, extensions or settings), one-SELECT checks with DuckDB's
own parser, interruptible queries with a timeout, and the `--where` conditions on features. With `db` the
only module that imports duckdb.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import duckdb

from autointerp.errors import BadInput, InternalError, cause
from autointerp.store.db import _NO_EXTENSION_AUTOLOAD, migrate

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
