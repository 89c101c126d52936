"""Streaming feature activations into top, quantile and random contexts, and per-feature statistics.

Memory is bounded by the number of features, not by the number of tokens: per feature and
split we keep the top-k contexts, a uniform reservoir of active contexts (from which the
quantile samples are drawn at the end) and a shared set of random contexts, each with its
per-token activations. Nothing of size tokens x features is kept beyond one batch.

Every random choice is a hash of (seed, context index[, feature]), so results do not depend
on the batch size, and the explain/holdout split of a context is fixed by its index alone. Every
statistic is order-free too (sums are int64 on a fixed grid, the histogram's bin width is a function of the
maximum), so the states of disjoint sets of contexts merge exactly (`state`, `from_state`, partial.py).
The buffers live on the device the activations come from; only what is stored crosses to the host.
"""

from __future__ import annotations

import json
import math
import os
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from autointerp.collect.stats import HIST_BINS as HIST_BINS_
from autointerp.collect.stats import Stats, limb_total
from autointerp.config import CollectConfig
from autointerp.models import FeatureFn

SPLITS = ("explain", "holdout")
_MASK62 = (1 << 62) - 1
_SALT_SPLIT, _SALT_RANDOM, _SALT_RESERVOIR = 0x5EED_0001, 0x5EED_0002, 0x5EED_0003


def _mix(x: torch.Tensor) -> torch.Tensor:
    # A splitmix-style finaliser on non-negative int64 (products wrap; masking keeps them non-negative).
    x = x ^ (x >> 31)
    x = (x * 0x2545F4914F6CDD1D) & _MASK62
    x = x ^ (x >> 29)
    x = (x * 0x1B873593_9E3779B1) & _MASK62
    return x ^ (x >> 32)


