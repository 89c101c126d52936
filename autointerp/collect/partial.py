"""A collection's partial state as files, and the exact merge of partial states.

A shard of a collection (the contexts with index in [start, stop)) ends with the state of its collector
(`collect.Collector.state`): per feature and split the top-k and reservoir entries in sorted order, the
shared random contexts, the statistics as exact integer sums, and the tokens of the contexts they refer
to. `write` stores it as Arrow IPC files (Feather v2) plus a JSON description, never a pickle; `read`
loads it back; `merge` combines two states into the state one process would have reached over both
sets of contexts, bit for bit (`concat_features` joins states of the same contexts over consecutive feature
ranges the same way):

- top-k and reservoir: the best k under the collector's own total order, (key, then context index);
- random contexts: the r smallest (hash key, index), shared by all features;
- sums: integer limbs add; counts add; maxima take the maximum;
- histograms: the bin width is a function of the maximum, so each side is re-binned to the larger width
  (bins nest: powers of two) and added.

No torch here: numpy and pyarrow only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather

from autointerp.collect.buffers import SPLITS
from autointerp.collect.stats import HIST_BINS

State = tuple[dict[str, np.ndarray], dict[str, Any]]
FORMAT_VERSION = 1
INFO_FILE = "shard.json"
_BUFFERS = {"top": True, "res": False}  # name -> largest first


# ---------------------------------------------------------------- merge


def _select(a: dict[str, np.ndarray], b: dict[str, np.ndarray], prefix: str, largest: bool) -> None:
    """Best-K of a's and b's entries under prefix, written into a."""
    key = np.concatenate([a[f"{prefix}.key"], b[f"{prefix}.key"]], axis=1)
    seq = np.concatenate([a[f"{prefix}.seq"], b[f"{prefix}.seq"]], axis=1)
    size = a[f"{prefix}.key"].shape[1]
    # Empty entries hold the worst key (-inf for top, +inf for the reservoir), so they sort last.
    order = np.lexsort((seq, -key if largest else key), axis=1)[:, :size]
    for part in ("key", "seq", "max", "acts"):
        both = np.concatenate([a[f"{prefix}.{part}"], b[f"{prefix}.{part}"]], axis=1)
        idx = order if both.ndim == 2 else order[..., None]
        a[f"{prefix}.{part}"] = np.take_along_axis(both, idx, axis=1)


def _rebin(hist: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """[F, B] counts at width w -> counts at width w * factor (factor: powers of two, one per feature)."""
    out = np.zeros_like(hist)
    j = np.arange(hist.shape[1])
    for m in np.unique(factor):
        rows = np.flatnonzero(factor == m)
        target = np.minimum(j // int(m), hist.shape[1] - 1)
        for src in range(hist.shape[1]):
            out[rows, target[src]] += hist[rows, src]
    return out


def merge(a: State, b: State) -> State:
    """The state of one collector fed a's and b's contexts (disjoint sets of the same run), exactly."""
    arrays_a, meta_a = a
    arrays_b, meta_b = b
    if meta_a["n_features"] != meta_b["n_features"] or \
            not np.array_equal(arrays_a["feature_ids"], arrays_b["feature_ids"]):
        raise ValueError("the two states are of different features")
    out = dict(arrays_a)
    for split in SPLITS:
        for name, largest in _BUFFERS.items():
            _select(out, arrays_b, f"{split}.{name}", largest)
        key = np.concatenate([out[f"{split}.rnd_key"], arrays_b[f"{split}.rnd_key"]])
        seq = np.concatenate([out[f"{split}.rnd_seq"], arrays_b[f"{split}.rnd_seq"]])
        order = np.lexsort((seq, key))[: len(out[f"{split}.rnd_key"])]
        out[f"{split}.rnd_key"], out[f"{split}.rnd_seq"] = key[order], seq[order]
        acts = np.concatenate([out[f"{split}.rnd_acts"], arrays_b[f"{split}.rnd_acts"]], axis=1)
        out[f"{split}.rnd_acts"] = acts[:, order]
    out["stats.limbs"] = arrays_a["stats.limbs"] + arrays_b["stats.limbs"]
    out["stats.n_active"] = arrays_a["stats.n_active"] + arrays_b["stats.n_active"]
    out["stats.max_act"] = np.maximum(arrays_a["stats.max_act"], arrays_b["stats.max_act"])
    width = np.maximum(arrays_a["stats.bin_width"], arrays_b["stats.bin_width"])
    hist = np.zeros_like(arrays_a["stats.hist"])
    for side in (arrays_a, arrays_b):
        w = side["stats.bin_width"]
        factor = np.where(w > 0, width / np.where(w > 0, w, 1.0), 1.0).round().astype(np.int64)
        hist += _rebin(side["stats.hist"], factor)
    out["stats.hist"], out["stats.bin_width"] = hist, width
    tokens = dict(zip(arrays_a["tokens_of.seq"].tolist(), arrays_a["tokens_of.ids"], strict=True))
    tokens.update(zip(arrays_b["tokens_of.seq"].tolist(), arrays_b["tokens_of.ids"], strict=True))
    seqs = sorted(tokens)
    out["tokens_of.seq"] = np.asarray(seqs, dtype=np.int64)
    out["tokens_of.ids"] = np.stack([tokens[s] for s in seqs]) if seqs else arrays_a["tokens_of.ids"]
    meta = {"n_features": meta_a["n_features"],
            **{k: int(meta_a[k]) + int(meta_b[k]) for k in ("n_tokens", "n_contexts", "batches")}}
    return out, meta


def concat_features(states: list[State]) -> State:
    """The state of one collector over all the features of `states`: collections of the same contexts (same
    config and seed) over consecutive feature ranges (`--features START:STOP`), in any order. Per-feature
    arrays are stacked, the shared random contexts must agree, token ids are united. ValueError when the
    ranges overlap or leave a gap, or the states are not of the same contexts."""
    if not states:
        raise ValueError("no states to join")
    ordered = sorted(states, key=lambda st: int(st[0]["feature_ids"][0]) if len(st[0]["feature_ids"]) else 0)
    ids = np.concatenate([st[0]["feature_ids"] for st in ordered])
    if len(ids) and not np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
        raise ValueError("the feature ranges overlap or leave a gap")
    first_arrays, first_meta = ordered[0]
    shared = [f"{split}.{part}" for split in SPLITS for part in ("rnd_key", "rnd_seq")]
    for arrays, meta in ordered[1:]:
        if any(int(meta[k]) != int(first_meta[k]) for k in ("n_tokens", "n_contexts")) or \
                any(not np.array_equal(arrays[k], first_arrays[k]) for k in shared):
            raise ValueError("the feature ranges were not collected over the same contexts")
    out: dict[str, np.ndarray] = {k: first_arrays[k] for k in shared}
    for key in first_arrays:
        if key not in shared and not key.startswith("tokens_of."):
            out[key] = np.concatenate([arrays[key] for arrays, _ in ordered])
    tokens: dict[int, np.ndarray] = {}
    for arrays, _ in ordered:
        tokens.update(zip(arrays["tokens_of.seq"].tolist(), arrays["tokens_of.ids"], strict=True))
    seqs = sorted(tokens)
    out["tokens_of.seq"] = np.asarray(seqs, dtype=np.int64)
    out["tokens_of.ids"] = np.stack([tokens[q] for q in seqs]) if seqs else first_arrays["tokens_of.ids"]
    meta = {**first_meta, "n_features": int(len(ids))}
    return out, meta


# ---------------------------------------------------------------- files


def _fixed(values: np.ndarray, width: int, typ: pa.DataType) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), typ)
    return pa.FixedSizeListArray.from_arrays(flat, width)


def _tables(arrays: dict[str, np.ndarray], strings: dict[int, str]) -> dict[str, pa.Table]:
    ctx_len = arrays["tokens_of.ids"].shape[1]
    cols: dict[str, list[Any]] = {k: [] for k in ("split", "buffer", "feature", "position", "key", "seq", "max", "acts")}
    for split in SPLITS:
        for name in _BUFFERS:
            p = f"{split}.{name}"
            f, pos = np.nonzero(arrays[f"{p}.seq"] >= 0)
            cols["split"].append(np.full(len(f), split))
            cols["buffer"].append(np.full(len(f), name))
            cols["feature"].append(f)
            cols["position"].append(pos)
            for part in ("key", "seq", "max", "acts"):
                cols[part].append(arrays[f"{p}.{part}"][f, pos])
    c = {k: np.concatenate(v) for k, v in cols.items()}
    entries = pa.table({
        "split": pa.array(c["split"].astype(str)), "buffer": pa.array(c["buffer"].astype(str)),
        "feature": pa.array(c["feature"].astype(np.int32)), "position": pa.array(c["position"].astype(np.int32)),
        "key": pa.array(c["key"].astype(np.float64)), "seq": pa.array(c["seq"].astype(np.int64)),
        "max": pa.array(c["max"].astype(np.float32)),
        "acts": _fixed(c["acts"].astype(np.float32), ctx_len, pa.float32()),
    })
    rnd: dict[str, list[Any]] = {k: [] for k in ("split", "position", "key", "seq", "feature", "acts")}
    for split in SPLITS:
        valid = np.flatnonzero(arrays[f"{split}.rnd_seq"] >= 0)
        n_feat = arrays[f"{split}.rnd_acts"].shape[0]
        rnd["split"].append(np.full(len(valid) * n_feat, split))
        rnd["position"].append(np.tile(valid, n_feat))
        rnd["key"].append(np.tile(arrays[f"{split}.rnd_key"][valid], n_feat))
        rnd["seq"].append(np.tile(arrays[f"{split}.rnd_seq"][valid], n_feat))
        rnd["feature"].append(np.repeat(np.arange(n_feat), len(valid)))
        rnd["acts"].append(arrays[f"{split}.rnd_acts"][:, valid].reshape(-1, ctx_len))
    r = {k: np.concatenate(v) for k, v in rnd.items()}
    random = pa.table({
        "split": pa.array(r["split"].astype(str)), "position": pa.array(r["position"].astype(np.int32)),
        "key": pa.array(r["key"].astype(np.float64)), "seq": pa.array(r["seq"].astype(np.int64)),
        "feature": pa.array(r["feature"].astype(np.int32)),
        "acts": _fixed(r["acts"].astype(np.float32), ctx_len, pa.float32()),
    })
    limbs = arrays["stats.limbs"]
    stats = pa.table({
        "feature": pa.array(arrays["feature_ids"].astype(np.int64)),
        "limbs": _fixed(limbs, limbs.shape[1], pa.int64()),
        "n_active": pa.array(arrays["stats.n_active"]), "max_act": pa.array(arrays["stats.max_act"]),
        "hist": _fixed(arrays["stats.hist"], HIST_BINS, pa.int64()),
        "bin_width": pa.array(arrays["stats.bin_width"]),
    })
    ids = arrays["tokens_of.ids"]
    tokens = pa.table({
        "seq": pa.array(arrays["tokens_of.seq"]), "token_ids": _fixed(ids.astype(np.int64), ctx_len, pa.int64()),
        "tokens": pa.array([[strings[int(i)] for i in row] for row in ids], pa.list_(pa.string())),
    })
    return {"entries": entries, "random": random, "stats": stats, "tokens": tokens}


def write(path: Path, state: State, info: dict[str, Any], strings: Any) -> None:
    """Write a shard's state into directory `path` atomically: the files go to a temporary directory that is
    renamed into place once complete, so a shard directory that exists is a whole one."""
    arrays, meta = state
    used = {int(i) for i in np.unique(arrays["tokens_of.ids"])}
    tables = _tables(arrays, {i: strings[i] for i in used})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, table in tables.items():
        feather.write_feather(table, tmp / f"{name}.arrow")
    shape = {"ctx_len": int(arrays["tokens_of.ids"].shape[1]), "n_random": int(arrays["explain.rnd_key"].shape[0]),
             "top_k": int(arrays["explain.top.key"].shape[1]), "reservoir": int(arrays["explain.res.key"].shape[1])}
    (tmp / INFO_FILE).write_text(json.dumps({"format": FORMAT_VERSION, **info, "meta": meta, "shape": shape},
                                            indent=1, sort_keys=True))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def read_info(path: Path) -> dict[str, Any] | None:
    """The JSON description of the shard in `path`, None when there is no complete one."""
    try:
        info = json.loads((path / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == FORMAT_VERSION else None


def read(path: Path) -> tuple[State, dict[int, str]]:
    """A shard's state (as `Collector.state` gives it) and the strings of the token ids it holds."""
    info = read_info(path)
    if info is None:
        raise ValueError(f"{path}: not a complete shard")
    shape, meta = info["shape"], info["meta"]
    n_feat, length = int(meta["n_features"]), int(shape["ctx_len"])
    t = {n: feather.read_table(path / f"{n}.arrow") for n in ("entries", "random", "stats", "tokens")}
    arrays: dict[str, np.ndarray] = {"feature_ids": t["stats"]["feature"].to_numpy()}
    entries = t["entries"]
    e_split, e_buf = entries["split"].to_numpy(zero_copy_only=False), entries["buffer"].to_numpy(zero_copy_only=False)
    e_acts = _unfixed(entries["acts"], length)
    for split in SPLITS:
        for name, largest in _BUFFERS.items():
            size = int(shape["top_k"] if name == "top" else shape["reservoir"])
            p = f"{split}.{name}"
            key = np.full((n_feat, size), -np.inf if largest else np.inf,
                          dtype=np.float32 if name == "top" else np.float64)
            seq = np.full((n_feat, size), -1, dtype=np.int64)
            mx, acts = np.zeros((n_feat, size), np.float32), np.zeros((n_feat, size, length), np.float32)
            rows = np.flatnonzero((e_split == split) & (e_buf == name))
            f, pos = entries["feature"].to_numpy()[rows], entries["position"].to_numpy()[rows]
            key[f, pos] = entries["key"].to_numpy()[rows]
            seq[f, pos] = entries["seq"].to_numpy()[rows]
            mx[f, pos] = entries["max"].to_numpy()[rows]
            acts[f, pos] = e_acts[rows]
            arrays.update({f"{p}.key": key, f"{p}.seq": seq, f"{p}.max": mx, f"{p}.acts": acts})
        r = t["random"]
        r_rows = np.flatnonzero(r["split"].to_numpy(zero_copy_only=False) == split)
        n_random = int(shape["n_random"])
        rkey, rseq = np.full(n_random, np.inf), np.full(n_random, -1, dtype=np.int64)
        racts = np.zeros((n_feat, n_random, length), np.float32)
        pos = r["position"].to_numpy()[r_rows]
        rkey[pos], rseq[pos] = r["key"].to_numpy()[r_rows], r["seq"].to_numpy()[r_rows]
        racts[r["feature"].to_numpy()[r_rows], pos] = _unfixed(r["acts"], length)[r_rows]
        arrays.update({f"{split}.rnd_key": rkey, f"{split}.rnd_seq": rseq, f"{split}.rnd_acts": racts})
    s = t["stats"]
    arrays["stats.limbs"] = _unfixed(s["limbs"], s["limbs"].type.list_size)
    arrays["stats.n_active"] = s["n_active"].to_numpy()
    arrays["stats.max_act"] = s["max_act"].to_numpy()
    arrays["stats.hist"] = _unfixed(s["hist"], HIST_BINS)
    arrays["stats.bin_width"] = s["bin_width"].to_numpy()
    tok = t["tokens"]
    arrays["tokens_of.seq"] = tok["seq"].to_numpy()
    arrays["tokens_of.ids"] = _unfixed(tok["token_ids"], length)
    strings = {int(i): str(w) for ids, words in zip(arrays["tokens_of.ids"], tok["tokens"].to_pylist(), strict=True)
               for i, w in zip(ids, words, strict=True)}
    return ({k: np.array(v) for k, v in arrays.items()}, meta), strings


def _unfixed(col: pa.ChunkedArray, width: int) -> np.ndarray:
    arr = col.combine_chunks()
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), width)
