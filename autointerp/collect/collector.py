"""Streaming feature activations into top, quantile and random contexts, and per-feature statistics.

Memory is bounded by the number of features, not by the number of tokens: per feature and
split we keep the top-k contexts, a uniform reservoir of active contexts (from which the
quantile samples are drawn at the end) and a shared set of random contexts, each with its
per-token activations (buffers.py). Nothing of size tokens x features is kept beyond one batch.

Every statistic is order-free (sums are int64 on a fixed grid, the histogram's bin width is a function of the
maximum), so the states of disjoint sets of contexts merge exactly (`state`, `from_state`, partial.py).
"""

from __future__ import annotations

import json
import math
import os
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from autointerp.allocator import heap_only
from autointerp.collect.buffers import (
    _SALT_RANDOM,
    _SALT_RESERVOIR,
    SPLITS,
    Batch,
    SplitBuffers,
    hash_pairs,
    hash_uniform,
    split_of,
)
from autointerp.collect.result import (
    CollectResult,
    concat_examples,
    features_table,
    sequences_table,
    split_examples,
)
from autointerp.collect.sparse import MAX_DENSITY, sparse_of
from autointerp.collect.stats import Stats
from autointerp.config import CollectConfig
from autointerp.models import FeatureFn

_CHECKPOINT_VERSION = 3
_RANKED_PARTS = ("key", "seq", "max", "acts")
_SPLIT_PARTS = ("rnd_key", "rnd_seq", "rnd_acts")
_STATS_PARTS = ("limbs", "n_active", "max_act", "hist", "bin_width")


class Collector:
    """Feeds batches of contexts through a feature function and keeps what each feature needs."""

    def __init__(self, cfg: CollectConfig, n_features: int, feature_offset: int = 0,
                 device: torch.device | str = "cpu", max_density: float = MAX_DENSITY):
        """max_density: a batch with at most this fraction of nonzero activations takes the sparse path
        (sparse.py; the same results, bit for bit); 0 keeps every batch on the dense path."""
        self.cfg = cfg
        self.max_density = max_density
        self.n_features = n_features
        self.device = torch.device(device)
        self.feature_ids = torch.arange(feature_offset, feature_offset + n_features, device=self.device)
        self.buffers = {s: SplitBuffers.empty(n_features, cfg, self.device) for s in SPLITS}
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
        """seqs: [b] context indices; tokens: [b, L] ids; acts: [b, L, F] activations of those tokens (dense, or a
        sparse COO tensor)."""
        cfg = self.cfg
        self.n_contexts += len(seqs)
        for s, t in zip(seqs.tolist(), tokens, strict=True):
            self.tokens_of[s] = t
        sparse = sparse_of(acts, cfg.threshold, self.max_density) if self.max_density > 0 else None
        if sparse is None:
            if acts.is_sparse:
                acts = acts.to_dense()
            ctx_max = acts.amax(1)  # [b, F]
            self.stats.update(acts, ctx_max, cfg.threshold)
        else:
            ctx_max = sparse.context_max()
            self.stats.update_sparse(sparse, ctx_max, cfg.threshold)
        batch = Batch(acts, sparse)
        holdout = split_of(cfg.seed, cfg.holdout_frac, seqs)
        for name, mask in (("explain", ~holdout), ("holdout", holdout)):
            if mask.any():
                rows = mask.nonzero().squeeze(1)
                self._add_split(self.buffers[name], seqs[rows], batch, rows, ctx_max[rows])
        self._batches += 1
        if self._batches % 64 == 0:
            self.prune_tokens()

    def _add_split(self, buf: SplitBuffers, seqs: torch.Tensor, batch: Batch, rows: torch.Tensor,
                   ctx_max: torch.Tensor) -> None:
        """seqs, ctx_max: [b], [b, F] of this split's contexts, rows [b] of the batch."""
        cfg = self.cfg
        active = ctx_max > cfg.threshold
        b_idx, f_idx = active.nonzero(as_tuple=True)  # (context, feature) order
        # Top-k by the context's max activation, over active contexts; a uniform reservoir of active contexts: the
        # smallest hash keys, hashed only where active (the same bits as hashing every pair).
        res_key = hash_pairs(cfg.seed, _SALT_RESERVOIR, seqs[b_idx], self.feature_ids[f_idx])
        if batch.sparse is not None:
            # Few pairs are active, and only they can enter: merged from the pairs, no [F, K + b] sort.
            buf.top.merge_pairs(b_idx, f_idx, ctx_max[b_idx, f_idx], seqs, ctx_max, batch, rows)
            buf.res.merge_pairs(b_idx, f_idx, res_key, seqs, ctx_max, batch, rows)
        else:
            cand = torch.where(active, ctx_max, -math.inf)
            feats = (cand.amax(0) > buf.top.worst()).nonzero().squeeze(1)
            if len(feats):
                buf.top.merge(cand, seqs, ctx_max, batch, rows, feats)
            keys = torch.full(active.shape, math.inf, dtype=torch.float64, device=active.device)
            keys[b_idx, f_idx] = res_key
            feats = (keys.amin(0) < buf.res.worst()).nonzero().squeeze(1)
            if len(feats):
                buf.res.merge(keys, seqs, ctx_max, batch, rows, feats)
        self._add_random(buf, seqs, batch, rows)

    def _add_random(self, buf: SplitBuffers, seqs: torch.Tensor, batch: Batch, rows: torch.Tensor) -> None:
        """Random contexts, the same for every feature: the smallest per-context hash keys."""
        rkeys = hash_uniform(self.cfg.seed, _SALT_RANDOM, seqs)
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
            batch.write_contexts(rows[order[is_new] - size], buf.rnd_acts, free)
            buf.rnd_key, buf.rnd_slot = top, slot
            buf.rnd_seq = torch.cat([buf.rnd_seq, seqs])[order]

    def prune_tokens(self) -> None:
        keep = set(torch.cat([b.referenced() for b in self.buffers.values()]).unique().tolist())
        self.tokens_of = {s: t for s, t in self.tokens_of.items() if s in keep}

    # ------------------------------------------------------------ results

    def result(self, token_strings: Sequence[str] | Mapping[int, str]) -> CollectResult:
        self.prune_tokens()
        fid = self.feature_ids.cpu().numpy()
        parts = [p for split, buf in self.buffers.items() for p in split_examples(self.cfg, fid, split, buf)]
        examples = concat_examples(parts, self.cfg.ctx_len)
        sequences = sequences_table(self.cfg, self.tokens_of, token_strings)
        features = features_table(fid, self.stats)
        return CollectResult(self.stats.n_tokens, self.n_contexts, sequences, features, examples)


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