def hash_uniform(seed: int, salt: int, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic uniforms in [0, 1) from integer keys (broadcast a with b), independent of batching."""
    x = _mix(torch.full_like(a, (seed * 1_000_003 + salt) & _MASK62) ^ _mix(a.to(torch.int64) & _MASK62))
    if b is not None:
        x = _mix(x.unsqueeze(-1) ^ _mix(b.to(torch.int64) + 0x9E37_79B9))
    return (x >> 9).to(torch.float64) / float(1 << 53)


def split_of(seed: int, holdout_frac: float, seqs: torch.Tensor) -> torch.Tensor:
    """True where the context goes to the holdout split."""
    return hash_uniform(seed, _SALT_SPLIT, seqs) < holdout_frac


class _Batch:
    """A batch's activations [B, L, F], read as per-(context, feature) rows of L values. Few rows are gathered
    from acts directly (L cache lines each, F floats apart); many, from one transposed copy [B, F, L] made on
    first need (a pass over the batch): early in a run nearly every context enters every feature's buffers."""

    def __init__(self, acts: torch.Tensor):
        self.acts = acts
        self._by_feature: torch.Tensor | None = None

    def _transposed(self) -> torch.Tensor:
        if self._by_feature is None:
            self._by_feature = self.acts.transpose(1, 2).contiguous()
        return self._by_feature

    def rows(self, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """[n, L]: the activations of context b[i] for feature f[i]."""
        if self._by_feature is None and len(b) * 8 <= self.acts.shape[0] * self.acts.shape[2]:
            return self.acts[b, :, f]
        return self._transposed()[b, f]

    def contexts(self, b: torch.Tensor) -> torch.Tensor:
        """[F, n, L]: every feature's activations on contexts b."""
        return self._transposed()[b].transpose(0, 1)


@dataclass
class _Ranked:
    """Per-feature best-K entries. Keys are kept sorted; the payload (context index, max, activations) sits in
    fixed physical slots reached through `slot`, so a merge moves only the entries that come in."""

    key: torch.Tensor  # [F, K] sorted (descending if largest); +-inf where empty
    slot: torch.Tensor  # [F, K] physical slot of each sorted position
    seq: torch.Tensor  # [F, K] by physical slot; -1 where empty
    max: torch.Tensor  # [F, K]
    acts: torch.Tensor  # [F, K, L]
    largest: bool

    @classmethod
    def empty(cls, n_features: int, size: int, ctx_len: int, largest: bool, dtype: torch.dtype,
              device: torch.device) -> _Ranked:
        return cls(
            key=torch.full((n_features, size), -math.inf if largest else math.inf, dtype=dtype, device=device),
            slot=torch.arange(size, device=device).expand(n_features, size).clone(),
            seq=torch.full((n_features, size), -1, dtype=torch.int64, device=device),
            max=torch.zeros((n_features, size), device=device),
            acts=torch.zeros((n_features, size, ctx_len), device=device),
            largest=largest,
        )

    def worst(self) -> torch.Tensor:
        return self.key[:, -1]

    def merge(self, new_key: torch.Tensor, seqs: torch.Tensor, ctx_max: torch.Tensor, batch: _Batch,
              rows: torch.Tensor, feats: torch.Tensor) -> None:
        """new_key, ctx_max: [b, F]; batch: the whole batch, context i of the others being its row rows[i]
        (no copy of a split's contexts is made); only the features in `feats` can change."""
        size = self.key.shape[1]
        # When most features change (early in a run, nearly all), sorting every row beats gathering and scattering
        # the rows of `feats`: a feature none of whose new keys beats its worst keeps its entries either way.
        every = 2 * len(feats) > self.key.shape[0]
        key, old_slot = (self.key, self.slot) if every else (self.key[feats], self.slot[feats])
        merged = torch.cat([key, (new_key if every else new_key[:, feats]).T], dim=1)  # [n, K + b]
        # A stable sort keeps kept entries (earlier contexts) first among equal keys: ties go to the smaller index.
        top, order = merged.sort(dim=1, descending=self.largest, stable=True)
        top, order = top[:, :size], order[:, :size]
        is_new = order >= size
        retained = torch.zeros((len(key), size + 1), dtype=torch.bool, device=self.key.device)
        retained.scatter_(1, torch.where(is_new, size, order), True)
        free_rows, free_pos = (~retained[:, :size]).nonzero(as_tuple=True)
        new_rows, new_pos = is_new.nonzero(as_tuple=True)  # row-major, same count per row as free_*
        physical = old_slot[free_rows, free_pos]
        new_slot = old_slot.gather(1, order.clamp(max=size - 1))
        new_slot[new_rows, new_pos] = physical
        if every:
            self.key, self.slot = top, new_slot
            f = new_rows
        else:
            self.key[feats] = top
            self.slot[feats] = new_slot
            f = feats[new_rows]
        b = order[new_rows, new_pos] - size
        self.seq[f, physical] = seqs[b]
        self.max[f, physical] = ctx_max[b, f]
        self.acts[f, physical] = batch.rows(rows[b], f)

    def sorted_view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(key, seq, max, acts) in sorted order, as numpy arrays (on the host)."""
        idx = self.slot
        return (self.key.cpu().numpy(), self.seq.gather(1, idx).cpu().numpy(), self.max.gather(1, idx).cpu().numpy(),
                self.acts.gather(1, idx.unsqueeze(-1).expand(-1, -1, self.acts.shape[2])).cpu().numpy())

    def load_sorted(self, key: torch.Tensor, seq: torch.Tensor, mx: torch.Tensor, acts: torch.Tensor) -> None:
        self.key, self.seq, self.max, self.acts = key, seq, mx, acts
        self.slot = torch.arange(key.shape[1], device=key.device).expand_as(key).clone()


@dataclass
class _SplitBuffers:
    top: _Ranked  # by the context's max activation
    res: _Ranked  # uniform reservoir of active contexts: smallest hash keys
    rnd_key: torch.Tensor  # [r] sorted ascending; shared by all features
    rnd_seq: torch.Tensor  # [r] in the order of rnd_key
    rnd_acts: torch.Tensor  # [F, r, L] by physical slot: a new random context is written over the one it evicts
    rnd_slot: torch.Tensor  # [r] physical slot of each sorted position

    @classmethod
    def empty(cls, n_features: int, cfg: CollectConfig, device: torch.device) -> _SplitBuffers:
        f, r, length = n_features, cfg.n_random, cfg.ctx_len
        return cls(
            top=_Ranked.empty(f, cfg.top_k, length, largest=True, dtype=torch.float32, device=device),
            res=_Ranked.empty(f, cfg.reservoir_size, length, largest=False, dtype=torch.float64, device=device),
            rnd_key=torch.full((r,), math.inf, dtype=torch.float64, device=device),
            rnd_seq=torch.full((r,), -1, dtype=torch.int64, device=device),
            rnd_acts=torch.zeros((f, r, length), device=device),
            rnd_slot=torch.arange(r, device=device),
        )

    def rnd_sorted(self) -> torch.Tensor:
        """[F, r, L] the random contexts' activations in the order of rnd_key."""
        return self.rnd_acts[:, self.rnd_slot]

    def referenced(self) -> torch.Tensor:
        return torch.cat([self.top.seq.flatten(), self.res.seq.flatten(), self.rnd_seq])


@dataclass
class CollectResult:
    n_tokens: int
    n_contexts: int
    sequences: pa.Table
    features: pa.Table
    examples: pa.Table
    resumed_contexts: int = 0  # contexts taken from a checkpoint rather than run again


_CHECKPOINT_VERSION = 3
_RANKED_PARTS = ("key", "seq", "max", "acts")
_SPLIT_PARTS = ("rnd_key", "rnd_seq", "rnd_acts")
_STATS_PARTS = ("limbs", "n_active", "max_act", "hist", "bin_width")


class Collector:
    """Feeds batches of contexts through a feature function and keeps what each feature needs."""

    def __init__(self, cfg: CollectConfig, n_features: int, feature_offset: int = 0,
                 device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.n_features = n_features
        self.device = torch.device(device)
        self.feature_ids = torch.arange(feature_offset, feature_offset + n_features, device=self.device)
        self.buffers = {s: _SplitBuffers.empty(n_features, cfg, self.device) for s in SPLITS}
        self.stats = Stats(n_features, self.device)
        self.tokens_of: dict[int, np.ndarray] = {}
        self.n_contexts = 0
        self._batches = 0

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """The whole state as host arrays (ranked buffers in sorted order) and scalars: what a checkpoint
        and a shard hold, and what `from_state` (and partial.merge) take."""
        arrays: dict[str, np.ndarray] = {"feature_ids": self.feature_ids.cpu().numpy()}
        for split, buf in self.buffers.items():
            for name, ranked in (("top", buf.top), ("res", buf.res)):
                for part, a in zip(_RANKED_PARTS, ranked.sorted_view(), strict=True):
                    arrays[f"{split}.{name}.{part}"] = a
            arrays[f"{split}.rnd_key"], arrays[f"{split}.rnd_seq"] = buf.rnd_key.cpu().numpy(), buf.rnd_seq.cpu().numpy()
            arrays[f"{split}.rnd_acts"] = buf.rnd_sorted().cpu().numpy()
        for part in _STATS_PARTS:
            arrays[f"stats.{part}"] = getattr(self.stats, part).cpu().numpy()
        seqs = sorted(self.tokens_of)
        arrays["tokens_of.seq"] = np.asarray(seqs, dtype=np.int64)
        arrays["tokens_of.ids"] = (np.stack([self.tokens_of[q] for q in seqs]).astype(np.int64) if seqs
                                   else np.zeros((0, self.cfg.ctx_len), dtype=np.int64))
        meta = {"n_features": self.n_features, "n_tokens": self.stats.n_tokens, "n_contexts": self.n_contexts,
                "batches": self._batches}
        return arrays, meta

    @classmethod
    def from_state(cls, cfg: CollectConfig, n_features: int, feature_offset: int, arrays: dict[str, np.ndarray],
                   meta: dict[str, int], device: torch.device | str = "cpu") -> Collector:
        """A collector holding `state`'s arrays; ValueError if they do not fit this collection."""
        collector = cls(cfg, n_features, feature_offset, device)
        ids = arrays.get("feature_ids")
        if meta.get("n_features") != n_features or ids is None or \
                not np.array_equal(ids, collector.feature_ids.cpu().numpy()):
            raise ValueError("the state does not belong to this collection (other features)")

        def take(key: str, like: torch.Tensor) -> torch.Tensor:
            a = arrays.get(key)
            if a is None or a.shape != tuple(like.shape) or a.dtype != like.cpu().numpy().dtype:
                raise ValueError(f"{key} does not fit this collection")
            return torch.from_numpy(np.ascontiguousarray(a)).to(collector.device)

        for split, buf in collector.buffers.items():
            for name, ranked in (("top", buf.top), ("res", buf.res)):
                ranked.load_sorted(*(take(f"{split}.{name}.{p}", getattr(ranked, p)) for p in _RANKED_PARTS))
            for part in _SPLIT_PARTS:
                setattr(buf, part, take(f"{split}.{part}", getattr(buf, part)))
            buf.rnd_slot = torch.arange(len(buf.rnd_key), device=collector.device)
        for part in _STATS_PARTS:
            setattr(collector.stats, part, take(f"stats.{part}", getattr(collector.stats, part)))
        seqs, ids = arrays.get("tokens_of.seq"), arrays.get("tokens_of.ids")
        if seqs is None or ids is None or ids.ndim != 2 or len(seqs) != len(ids):
            raise ValueError("no token ids")
        collector.tokens_of = {int(q): row for q, row in zip(seqs, ids, strict=True)}
        collector.stats.n_tokens = int(meta["n_tokens"])
        collector.n_contexts, collector._batches = int(meta["n_contexts"]), int(meta["batches"])
        return collector

    def save(self, path: Path) -> None:
        """Write the whole state atomically (a kill during the write leaves the previous checkpoint), as
        a NumPy .npz of plain arrays plus JSON scalars: loading it cannot run code, unlike a pickle."""
        arrays, meta = self.state()
        arrays["meta"] = np.frombuffer(json.dumps({"version": _CHECKPOINT_VERSION, **meta}).encode(), dtype=np.uint8)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, cfg: CollectConfig, n_features: int, feature_offset: int = 0,
             device: torch.device | str = "cpu") -> Collector:
        """The state `save` wrote. Raises ValueError for a file that is not such a checkpoint of this
        collection (a pickle included: it is never unpickled)."""
        npz = np.load(path, allow_pickle=False)  # a pickle raises ValueError here, unread
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} is not a checkpoint archive")
        with npz:
            try:
                meta = json.loads(npz["meta"].tobytes())
                arrays = {k: npz[k] for k in npz.files if k != "meta"}
            except (KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path} is not a checkpoint of this version: {exc}") from exc
        if meta.get("version") != _CHECKPOINT_VERSION:
            raise ValueError(f"{path} does not belong to this collection")
        try:
            return cls.from_state(cfg, n_features, feature_offset, arrays, meta, device)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} does not belong to this collection: {exc}") from exc

    def add(self, seqs: torch.Tensor, tokens: np.ndarray, acts: torch.Tensor) -> None:
        """seqs: [b] context indices; tokens: [b, L] ids; acts: [b, L, F] activations of those tokens."""
        cfg = self.cfg
        self.n_contexts += len(seqs)
        for s, t in zip(seqs.tolist(), tokens, strict=True):
            self.tokens_of[s] = t
        ctx_max = acts.amax(1)  # [b, F]
        batch = _Batch(acts)
        self.stats.update(acts, ctx_max, cfg.threshold)
        holdout = split_of(cfg.seed, cfg.holdout_frac, seqs)
        for name, mask in (("explain", ~holdout), ("holdout", holdout)):
            if mask.any():
                rows = mask.nonzero().squeeze(1)
                self._add_split(self.buffers[name], seqs[rows], batch, rows, ctx_max[rows])
        self._batches += 1
        if self._batches % 64 == 0:
            self.prune_tokens()

    def _add_split(self, buf: _SplitBuffers, seqs: torch.Tensor, batch: _Batch, rows: torch.Tensor,
                   ctx_max: torch.Tensor) -> None:
        """seqs, ctx_max: [b], [b, F] of this split's contexts, rows [b] of the batch."""
        cfg = self.cfg
        active = ctx_max > cfg.threshold

        # Top-k by the context's max activation, over active contexts.
        cand = torch.where(active, ctx_max, -math.inf)
        feats = (cand.amax(0) > buf.top.worst()).nonzero().squeeze(1)
        if len(feats):
            buf.top.merge(cand, seqs, ctx_max, batch, rows, feats)

        # Uniform reservoir of active contexts: keep the smallest hash keys.
        keys = hash_uniform(cfg.seed, _SALT_RESERVOIR, seqs, self.feature_ids)  # [b, F]
        keys = torch.where(active, keys, math.inf)
        feats = (keys.amin(0) < buf.res.worst()).nonzero().squeeze(1)
        if len(feats):
            buf.res.merge(keys, seqs, ctx_max, batch, rows, feats)

        # Random contexts, the same for every feature: the smallest per-context hash keys.
        rkeys = hash_uniform(cfg.seed, _SALT_RANDOM, seqs)
        if rkeys.min() < buf.rnd_key[-1]:
            size = len(buf.rnd_key)
            top, order = torch.cat([buf.rnd_key, rkeys]).sort(stable=True)
            top, order = top[:size], order[:size]
            is_new = order >= size
            retained = torch.zeros(size, dtype=torch.bool, device=order.device)
            retained[order[~is_new]] = True
            free = buf.rnd_slot[~retained]  # physical slots of the evicted entries, as many as come in
            slot = torch.empty_like(buf.rnd_slot)
            slot[~is_new] = buf.rnd_slot[order[~is_new]]
            slot[is_new] = free
            buf.rnd_acts[:, free] = batch.contexts(rows[order[is_new] - size])
            buf.rnd_key, buf.rnd_slot = top, slot
            buf.rnd_seq = torch.cat([buf.rnd_seq, seqs])[order]

    def prune_tokens(self) -> None:
        keep = set(torch.cat([b.referenced() for b in self.buffers.values()]).unique().tolist())
        self.tokens_of = {s: t for s, t in self.tokens_of.items() if s in keep}

    # ------------------------------------------------------------ results

    def result(self, token_strings: Sequence[str] | Mapping[int, str]) -> CollectResult:
        self.prune_tokens()
        example_parts = []
        for split, buf in self.buffers.items():
            example_parts += self._examples(split, buf)
        examples = _concat_examples(example_parts, self.cfg.ctx_len)
        seqs = sorted(self.tokens_of)
        holdout = split_of(self.cfg.seed, self.cfg.holdout_frac, torch.tensor(seqs, dtype=torch.int64)).tolist()
        ids = [self.tokens_of[s].astype(np.int32) for s in seqs]
        sequences = pa.table({
            "seq": pa.array(seqs, pa.int64()),
            "split": pa.array(["holdout" if h else "explain" for h in holdout]),
            "token_ids": pa.array([t.tolist() for t in ids], pa.list_(pa.int32())),
            "tokens": pa.array([[token_strings[i] for i in t] for t in ids], pa.list_(pa.string())),
        })
        st = self.stats
        n = max(st.n_tokens, 1)
        features = pa.table({
            "feature": pa.array(self.feature_ids.cpu().numpy().astype(np.int32)),
            "max_act": pa.array(st.max_act.cpu().numpy().astype(np.float32)),
            "mean_act": pa.array((limb_total(st.limbs.cpu().numpy()) / n).astype(np.float32)),
            "frac_active": pa.array((st.n_active.cpu().double() / n).numpy().astype(np.float32)),
            "n_active": pa.array(st.n_active.cpu().numpy()),
            "hist_bin_width": pa.array(st.bin_width.cpu().numpy()),
            "hist_counts": pa.array(list(st.hist.cpu().numpy()), pa.list_(pa.int64())),
        })
        return CollectResult(st.n_tokens, self.n_contexts, sequences, features, examples)

    def _examples(self, split: str, buf: _SplitBuffers) -> list[dict[str, np.ndarray]]:
        cfg = self.cfg
        fid = self.feature_ids.cpu().numpy()
        parts = []
        # top
        _, top_seq, top_max, top_acts = buf.top.sorted_view()
        f_idx, rank = (top_seq >= 0).nonzero()
        parts.append({
            "feature": fid[f_idx], "kind": np.full(len(f_idx), _KINDS.index("top"), np.int8), "rank": rank,
            "seq": top_seq[f_idx, rank], "max_act": top_max[f_idx, rank],
            "acts": top_acts[f_idx, rank], "quantile": np.full(len(f_idx), -1),
            "bin_low": np.full(len(f_idx), np.nan), "bin_high": np.full(len(f_idx), np.nan),
        })
        # random (shared contexts, every feature)
        rnd_seq = buf.rnd_seq.cpu().numpy()
        valid = rnd_seq >= 0
        r = int(valid.sum())
        if r:
            acts = buf.rnd_sorted().cpu().numpy()[:, valid]  # [F, r, L]
            f_all = np.repeat(np.arange(self.n_features), r)
            parts.append({
                "feature": fid[f_all], "kind": np.full(len(f_all), _KINDS.index("random"), np.int8), "rank": np.tile(np.arange(r), self.n_features),
                "seq": np.tile(rnd_seq[valid], self.n_features), "max_act": acts.max(-1).reshape(-1),
                "acts": acts.reshape(-1, cfg.ctx_len), "quantile": np.full(len(f_all), -1),
                "bin_low": np.full(len(f_all), np.nan), "bin_high": np.full(len(f_all), np.nan),
            })
        # quantiles: equal-count rank bins of the reservoir (minus the top-k), per_quantile from each
        _, res_seq, res_max, res_acts = buf.res.sorted_view()
        chunk = max(1, 2**25 // max(1, res_seq.shape[1] * top_seq.shape[1]))  # bounds the [f, R, K] comparison
        for lo in range(0, self.n_features, chunk):
            rows = _quantile_rows(res_seq[lo : lo + chunk], res_max[lo : lo + chunk], top_seq[lo : lo + chunk],
                                  cfg.n_quantiles, cfg.per_quantile)
            if rows is not None:
                f_idx, slot, quantile, rank, low, high = rows
                f_abs = f_idx + lo
                parts.append({
                    "feature": fid[f_abs], "kind": np.full(len(f_abs), _KINDS.index("quantile"), np.int8), "rank": rank,
                    "seq": res_seq[f_abs, slot], "max_act": res_max[f_abs, slot], "acts": res_acts[f_abs, slot],
                    "quantile": quantile, "bin_low": low, "bin_high": high,
                })
        for p in parts:
            p["split"] = np.full(len(p["feature"]), SPLITS.index(split), np.int8)
        return parts


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


def _concat_examples(parts: list[dict[str, np.ndarray]], ctx_len: int) -> pa.Table:
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    if not cols or len(cols["feature"]) == 0:
        acts_flat = np.zeros(0, np.float32)
        n = 0
    else:
        acts_flat = cols["acts"].astype(np.float32, copy=False).reshape(-1)
        n = len(cols["feature"])
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * ctx_len)
    quantile = cols.get("quantile", np.zeros(0, np.int64))
    return pa.table({
        "feature": pa.array(cols.get("feature", np.zeros(0)).astype(np.int32)),
        "split": _names(SPLITS, cols.get("split")),
        "kind": _names(_KINDS, cols.get("kind")),
        "rank": pa.array(cols.get("rank", np.zeros(0)).astype(np.int32)),
        "seq": pa.array(cols.get("seq", np.zeros(0)).astype(np.int64)),
        "max_act": pa.array(cols.get("max_act", np.zeros(0)).astype(np.float32)),
        "acts": pa.ListArray.from_arrays(offsets, pa.array(acts_flat)),
        "quantile": pa.array(quantile.astype(np.int32), mask=quantile < 0),
        "bin_low": pa.array(cols.get("bin_low", np.zeros(0)).astype(np.float32), from_pandas=True),
        "bin_high": pa.array(cols.get("bin_high", np.zeros(0)).astype(np.float32), from_pandas=True),
    })


