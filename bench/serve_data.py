"""A synthetic labelled dictionary for the browser bench: N features with statistics, histograms and contexts,
an LLM label and a baseline label per feature scored by a simulation run (and a behaviour run for the LLM
labels), and shuffled and constant null labels. Written through the store's own functions, in the order
the collect and label stages write (examples grouped by split and kind, each sorted by feature)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from autointerp import store

WORDS = ("dates", "numbers", "code", "rivers", "names", "quotes", "plural nouns", "verbs", "punctuation", "cities",
         "years", "colours", "animals", "the word 'the'", "closing brackets", "emotions", "legal text", "French")
SIM_METHODS = ("correlation_top_random", "correlation_gain", "correlation_random", "explained_variance", "detection",
               "fuzzing")
BEH_METHODS = ("behaviour", "behaviour_kl", "ablation_effect")
CTX_LEN = 32
N_SEQ = 4096
KINDS = (("explain", "top", 4), ("holdout", "top", 2), ("explain", "quantile", 2), ("explain", "random", 2))


def _collection(n: int, rng: np.random.Generator) -> tuple[pa.Table, pa.Table, pa.Table]:
    vocab = np.array([f" {w}" for w in ["the", "a", "cat", "sat", "on", "mat", "in", "1999", "12", "river", "sea", "code", "def", "return", "and", "of"]])
    tokens = vocab[rng.integers(0, len(vocab), (N_SEQ, CTX_LEN))]
    sequences = pa.table({"seq": pa.array(np.arange(N_SEQ), pa.int64()),
                          "split": ["holdout" if i % 5 == 0 else "explain" for i in range(N_SEQ)],
                          "token_ids": pa.array([list(range(CTX_LEN))] * N_SEQ, pa.list_(pa.int32())),
                          "tokens": pa.array(tokens.tolist(), pa.list_(pa.string()))})
    max_act = rng.gamma(2.0, 2.0, n).astype(np.float32)
    hist = rng.integers(0, 1000, (n, 20))
    features = pa.table({"feature": pa.array(np.arange(n, dtype=np.int32)), "max_act": max_act,
                         "mean_act": (max_act / 20).astype(np.float32),
                         "frac_active": rng.uniform(0, 0.05, n).astype(np.float32),
                         "n_active": hist.sum(1), "hist_bin_width": (max_act / 20).astype(np.float64),
                         "hist_counts": pa.array(list(hist), pa.list_(pa.int64()))})
    parts = []
    for split, kind, k in KINDS:
        m = n * k
        acts = np.where(rng.random((m, CTX_LEN)) < 0.15, rng.random((m, CTX_LEN)), 0.0).astype(np.float32)
        acts *= np.repeat(max_act, k)[:, None]
        parts.append(pa.table({
            "feature": pa.array(np.repeat(np.arange(n, dtype=np.int32), k)), "split": [split] * m, "kind": [kind] * m,
            "rank": pa.array(np.tile(np.arange(k, dtype=np.int32), n)),
            "seq": pa.array(rng.integers(0, N_SEQ, m), pa.int64()), "max_act": acts.max(1),
            "acts": pa.FixedSizeListArray.from_arrays(acts.reshape(-1), CTX_LEN).cast(pa.list_(pa.float32())),
            "quantile": pa.array(np.tile(np.arange(k, dtype=np.int32), n) if kind == "quantile" else [None] * m,
                                 pa.int32()),
            "bin_low": pa.array([None] * m, pa.float32()), "bin_high": pa.array([None] * m, pa.float32())}))
    return sequences, features, pa.concat_tables(parts)


def _labels(n: int, n_null: int, rng: np.random.Generator) -> pa.Table:
    words = np.array(WORDS)
    llm = [f"{a} and {b}" for a, b in zip(words[rng.integers(0, len(words), n)], words[rng.integers(0, len(words), n)],
                                          strict=True)]
    nulls = rng.choice(n, n_null, replace=False)
    rows = ([(f, "m-explain", llm[f], None, None) for f in range(n)]
            + [(f, "baseline:token-lookup", f"the token '{WORDS[f % len(WORDS)]}'", None, None) for f in range(n)]
            + [(int(f), "null:shuffled:m-explain", llm[int(f) - 1], "shuffled", "m-explain") for f in nulls]
            + [(int(f), "null:constant", "nothing in particular", "constant", None) for f in nulls])
    return pa.table({"explanation_id": [f"e{i}" for i in range(len(rows))], "dictionary_id": [1] * len(rows),
                     "feature": pa.array([r[0] for r in rows], pa.int32()), "label": [r[2] for r in rows],
                     "explainer": [r[1] for r in rows], "prompt_hash": ["p0"] * len(rows), "status": ["ok"] * len(rows),
                     "config": [json.dumps({"n_sim_top": 6})] * len(rows), "autointerp_version": ["bench"] * len(rows),
                     "null_kind": [r[3] for r in rows], "null_of": [r[4] for r in rows]})


def _runs_and_scores(expl: pa.Table, rng: np.random.Generator) -> tuple[pa.Table, pa.Table]:
    ids, feats = expl["explanation_id"].to_pylist(), expl["feature"].to_numpy()
    llm = np.array([e == "m-explain" for e in expl["explainer"].to_pylist()])
    n = len(ids)
    runs = {"run_id": [f"s{i}" for i in range(n)] + [f"b{i}" for i in np.flatnonzero(llm)],
            "explanation_id": ids + [ids[i] for i in np.flatnonzero(llm)],
            "feature": np.concatenate([feats, feats[llm]]).astype(np.int32),
            "stage": ["simulation"] * n + ["behaviour"] * int(llm.sum()),
            "source_run_id": [None] * n + [f"s{i}" for i in np.flatnonzero(llm)]}
    m = len(runs["run_id"])
    runs.update(dictionary_id=[1] * m, simulator=["m-sim"] * m, prompt_hash=["p0"] * m,
                settings_hash=["h0"] * m, config=[json.dumps({"n_sim_top": 6, "n_boot": 200})] * m, status=["ok"] * m)
    cols: dict[str, list] = {k: [] for k in ("run_id", "explanation_id", "feature", "method")}
    for methods, sel, prefix in ((SIM_METHODS, np.arange(n), "s"), (BEH_METHODS, np.flatnonzero(llm), "b")):
        for method in methods:
            cols["run_id"] += [f"{prefix}{i}" for i in sel]
            cols["explanation_id"] += [ids[i] for i in sel]
            cols["feature"] += feats[sel].tolist()
            cols["method"] += [method] * len(sel)
    k = len(cols["run_id"])
    value = rng.uniform(-0.2, 0.9, k)
    scores = pa.table({**cols, "dictionary_id": [1] * k, "simulator": ["m-sim"] * k, "value": value,
                       "n_examples": [12] * k, "ci_low": value - 0.1, "ci_high": value + 0.1})
    return pa.table(runs), scores


def build(path: Path, n: int, n_null: int = 200, seed: int = 0) -> None:
    """Write the synthetic dictionary (id 1) with `n` features and `n_null` features given null labels."""
    rng = np.random.default_rng(seed)
    sequences, features, examples = _collection(n, rng)
    expl = _labels(n, n_null, rng)
    runs, scores = _runs_and_scores(expl, rng)
    with store.open_store(path) as con:
        did = store.begin_dictionary(con, model="synthetic", hook="blocks.0.hook_resid_post", kind="sae", sae="synthetic",
                                     random_init=False, seed=seed, dataset="synthetic", ctx_len=CTX_LEN, n_features=n,
                                     config_hash="bench-serve", config={"threshold": 0.0})
        tables = [t.append_column("dictionary_id", pa.array([did] * t.num_rows, pa.int32()))
                  for t in (sequences, features, examples)]
        store.complete_dictionary(con, did, n_tokens=N_SEQ * CTX_LEN, n_contexts=N_SEQ, sequences=tables[0],
                                  features=tables[1], examples=tables[2])
        with store.transaction(con):
            for name, table in (("explanations", expl), ("score_runs", runs), ("scores", scores)):
                store.insert_rows(con, name, table)
