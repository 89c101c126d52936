"""Hard negatives: contexts where a feature's nearest neighbours fire and it does not, shown to the best-of-k
and agent explainers. Neighbours are the dictionary's other features nearest by decoder cosine (SAE latents)
or by activation correlation over every explain-split token (neurons and planted features: one measure for
anything read at a hook or by a rule). Both are computed once per dictionary from the stored explain-split
sequences, which are read again through the subject (the model and SAE at the hook, or the rules); holdout
sequences are never read, so no holdout text can become a hard negative."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from autointerp import store
from autointerp.label.explain import WINDOW_AFTER, WINDOW_BEFORE, scale
from autointerp.llm import prompts

N_NEIGHBOURS = 3  # neighbours per feature
N_NEGATIVES = 4  # hard negatives per feature, taken from the neighbours in turn, nearest first
NEIGHBOUR_FIRES = 1 / 3  # a neighbour fires in a sequence where its max reaches this share of its own max
SETTINGS = {"neighbours": N_NEIGHBOURS, "negatives": N_NEGATIVES, "neighbour_fires": round(NEIGHBOUR_FIRES, 4),
            "feature_quiet": "level 0 on its 0-9 scale", "window": [WINDOW_BEFORE, WINDOW_AFTER]}
VERSION = "negatives-v1"  # in the strategy's prompt hash: another rule here is another prompt


def _feature_fn(loaded: Any, start: int, stop: int) -> tuple[Any, int | None]:
    """The function reading every feature of the dictionary from token ids, and the BOS put in front."""
    d = loaded.dictionary
    if d.kind == "planted":
        from autointerp.collect.planted import PlantedFeatures

        return PlantedFeatures(loaded.rules, loaded.strings), None
    from autointerp import models

    return models.FeatureReader(loaded.model, d.hook, sae=loaded.sae, start=start, stop=stop), loaded.bos


def compute(db: str | Path, loaded: Any) -> None:
    """Find and store the dictionary's neighbours and hard negatives (nothing when another process did)."""
    from autointerp.models.neighbours import decoder_neighbours, nearest, read_sequences

    d = loaded.dictionary
    with store.open_store(db, wait_s=600) as con:
        seqs = store.explain_sequences(con, d.dictionary_id)
        max_acts = store.feature_max_acts(con, d.dictionary_id)
    start = int(d.config.get("feature_offset", 0))
    stop = start + d.n_features
    with loaded.lock:  # the model is shared with the probes
        fn, bos = _feature_fn(loaded, start, stop)
        reads = read_sequences(fn, [ids for _, ids in seqs], bos, correlation=loaded.sae is None)
        if loaded.sae is not None:
            measure, (idx, sim) = "decoder_cosine", decoder_neighbours(loaded.sae, start, stop, N_NEIGHBOURS)
        elif reads.correlation is not None:
            measure, (idx, sim) = "activation_correlation", nearest(reads.correlation, N_NEIGHBOURS)
        else:
            measure, idx, sim = "activation_correlation", np.zeros((0, 0), int), np.zeros((0, 0))
    maxes = np.asarray([max_acts.get(start + j, 0.0) for j in range(d.n_features)])
    neighbours, negatives = [], []
    for j in range(idx.shape[0]):
        near = [(int(n), float(v)) for n, v in zip(idx[j], sim[j], strict=True) if math.isfinite(v) and v > 0]
        neighbours += [{"feature": start + j, "rank": r, "neighbour": start + n, "similarity": v}
                       for r, (n, v) in enumerate(near)]
        negatives += _negatives(j, [n for n, _ in near], reads, maxes, [s for s, _ in seqs],
                                float(d.config.get("threshold", 0.0)), start)
    with store.open_store(db, wait_s=600) as con:
        store.add_neighbours(con, d.dictionary_id, measure, len(seqs), SETTINGS, neighbours, negatives)


def _negatives(j: int, near: list[int], reads: Any, maxes: np.ndarray, seq_ids: list[int], threshold: float,
               start: int) -> list[dict[str, Any]]:
    """Feature j's hard negatives: sequences where it stays at level 0 and a neighbour fires, the neighbours
    taken in turn (nearest first), each one's sequences by its activation there (then by seq)."""
    quiet = np.asarray([scale([float(m)], float(maxes[j]))[0] == 0 for m in reads.seq_max[:, j]], bool)
    queues: list[tuple[int, list[int]]] = []
    for n in near:
        acts = reads.seq_max[:, n]
        fires = quiet & (acts > threshold) & (acts >= NEIGHBOUR_FIRES * maxes[n]) & (acts > 0)
        found = sorted((-float(acts[s]), seq_ids[s], int(s)) for s in np.flatnonzero(fires))
        queues.append((n, [s for _, _, s in found]))
    rows: list[dict[str, Any]] = []
    taken: set[int] = set()
    while len(rows) < N_NEGATIVES and any(q for _, q in queues):
        for n, q in queues:
            while q and q[0] in taken:
                q.pop(0)
            if q and len(rows) < N_NEGATIVES:
                s = q.pop(0)
                taken.add(s)
                rows.append({"feature": start + j, "rank": len(rows), "seq": seq_ids[s], "neighbour": start + n,
                             "neighbour_act": float(reads.seq_max[s, n]), "peak": int(reads.seq_peak[s, n]),
                             "feature_act": float(reads.seq_max[s, j])})
    return rows


def negatives_block(negatives: list[store.HardNegative]) -> str:
    """The hard negatives as the explainer sees them ('' when the feature has none): a window around each
    neighbour's peak, unmarked (the feature is quiet there), and the token the neighbour fires on most."""
    if not negatives:
        return ""
    blocks = []
    for i, h in enumerate(negatives, 1):
        shown = range(max(0, h.peak - WINDOW_BEFORE), min(len(h.tokens), h.peak + WINDOW_AFTER + 1))
        text = ("…" if shown.start > 0 else "") + "".join(prompts.escape_data(h.tokens[k]) for k in shown) + \
            ("…" if shown.stop < len(h.tokens) else "")
        peak = prompts.escape_data(h.tokens[h.peak]).strip() if h.peak < len(h.tokens) else ""
        blocks.append(f"<negative {i}>{text}</negative>\nA similar feature fires on: \"{peak}\"")
    return prompts.render("agent.negatives", negatives="\n".join(blocks))
