"""The DuckDB store's foundation: connections, named migrations, transactions and Arrow inserts. With
`sandbox` (user SQL) the only module that imports duckdb; the other store modules (the only modules with
SQL) take its connections.

DuckDB lets one process write at a time, so writers hold a connection only while they write (see
`open_store`), and readers open read-only; both wait a bounded time for a lock held by another process.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from autointerp import __version__
from autointerp.errors import BadInput, LockTimeout, cause
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
