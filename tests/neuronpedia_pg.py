"""A throwaway PostgreSQL with Neuronpedia's schema, and Neuronpedia's dataset import replayed against it.

The schema comes from Neuronpedia's own Prisma migrations and the import runs the SQL of its admin import route,
both copied under tests/neuronpedia/ (see SOURCE.md there for the commit). Debian's `postgresql` package
provides the server; the cluster lives in a temporary directory, listens on a Unix socket only, and is stopped
and removed on exit. As root (CI), the server runs as the `postgres` user, since PostgreSQL refuses root."""

from __future__ import annotations

import contextlib
import glob
import gzip
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NP_DIR = Path(__file__).parent / "neuronpedia"
BOT_USER_ID = "clkht01d40000jv08hvalcvly"  # apps/webapp/prisma/seed.ts


def pg_bin() -> Path | None:
    """The directory of Debian's PostgreSQL server binaries (initdb, pg_ctl), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    pwd.getpwnam("postgres")  # Debian's package creates it; KeyError says so if it is missing
    return ["runuser", "-u", "postgres", "--", *cmd]


@contextlib.contextmanager
def cluster() -> Iterator[str]:
    """Start a cluster; yields a psycopg connection string (Unix socket, trust auth, database `postgres`)."""
    bindir = pg_bin()
    assert bindir is not None, "Debian's postgresql package is not installed"
    root = Path(tempfile.mkdtemp(prefix="np-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    try:
        subprocess.run(_as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                        "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
        opts = f"-c listen_addresses='' -k {sock} -c fsync=off"
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-w", "-l",
                                        str(root / "log"), "start"]), check=True, capture_output=True)
        try:
            yield f"host={sock} user=postgres dbname=postgres"
        finally:
            subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                           capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def migrations() -> list[Path]:
    """Neuronpedia's migrations in Prisma's order (the directory names sort by timestamp)."""
    return sorted((NP_DIR / "migrations").glob("*/migration.sql"), key=lambda p: p.parent.name)


def without_pgvector(sql: str) -> str:
    """pgvector is not in Debian's postgresql package: its `vector(256)` columns become real[] (the btree
    indexes on them work on arrays too); nothing our import writes goes into them."""
    sql = re.sub(r'CREATE EXTENSION IF NOT EXISTS "vector";', "", sql)
    return re.sub(r"\bvector\(\d+\)", "real[]", sql)


def create_schema(con: Any) -> int:
    """Apply every migration; returns how many. Also the seed's bot user, the author of every import."""
    files = migrations()
    has_vector = con.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    for f in files:
        sql = f.read_text()
        con.execute(sql if has_vector else without_pgvector(sql))
    con.execute('INSERT INTO "User" (id, name, bot, admin, "emailUnsubscribeCode") VALUES (%s, %s, true, true, %s)',
                (BOT_USER_ID, "bot", "seed-bot"))
    return len(files)


# ---------------------------------------------------------------- the importer, replayed


def prisma_create(con: Any, table: str, row: dict[str, Any]) -> None:
    """`prisma.<table>.create({data: row})` for the scalar rows the route reads from model/sourceset/source.jsonl:
    one INSERT of exactly the given keys (an unknown key fails, as Prisma refuses it); Prisma-side defaults of
    these tables (@default(now()), @updatedAt) are database defaults in the migrations, so leaving them out
    matches Prisma. Json columns are sent as JSON, arrays as arrays."""
    from psycopg.types.json import Jsonb

    cols = list(row)
    values = [Jsonb(v) if isinstance(v, dict) else v for v in row.values()]
    con.execute(f'INSERT INTO "{table}" ({", ".join(f"{chr(34)}{c}{chr(34)}" for c in cols)}) '
                f'VALUES ({", ".join(["%s"] * len(cols))})', values)


