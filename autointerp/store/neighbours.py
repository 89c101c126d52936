"""Hard negatives (migration 011): each feature's nearest neighbours and the explain-split contexts where a
neighbour fires and the feature does not, written once per dictionary and read back for the explainer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from autointerp.store.db import Connection, insert_rows, transaction


@dataclass(frozen=True)
class HardNegative:
    """One hard negative as the explainer is shown it: the sequence's tokens and where the neighbour peaks."""

    seq: int
    neighbour: int
    neighbour_act: float
    peak: int
    feature_act: float
    tokens: list[str]


def explain_sequences(con: Connection, dictionary_id: int) -> list[tuple[int, list[int]]]:
    """Every stored explain-split sequence (seq, token ids), in seq order; holdout sequences are not read."""
    rows = con.execute("SELECT seq, token_ids FROM sequences WHERE dictionary_id = ? AND split = 'explain' "
                       "ORDER BY seq", [dictionary_id]).fetchall()
    return [(int(s), list(ids)) for s, ids in rows]


def feature_max_acts(con: Connection, dictionary_id: int) -> dict[int, float]:
    return {int(f): float(m) for f, m in con.execute(
        "SELECT feature, max_act FROM features WHERE dictionary_id = ?", [dictionary_id]).fetchall()}


def has_neighbours(con: Connection, dictionary_id: int) -> bool:
    return con.execute("SELECT 1 FROM neighbour_runs WHERE dictionary_id = ?", [dictionary_id]).fetchone() is not None


def add_neighbours(con: Connection, dictionary_id: int, measure: str, n_sequences: int, settings: dict[str, Any],
                   neighbours: list[dict[str, Any]], negatives: list[dict[str, Any]]) -> None:
    """Store a dictionary's neighbours and hard negatives in one transaction, unless another process did."""
    with transaction(con):
        if has_neighbours(con, dictionary_id):
            return
        insert_rows(con, "neighbour_runs", [{"dictionary_id": dictionary_id, "measure": measure,
                                             "n_sequences": n_sequences, "settings": json.dumps(settings)}])
        insert_rows(con, "feature_neighbours", [{"dictionary_id": dictionary_id, **r} for r in neighbours])
        insert_rows(con, "hard_negatives", [{"dictionary_id": dictionary_id, **r} for r in negatives])


def hard_negatives(con: Connection, dictionary_id: int, feature: int) -> list[HardNegative]:
    """A feature's hard negatives in the order they are shown, each with its sequence's tokens."""
    rows = con.execute(
        "SELECT h.seq, h.neighbour, h.neighbour_act, h.peak, h.feature_act, s.tokens FROM hard_negatives h "
        "JOIN sequences s USING (dictionary_id, seq) WHERE h.dictionary_id = ? AND h.feature = ? ORDER BY h.rank",
        [dictionary_id, feature]).fetchall()
    return [HardNegative(int(s), int(n), float(na), int(p), float(fa), list(t)) for s, n, na, p, fa, t in rows]
