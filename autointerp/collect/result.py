"""A collection's result tables: sequences, per-feature statistics and the example rows drawn from the buffers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from autointerp.collect.buffers import SPLITS, SplitBuffers, split_of
from autointerp.collect.stats import Stats, limb_total
from autointerp.config import CollectConfig


@dataclass
class CollectResult:
    n_tokens: int
    n_contexts: int
    sequences: pa.Table
    features: pa.Table
    examples: pa.Table
    resumed_contexts: int = 0  # contexts taken from a checkpoint rather than run again


@dataclass
class ExampleRows:
    """One kind's example rows of one split: every column but the activations, and where each row's activations
    sit (row index[i] of source [N, L], a buffer's storage), read once into the table (`concat_examples`)."""

    cols: dict[str, np.ndarray]
    source: torch.Tensor
    index: torch.Tensor


def split_examples(cfg: CollectConfig, fid: np.ndarray, split: str, buf: SplitBuffers) -> list[ExampleRows]:
    """The example rows (top, random, quantile) of one split's buffers; fid: feature ids. Only the rows that are
    kept are read from the buffers, never a sorted copy of a whole buffer."""
    n_features = len(fid)
    parts = []
    # top
    _, top_seq, top_max = buf.top.sorted_meta()
    f_idx, rank = (top_seq >= 0).nonzero()
    parts.append(ExampleRows({
        "feature": fid[f_idx], "kind": np.full(len(f_idx), _KINDS.index("top"), np.int8), "rank": rank,
        "seq": top_seq[f_idx, rank], "max_act": top_max[f_idx, rank], "quantile": np.full(len(f_idx), -1),
        "bin_low": np.full(len(f_idx), np.nan), "bin_high": np.full(len(f_idx), np.nan),
    }, *buf.top.rows_at(f_idx, rank)))
    # random (shared contexts, every feature); max_act comes from the rows read
    rnd_seq = buf.rnd_seq.cpu().numpy()
    valid = rnd_seq >= 0
    r = int(valid.sum())
    if r:
        f_all = np.repeat(np.arange(n_features), r)
        parts.append(ExampleRows({
            "feature": fid[f_all], "kind": np.full(len(f_all), _KINDS.index("random"), np.int8),
            "rank": np.tile(np.arange(r), n_features), "seq": np.tile(rnd_seq[valid], n_features),
            "quantile": np.full(len(f_all), -1), "bin_low": np.full(len(f_all), np.nan),
            "bin_high": np.full(len(f_all), np.nan),
        }, *buf.rnd_rows(valid)))
    # quantiles: equal-count rank bins of the reservoir (minus the top-k), per_quantile from each
    _, res_seq, res_max = buf.res.sorted_meta()
    chunk = max(1, 2**25 // max(1, res_seq.shape[1] * top_seq.shape[1]))  # bounds the [f, R, K] comparison
    for lo in range(0, n_features, chunk):
        rows = _quantile_rows(res_seq[lo : lo + chunk], res_max[lo : lo + chunk], top_seq[lo : lo + chunk],
                              cfg.n_quantiles, cfg.per_quantile)
        if rows is not None:
            f_idx, slot, quantile, rank, low, high = rows
            f_abs = f_idx + lo
            parts.append(ExampleRows({
                "feature": fid[f_abs], "kind": np.full(len(f_abs), _KINDS.index("quantile"), np.int8), "rank": rank,
                "seq": res_seq[f_abs, slot], "max_act": res_max[f_abs, slot],
                "quantile": quantile, "bin_low": low, "bin_high": high,
            }, *buf.res.rows_at(f_abs, slot)))
    for p in parts:
        p.cols["split"] = np.full(len(p.cols["feature"]), SPLITS.index(split), np.int8)
    return parts


def _read_rows(part: ExampleRows, out: np.ndarray) -> None:
    """out [n, L] = the part's activation rows; the max over each row as its max_act where none was kept."""
    dest = torch.from_numpy(out)
    if part.source.device.type == "cpu" and part.source.dtype == dest.dtype:
        torch.index_select(part.source, 0, part.index, out=dest)
    else:
        dest.copy_(part.source.index_select(0, part.index))
    if "max_act" not in part.cols:
        part.cols["max_act"] = dest.amax(1).numpy() if len(dest) else np.zeros(0, np.float32)


def _quantile_rows(res_seq: np.ndarray, res_max: np.ndarray, top_seq: np.ndarray, n_quantiles: int,
                   per_quantile: int) -> tuple[np.ndarray, ...] | None:
    """The quantile samples of features [f, R] reservoirs in key order (top-k contexts left out): each feature
    with at least n_quantiles entries has them sorted by max (ties: key order) and cut into n_quantiles
    equal-count bins as np.array_split cuts (the first n % q bins one longer); from each bin the per_quantile
    entries of smallest key (a uniform pick). Returns (feature, slot, quantile, rank in bin, bin low, bin high)
    rows ordered by feature, quantile and rank, or None when no feature has enough."""
    n_feat, size = res_seq.shape
    keep = (res_seq >= 0) & ~(res_seq[:, :, None] == top_seq[:, None, :]).any(-1)
    n = keep.sum(1, keepdims=True)  # [f, 1]
    pos = np.broadcast_to(np.arange(size), res_seq.shape)
    order = np.lexsort((pos, res_max, ~keep), axis=-1)  # kept first, by max, then key order
    by_max = np.take_along_axis(res_max, order, axis=1)
    r = pos
    valid = (r < n) & (n >= n_quantiles)
    if not valid.any():
        return None
    s, m = np.maximum(n // n_quantiles, 1), n % n_quantiles
    big = m * (s + 1)  # ranks in the first m (longer) bins
    q = np.where(r < big, r // (s + 1), m + (r - big) // s)
    start = np.where(q < m, q * (s + 1), big + (q - m) * s)
    end = start + np.where(q < m, s + 1, s) - 1
    f_idx, rank_pos = np.nonzero(valid)
    slot, quantile = order[f_idx, rank_pos], q[f_idx, rank_pos]
    low = by_max[f_idx, start[f_idx, rank_pos]]
    high = by_max[f_idx, np.minimum(end[f_idx, rank_pos], size - 1)]
    pick = np.lexsort((slot, quantile, f_idx))
    f_idx, slot, quantile, low, high = f_idx[pick], slot[pick], quantile[pick], low[pick], high[pick]
    first = np.ones(len(f_idx), dtype=bool)
    first[1:] = (f_idx[1:] != f_idx[:-1]) | (quantile[1:] != quantile[:-1])
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(f_idx)), 0))
    rank = np.arange(len(f_idx)) - group_start
    chosen = rank < per_quantile
    return (f_idx[chosen], slot[chosen], quantile[chosen], rank[chosen], low[chosen].astype(np.float64),
            high[chosen].astype(np.float64))


_KINDS = ("top", "random", "quantile")  # example kinds, held as int8 codes until the table is built


def _names(names: Sequence[str], codes: np.ndarray | None) -> pa.Array:
    """String column from int8 codes into `names` (Arrow's take: no Python string per row)."""
    return pa.array(names).take(pa.array(codes if codes is not None else np.zeros(0, np.int8)))


def concat_examples(parts: list[ExampleRows], ctx_len: int) -> pa.Table:
    """The examples table: the parts' columns, and their activation rows read into one array (one copy)."""
    n = sum(len(p.index) for p in parts)
    acts = np.empty((n, ctx_len), np.float32)
    lo = 0
    for p in parts:
        _read_rows(p, acts[lo : lo + len(p.index)])
        lo += len(p.index)
    cols = {k: np.concatenate([p.cols[k] for p in parts]) for k in parts[0].cols} if parts else {}
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * ctx_len)
    quantile = cols.get("quantile", np.zeros(0, np.int64))
    return pa.table({
        "feature": pa.array(cols.get("feature", np.zeros(0)).astype(np.int32)),
        "split": _names(SPLITS, cols.get("split")),
        "kind": _names(_KINDS, cols.get("kind")),
        "rank": pa.array(cols.get("rank", np.zeros(0)).astype(np.int32)),
        "seq": pa.array(cols.get("seq", np.zeros(0)).astype(np.int64)),
        "max_act": pa.array(cols.get("max_act", np.zeros(0)).astype(np.float32)),
        "acts": pa.ListArray.from_arrays(offsets, pa.array(acts.reshape(-1))),
        "quantile": pa.array(quantile.astype(np.int32), mask=quantile < 0),
        "bin_low": pa.array(cols.get("bin_low", np.zeros(0)).astype(np.float32), from_pandas=True),
        "bin_high": pa.array(cols.get("bin_high", np.zeros(0)).astype(np.float32), from_pandas=True),
    })