def _resume(checkpoint: Path | None, cfg: CollectConfig, n_features: int, feature_offset: int,
            dev: torch.device) -> Collector:
    """The collector saved in `checkpoint`, or a new one when there is none or it cannot be ours."""
    if checkpoint is not None and checkpoint.exists():
        try:
            return Collector.load(checkpoint, cfg, n_features, feature_offset, dev)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            pass  # unreadable, foreign or not ours (a pickle is refused, never run): start over
    return Collector(cfg, n_features, feature_offset, dev)


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
    max_density: float = MAX_DENSITY,
) -> tuple[Collector, int]:
    """The collector after `contexts` (numbered from `first_seq`: a shard's contexts keep their index in the
    whole run), and how many contexts came from the checkpoint. Buffers live on `device`; max_density chooses
    the sparse or the dense path per batch (Collector)."""
    dev = torch.device(device)
    if dev.type == "mps":  # no float64 or int64 scatter there: the reduction stays on the host
        dev = torch.device("cpu")
    collector = _resume(checkpoint, cfg, n_features, feature_offset, dev)
    collector.max_density = max_density
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
            acts = acts.narrow_copy(1, 1, acts.shape[1] - 1) if acts.is_sparse else acts[:, 1:]
        seqs = torch.arange(first_seq + next_seq, first_seq + next_seq + len(batch), dtype=torch.int64, device=dev)
        collector.add(seqs, tokens, acts.to(dev))
        next_seq += len(batch)
        if progress is not None:
            progress(tokens.size)
        batch.clear()
        if checkpoint is not None and time.monotonic() - last_save >= checkpoint_every_s:
            collector.save(checkpoint)
            last_save, saved_at = time.monotonic(), next_seq

    # The buffers are allocated (lazily zeroed) above; each batch's blocks are then reused, not mapped afresh.
    with heap_only():
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
