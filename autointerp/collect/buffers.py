"""The collector's per-feature buffers and its hashed random choices.

Every random choice is a hash of (seed, context index[, feature]), so results do not depend on the batch size,
and the explain/holdout split of a context is fixed by its index alone. Per feature and split the buffers keep
the top-k contexts, a uniform reservoir of active contexts and the shared random contexts, each with its
per-token activations; they live on the device the activations come from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from autointerp.allocator import lazy_zeros
from autointerp.collect.sparse import SparseActs
from autointerp.config import CollectConfig

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
    return _hash(seed, salt, a, None if b is None else (b, True))


def hash_pairs(seed: int, salt: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """hash_uniform(seed, salt, a, b) at the pairs (a[i], b[i]) only, bit for bit: [n] from [n] and [n]."""
    return _hash(seed, salt, a, (b, False))


def _hash(seed: int, salt: int, a: torch.Tensor, b: tuple[torch.Tensor, bool] | None) -> torch.Tensor:
    x = _mix(torch.full_like(a, (seed * 1_000_003 + salt) & _MASK62) ^ _mix(a.to(torch.int64) & _MASK62))
    if b is not None:
        keys, outer = b
        x = _mix((x.unsqueeze(-1) if outer else x) ^ _mix(keys.to(torch.int64) + 0x9E37_79B9))
    return (x >> 9).to(torch.float64) / float(1 << 53)


def zeros(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """float32 zeros. On the host they are mapped lazily on small pages (allocator.lazy_zeros): the rows a feature
    never fills cost neither memory nor time (torch.zeros writes every page at once)."""
    if device.type != "cpu":
        return torch.zeros(shape, device=device)
    return torch.from_numpy(lazy_zeros(shape))


def split_of(seed: int, holdout_frac: float, seqs: torch.Tensor) -> torch.Tensor:
    """True where the context goes to the holdout split."""
    return hash_uniform(seed, _SALT_SPLIT, seqs) < holdout_frac


class Batch:
    """A batch's activations [B, L, F], read as per-(context, feature) rows of L values. Few rows are gathered
    from acts directly (L cache lines each, F floats apart); many, from one transposed copy [B, F, L] made on
    first need (a pass over the batch): early in a run nearly every context enters every feature's buffers."""

    def __init__(self, acts: torch.Tensor, sparse: SparseActs | None = None):
        self.acts = acts
        self.sparse = sparse  # when given, rows and contexts are built from its nonzero entries: no pass over acts
        self._by_feature: torch.Tensor | None = None

    def _transposed(self) -> torch.Tensor:
        if self._by_feature is None:
            self._by_feature = self.acts.transpose(1, 2).contiguous()
        return self._by_feature

    def rows(self, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """[n, L]: the activations of context b[i] for feature f[i]."""
        if self.sparse is not None:
            return self.sparse.rows(b, f)
        if self._by_feature is None and len(b) * 8 <= self.acts.shape[0] * self.acts.shape[2]:
            return self.acts[b, :, f]
        return self._transposed()[b, f]

    def write_contexts(self, b: torch.Tensor, out: torch.Tensor, slots: torch.Tensor) -> None:
        """out[:, slots] = every feature's activations on contexts b ([F, n, L]), written in place."""
        if self.sparse is not None:
            self.sparse.write_contexts(b, out, slots)
        else:
            out[:, slots] = self._transposed()[b].transpose(0, 1)


@dataclass
class Ranked:
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
              device: torch.device) -> Ranked:
        return cls(
            key=torch.full((n_features, size), -math.inf if largest else math.inf, dtype=dtype, device=device),
            slot=torch.arange(size, device=device).expand(n_features, size).clone(),
            seq=torch.full((n_features, size), -1, dtype=torch.int64, device=device),
            max=torch.zeros((n_features, size), device=device),
            acts=zeros((n_features, size, ctx_len), device),
            largest=largest,
        )

    def worst(self) -> torch.Tensor:
        return self.key[:, -1]

    def merge(self, new_key: torch.Tensor, seqs: torch.Tensor, ctx_max: torch.Tensor, batch: Batch,
              rows: torch.Tensor, feats: torch.Tensor) -> None:
        """new_key, ctx_max: [b, F]; batch: the whole batch, context i of the others being its row rows[i]
        (no copy of a split's contexts is made); only the features in `feats` can change."""
        size = self.key.shape[1]
        # When most features change (early in a run, nearly all), sorting every row beats gathering and scattering
        # the rows of `feats`: a feature none of whose new keys beats its worst keeps its entries either way.
        every = 2 * len(feats) > self.key.shape[0]
        key = self.key if every else self.key[feats]
        merged = torch.cat([key, (new_key if every else new_key[:, feats]).T], dim=1)  # [n, K + b]
        # A stable sort keeps kept entries (earlier contexts) first among equal keys: ties go to the smaller index.
        top, order = merged.sort(dim=1, descending=self.largest, stable=True)
        top, order = top[:, :size], order[:, :size]
        new_rows, new_pos = (order >= size).nonzero(as_tuple=True)  # row-major
        self._place(None if every else feats, top, order.clamp(max=size - 1), new_rows, new_pos,
                    order[new_rows, new_pos] - size, seqs, ctx_max, batch, rows)

    def merge_pairs(self, b: torch.Tensor, f: torch.Tensor, new_key: torch.Tensor, seqs: torch.Tensor,
                    ctx_max: torch.Tensor, batch: Batch, rows: torch.Tensor) -> None:
        """`merge` from the candidate pairs only: context b[i] (of seqs) with key new_key[i] for feature f[i], each
        pair once; every other pair's key is as bad as an empty slot's. The same keys, slots and payload as
        `merge`, bit for bit, without sorting [n, K + b]: a pair that does not beat its feature's worst key is
        dropped, and each other one's position is found by binary search in its feature's sorted keys."""
        n_features, size = self.key.shape
        dtype = torch.promote_types(self.key.dtype, new_key.dtype)  # the dtype `merge`'s concatenation sorts in
        worst = self.key[f, -1]
        idx = (new_key > worst if self.largest else new_key < worst).nonzero().squeeze(1)
        if len(idx) == 0:
            return
        b, f, new_key = b[idx], f[idx], new_key[idx].to(dtype)
        touched = torch.zeros(n_features, dtype=torch.bool, device=f.device)
        touched[f] = True
        feats = touched.nonzero().squeeze(1)
        every = 2 * len(feats) > n_features  # as in `merge`: whole rows, not those of `feats`
        if every:
            row, key = f, self.key.to(dtype)
        else:
            row_of = torch.empty(n_features, dtype=torch.int64, device=f.device)
            row_of[feats] = torch.arange(len(feats), device=f.device)
            row, key = row_of[f], self.key[feats].to(dtype)
        # A row's new keys by context (+inf where none), ascending (descending keys negated): the stable sort puts
        # the earlier context first among equal keys, as `merge` does.
        sign = -1 if self.largest else 1
        values = torch.full((len(key), len(seqs)), math.inf, dtype=dtype, device=key.device)
        values[row, b] = sign * new_key
        values, context = values.sort(dim=1, stable=True)
        # Kept entries before a new one: those with a key at least as good (earlier contexts win ties); the new ones
        # before it are those left of it. A +inf (no context) lands at K or beyond.
        pos = torch.searchsorted(sign * key, values, right=True) + torch.arange(values.shape[1], device=key.device)
        new_rows, col = (pos < size).nonzero(as_tuple=True)
        new_pos = pos[new_rows, col]
        is_new = torch.zeros(key.shape, dtype=torch.bool, device=key.device)
        is_new[new_rows, new_pos] = True
        kept = (torch.arange(size, device=key.device) - is_new.cumsum(1)).clamp_(min=0)  # in their order
        top = key.gather(1, kept)
        top[new_rows, new_pos] = sign * values[new_rows, col]
        self._place(None if every else feats, top, kept, new_rows, new_pos, context[new_rows, col], seqs, ctx_max,
                    batch, rows)

    def _place(self, feats: torch.Tensor | None, top: torch.Tensor, kept: torch.Tensor, new_rows: torch.Tensor,
               new_pos: torch.Tensor, new_b: torch.Tensor, seqs: torch.Tensor, ctx_max: torch.Tensor, batch: Batch,
               rows: torch.Tensor) -> None:
        """Takes the merged rows of `feats` (None: every feature): keys top [n, K]; at a kept entry's position,
        kept [n, K] says which of the row's entries it was; new entry j sits at (new_rows[j], new_pos[j]), in
        row-major order, and is context new_b[j]."""
        size = self.key.shape[1]
        old_slot = self.slot if feats is None else self.slot[feats]
        # The kept entries are each row's first ones: the i-th new entry of a row takes the slot of its i-th evicted.
        ends = torch.bincount(new_rows, minlength=len(top)).cumsum(0)
        physical = old_slot[new_rows, size + torch.arange(len(new_rows), device=ends.device) - ends[new_rows]]
        new_slot = old_slot.gather(1, kept)
        new_slot[new_rows, new_pos] = physical
        if feats is None:
            self.key, self.slot = top, new_slot
            f = new_rows
        else:
            self.key[feats] = top
            self.slot[feats] = new_slot
            f = feats[new_rows]
        self.seq[f, physical] = seqs[new_b]
        self.max[f, physical] = ctx_max[new_b, f]
        self.acts[f, physical] = batch.rows(rows[new_b], f)

    def sorted_view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(key, seq, max, acts) in sorted order, as numpy arrays (on the host)."""
        # Whole rows by advanced indexing: a gather would need an [F, K, L] int64 index, twice the size of acts.
        feature = torch.arange(len(self.slot), device=self.slot.device).unsqueeze(1)
        return (*self.sorted_meta(), self.acts[feature, self.slot].cpu().numpy())

    def sorted_meta(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(key, seq, max) in sorted order, on the host: what choosing example rows needs, without activations."""
        return (self.key.cpu().numpy(), self.seq.gather(1, self.slot).cpu().numpy(),
                self.max.gather(1, self.slot).cpu().numpy())

    def rows_at(self, f: np.ndarray, pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(acts as [F * K, L], the row in it of sorted position pos[i] of feature f[i])."""
        size = self.key.shape[1]
        ft = torch.from_numpy(np.asarray(f, np.int64)).to(self.slot.device)
        pt = torch.from_numpy(np.asarray(pos, np.int64)).to(self.slot.device)
        return self.acts.view(-1, self.acts.shape[-1]), ft * size + self.slot[ft, pt]

    def load_sorted(self, key: torch.Tensor, seq: torch.Tensor, mx: torch.Tensor, acts: torch.Tensor) -> None:
        self.key, self.seq, self.max, self.acts = key, seq, mx, acts
        self.slot = torch.arange(key.shape[1], device=key.device).expand_as(key).clone()


@dataclass
class SplitBuffers:
    top: Ranked  # by the context's max activation
    res: Ranked  # uniform reservoir of active contexts: smallest hash keys
    rnd_key: torch.Tensor  # [r] sorted ascending; shared by all features
    rnd_seq: torch.Tensor  # [r] in the order of rnd_key
    rnd_acts: torch.Tensor  # [F, r, L] by physical slot: a new random context is written over the one it evicts
    rnd_slot: torch.Tensor  # [r] physical slot of each sorted position

    @classmethod
    def empty(cls, n_features: int, cfg: CollectConfig, device: torch.device) -> SplitBuffers:
        f, r, length = n_features, cfg.n_random, cfg.ctx_len
        return cls(
            top=Ranked.empty(f, cfg.top_k, length, largest=True, dtype=torch.float32, device=device),
            res=Ranked.empty(f, cfg.reservoir_size, length, largest=False, dtype=torch.float64, device=device),
            rnd_key=torch.full((r,), math.inf, dtype=torch.float64, device=device),
            rnd_seq=torch.full((r,), -1, dtype=torch.int64, device=device),
            rnd_acts=zeros((f, r, length), device),
            rnd_slot=torch.arange(r, device=device),
        )

    def rnd_sorted(self) -> torch.Tensor:
        """[F, r, L] the random contexts' activations in the order of rnd_key."""
        return self.rnd_acts[:, self.rnd_slot]

    def rnd_rows(self, valid: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(rnd_acts as [F * r, L], the rows of every feature's random contexts at the sorted positions where
        `valid`, feature by feature)."""
        n_features, size, length = self.rnd_acts.shape
        phys = self.rnd_slot[torch.from_numpy(np.flatnonzero(valid)).to(self.rnd_slot.device)]
        index = torch.arange(n_features, device=phys.device).unsqueeze(1) * size + phys
        return self.rnd_acts.view(-1, length), index.reshape(-1)

    def referenced(self) -> torch.Tensor:
        return torch.cat([self.top.seq.flatten(), self.res.seq.flatten(), self.rnd_seq])