def sequences_table(cfg: CollectConfig, tokens_of: Mapping[int, np.ndarray],
                    token_strings: Sequence[str] | Mapping[int, str]) -> pa.Table:
    """One row per kept context: its index, split, token ids and token strings."""
    seqs = sorted(tokens_of)
    holdout = split_of(cfg.seed, cfg.holdout_frac, torch.tensor(seqs, dtype=torch.int64)).tolist()
    ids = [tokens_of[s].astype(np.int32) for s in seqs]
    return pa.table({
        "seq": pa.array(seqs, pa.int64()),
        "split": pa.array(["holdout" if h else "explain" for h in holdout]),
        "token_ids": pa.array([t.tolist() for t in ids], pa.list_(pa.int32())),
        "tokens": pa.array([[token_strings[i] for i in t] for t in ids], pa.list_(pa.string())),
    })


def features_table(fid: np.ndarray, st: Stats) -> pa.Table:
    """One row per feature: its statistics over every token seen."""
    n = max(st.n_tokens, 1)
    return pa.table({
        "feature": pa.array(fid.astype(np.int32)),
        "max_act": pa.array(st.max_act.cpu().numpy().astype(np.float32)),
        "mean_act": pa.array((limb_total(st.limbs.cpu().numpy()) / n).astype(np.float32)),
        "frac_active": pa.array((st.n_active.cpu().double() / n).numpy().astype(np.float32)),
        "n_active": pa.array(st.n_active.cpu().numpy()),
        "hist_bin_width": pa.array(st.bin_width.cpu().numpy()),
        "hist_counts": pa.array(list(st.hist.cpu().numpy()), pa.list_(pa.int64())),
    })