def run_collection(
    cfg: CollectConfig,
    features: FeatureFn,
    n_features: int,
    contexts: Iterable[np.ndarray],
    token_strings: list[str],
    bos_id: int | None,
    feature_offset: int = 0,
    progress: Callable[[int], None] | None = None,
    checkpoint: Path | None = None,
    checkpoint_every_s: float = 300.0,
    device: torch.device | str = "cpu",
) -> CollectResult:
    """Run the model over `contexts` (arrays of ctx_len ids) in batches and keep what each feature needs.

    With `checkpoint`, the state is saved there every `checkpoint_every_s` seconds, and a run that finds
    a checkpoint resumes from it: the contexts it already holds are read from the corpus but not run."""
    collector, skip = collect_contexts(cfg, features, n_features, contexts, bos_id, feature_offset, progress,
                                       checkpoint, checkpoint_every_s, device=device)
    result = collector.result(token_strings)
    result.resumed_contexts = skip
    return result


def collect_contexts(
    cfg: CollectConfig,
    features: FeatureFn,
    n_features: int,
    contexts: Iterable[np.ndarray],
    bos_id: int | None,
    feature_offset: int = 0,
    progress: Callable[[int], None] | None = None,
    checkpoint: Path | None = None,
    checkpoint_every_s: float = 300.0,
    first_seq: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[Collector, int]:
    """The collector after `contexts` (numbered from `first_seq`: a shard's contexts keep their index in the
    whole run), and how many contexts came from the checkpoint. Buffers live on `device`."""
    dev = torch.device(device)
    if dev.type == "mps":  # no float64 or int64 scatter there: the reduction stays on the host
        dev = torch.device("cpu")
    collector = None
    if checkpoint is not None and checkpoint.exists():
        try:
            collector = Collector.load(checkpoint, cfg, n_features, feature_offset, dev)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            collector = None  # unreadable, foreign or not ours (a pickle is refused, never run): start over
    collector = collector or Collector(cfg, n_features, feature_offset, dev)
    skip = collector.n_contexts
    if progress is not None and skip:
        progress(skip * cfg.ctx_len)
    batch: list[np.ndarray] = []
    next_seq = saved_at = skip
    last_save = time.monotonic()

    def flush() -> None:
        nonlocal next_seq, last_save, saved_at
        tokens = np.stack(batch)
        inputs = torch.from_numpy(tokens)
        if bos_id is not None:
            inputs = torch.cat([torch.full((len(batch), 1), bos_id, dtype=torch.int64), inputs], dim=1)
        acts = features(inputs)
        if bos_id is not None:
            acts = acts[:, 1:]
        seqs = torch.arange(first_seq + next_seq, first_seq + next_seq + len(batch), dtype=torch.int64, device=dev)
        collector.add(seqs, tokens, acts.to(dev))
        next_seq += len(batch)
        if progress is not None:
            progress(tokens.size)
        batch.clear()
        if checkpoint is not None and time.monotonic() - last_save >= checkpoint_every_s:
            collector.save(checkpoint)
            last_save, saved_at = time.monotonic(), next_seq

    for i, ctx in enumerate(contexts):
        if i < skip:
            continue
        batch.append(ctx)
        if len(batch) == cfg.batch_size:
            flush()
    if batch:
        flush()
    if checkpoint is not None and next_seq > saved_at:
        # The finished state too: until the database commits it, a failed or blocked write loses nothing.
        collector.save(checkpoint)
    return collector, skip


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a collection holds beyond the model and the SAE (docs/guide/collect.md, Memory)."""

    buffers: int  # top-k, reservoir, random contexts and statistics: for the whole run
    batch: int  # one batch's activations and the working copies the reduction makes of them
    examples: int  # the result's example rows (per-token activations), built once at the end

    @property
    def collect(self) -> int:
        """While contexts are fed: the buffers and one batch."""
        return self.buffers + self.batch

    @property
    def result(self) -> int:
        """While the result tables are built: the buffers, a sorted copy of them and the example rows."""
        return 2 * self.buffers + self.examples


def collect_memory(cfg: CollectConfig, n_features: int) -> MemoryEstimate:
    """The memory formula of docs/guide/collect.md for `cfg` over `n_features` features, in bytes."""
    f, length, k, res, r = n_features, cfg.ctx_len, cfg.top_k, cfg.reservoir_size, cfg.n_random
    act = 4 * length  # one context's float32 activations
    # per feature and split: top (key f32, slot, seq, max f32), reservoir (key f64, slot, seq, max f32), random
    per_split = k * (24 + act) + res * (28 + act) + r * act
    stats = 2 * 8 + 8 + 4 + 8 * HIST_BINS_ + 8
    buffers = f * (2 * per_split + stats)
    batch = 4 * cfg.batch_size * length * f * 4  # acts, the SAE's pre-activations / the histogram's bins, ...
    rows = 2 * f * (k + r + cfg.n_quantiles * cfg.per_quantile)
    examples = rows * (act + 40)  # the numpy columns; the Arrow table shares their activations (no copy)
    return MemoryEstimate(buffers, batch, examples)