# lib/db/import.ts, importJsonlString: the column types of the columns the first line names ...
COLUMN_QUERY = """
      SELECT
        column_name,
        CASE
          WHEN data_type = 'ARRAY' THEN
            udt_name::regtype::text || '[]'
          WHEN data_type = 'USER-DEFINED' THEN (
            SELECT t.typname::text
            FROM pg_type t
            WHERE t.typname = c.udt_name
          )
          ELSE
            data_type
        END as data_type
      FROM information_schema.columns c
      WHERE table_name = %s
        AND column_name = ANY(%s)
      ORDER BY ordinal_position;
"""
# ... then one INSERT of the whole batch.
INSERT_QUERY = """
      INSERT INTO "{table}" ({columns})
      SELECT {columns} FROM jsonb_to_recordset(%s::jsonb) as t({defs})
      ON CONFLICT DO NOTHING
"""


def import_jsonl_string(con: Any, table: str, jsonl: str) -> int:
    """importJsonlString(tableName, jsonlData) of lib/db/import.ts; returns the rows inserted."""
    jsonl = jsonl.replace("\\u0000", " ")
    lines = jsonl.strip().split("\n")
    available = list(json.loads(lines[0]))
    cols = con.execute(COLUMN_QUERY, (table, available)).fetchall()
    column_list = ", ".join(f'"{name}"' for name, _ in cols)
    defs = ", ".join(f'"{name}" {typ}' for name, typ in cols)
    query = INSERT_QUERY.format(table=table, columns=column_list, defs=defs)
    inserted = 0
    for i in range(0, len(lines), 65000):
        cur = con.execute(query, ("[" + ",".join(lines[i:i + 65000]) + "]",))
        inserted += cur.rowcount
    return inserted


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _batches(folder: Path) -> list[Path]:
    # getFilesInPath lists S3 keys, which come back in lexicographic order
    return sorted(folder.glob("*.jsonl.gz"), key=lambda p: p.name) if folder.is_dir() else []


def import_config(con: Any, config_dir: Path) -> None:
    """importConfigFromS3: upsert each ExplanationModelType, then each ExplanationType row."""
    for table, name in (("ExplanationModelType", "explanation_model_type"), ("ExplanationType", "explanation_type")):
        path = config_dir / f"{name}.jsonl"
        for row in _jsonl(path) if path.exists() else []:
            if con.execute(f'SELECT 1 FROM "{table}" WHERE name = %s', (row["name"],)).fetchone() is None:
                prisma_create(con, table, row)


def import_dataset(con: Any, root: Path, model_id: str, source_id: str) -> dict[str, int]:
    """The admin import route (route.ts, GET with explanations=true) over a dataset directory `root` laid out as
    the bucket's v1/ prefix: config, then model, source set, source (each skipped when it exists), features,
    activations, explanations. Returns the rows each step inserted."""
    import_config(con, root / "config")
    path = root / model_id / source_id
    for row in _jsonl(path / "model.jsonl"):
        if con.execute('SELECT 1 FROM "Model" WHERE id = %s', (row["id"],)).fetchone() is None:
            prisma_create(con, "Model", row)
    for row in _jsonl(path / "sourceset.jsonl"):
        if con.execute('SELECT 1 FROM "SourceSet" WHERE "modelId" = %s AND name = %s',
                       (model_id, row["name"])).fetchone() is None:
            prisma_create(con, "SourceSet", {**row, "urls": row.get("urls") or []})
    for row in _jsonl(path / "source.jsonl"):
        if con.execute('SELECT 1 FROM "Source" WHERE "modelId" = %s AND id = %s',
                       (model_id, row["id"])).fetchone() is None:
            prisma_create(con, "Source", row)
    inserted = {"Neuron": 0, "Activation": 0, "Explanation": 0}
    for table, folder in (("Neuron", "features"), ("Activation", "activations")):
        for f in _batches(path / folder):
            inserted[table] += import_jsonl_string(con, table, gzip.decompress(f.read_bytes()).decode())
    # explanations: lines of all files gathered, inserted 10,000 at a time
    lines: list[str] = []
    for f in _batches(path / "explanations"):
        for line in gzip.decompress(f.read_bytes()).decode().strip().split("\n"):
            if line.strip():
                lines.append(line)
            if len(lines) >= 10000:
                inserted["Explanation"] += import_jsonl_string(con, "Explanation", "\n".join(lines))
                lines = []
    if lines:
        inserted["Explanation"] += import_jsonl_string(con, "Explanation", "\n".join(lines))
    return inserted
