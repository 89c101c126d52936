"""Dictionaries, features and their contexts: what the collect stage writes and later stages read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from autointerp import __version__
from autointerp.errors import BadInput
from autointerp.records import Context, FeatureContexts
from autointerp.store.db import Connection, insert_rows, register, transaction

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


def get_dictionary(con: Connection, dictionary_id: int) -> DictionaryRow:
    row = con.execute(f"SELECT {_DICT_COLS} FROM dictionaries WHERE dictionary_id = ?", [dictionary_id]).fetchone()
    if row is None:
        raise BadInput(f"no dictionary {dictionary_id}; `autointerp status` lists them")
    return _dictionary(row)


def list_dictionaries(con: Connection) -> list[DictionaryRow]:
    rows = con.execute(f"SELECT {_DICT_COLS} FROM dictionaries ORDER BY dictionary_id").fetchall()
    return [_dictionary(r) for r in rows]


def find_dictionary(con: Connection, config_hash: str) -> DictionaryRow | None:
    row = con.execute(
        f"SELECT {_DICT_COLS} FROM dictionaries WHERE config_hash = ? ORDER BY dictionary_id DESC LIMIT 1",
        [config_hash],
    ).fetchone()
    return None if row is None else _dictionary(row)


def begin_dictionary(
    con: Connection,
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


def _delete_rows(con: Connection, dictionary_id: int) -> None:
    for table in ("examples", "features", "sequences"):
        con.execute(f"DELETE FROM {table} WHERE dictionary_id = ?", [dictionary_id])


def delete_dictionary(con: Connection, dictionary_id: int) -> None:
    """Remove a dictionary and everything collected for it (used to undo a run that failed on bad input)."""
    with transaction(con):
        _delete_rows(con, dictionary_id)
        con.execute("DELETE FROM dictionaries WHERE dictionary_id = ?", [dictionary_id])


def complete_dictionary(
    con: Connection,
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


def feature_contexts(
    con: Connection, dictionary_id: int, feature: int
) -> list[Context]:
    rows = con.execute(
        "SELECT seq, split, kind, rank, tokens, acts, quantile FROM contexts "
        "WHERE dictionary_id = ? AND feature = ? "
        "ORDER BY split, CASE kind WHEN 'top' THEN 0 WHEN 'quantile' THEN 1 ELSE 2 END, quantile DESC, rank",
        [dictionary_id, feature],
    ).fetchall()
    return [Context(seq=r[0], split=r[1], kind=r[2], rank=r[3], tokens=r[4], acts=r[5], quantile=r[6])
            for r in rows]


def feature_stats(con: Connection, dictionary_id: int, feature: int) -> dict[str, Any] | None:
    cur = con.execute(
        "SELECT max_act, mean_act, frac_active, n_active, hist_bin_width, hist_counts FROM features "
        "WHERE dictionary_id = ? AND feature = ?",
        [dictionary_id, feature],
    )
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cur.description], row, strict=True))


# ---------------------------------------------------------------- explain and score


def read_feature_contexts(
    con: Connection, dictionary_id: int, features: list[int]
) -> dict[int, FeatureContexts]:
    """FeatureContexts records for the given features of a dictionary."""
    if not features:
        return {}
    register(con, "_wanted", pa.table({"feature": pa.array(features, pa.int32())}))
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




def feature_summaries(con: Connection, dictionary_id: int) -> dict[int, tuple[float, float]]:
    """feature -> (max_act, frac_active) for every stored feature of a dictionary."""
    rows = con.execute("SELECT feature, max_act, frac_active FROM features WHERE dictionary_id = ? ORDER BY feature",
                       [dictionary_id]).fetchall()
    return {int(f): (float(m), float(a)) for f, m, a in rows}
