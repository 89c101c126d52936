"""A batch's activations as its nonzero entries, for features that fire rarely (SAE latents).

A trained SAE fires a few dozen of its thousands of latents per token (TopK k = 32-128, JumpReLU L0 20-100), so
nearly every entry of a batch [B, L, F] is zero. The collector's statistics then need only the nonzero entries:
zeros add nothing to a sum, a count or a histogram of positive values, and a context's max over positions is the
max of its nonzero entries (or 0). The collector takes this path when a batch's measured density is at most
MAX_DENSITY; dense features (MLP neurons, a random SAE) stay on the dense path. Both give the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Above this fraction of nonzero entries the dense passes are cheaper than the index arithmetic: each nonzero
# costs a few int64 operations (position, feature, sort of its context pair, histogram bin) where the dense
# path reads every entry about ten times.
MAX_DENSITY = 1 / 8


@dataclass(frozen=True)
class SparseActs:
    """The nonzero entries of acts [B, L, F]: entry i is acts[ctx[i], pos[i], feat[i]] = vals[i] > 0."""

    shape: tuple[int, int, int]
    ctx: torch.Tensor  # [n] int64
    pos: torch.Tensor  # [n] int64
    feat: torch.Tensor  # [n] int64
    vals: torch.Tensor  # [n] float32, all > 0
    _cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(default=None, compare=False, repr=False)

    def context_max(self) -> torch.Tensor:
        """[B, F]: acts.amax(1), the max over each context's positions (0 where a feature is silent)."""
        b, _, f = self.shape
        out = torch.zeros(b * f, dtype=self.vals.dtype, device=self.vals.device)
        out.scatter_reduce_(0, self.ctx * f + self.feat, self.vals, "amax")
        return out.view(b, f)

    def context_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ctx [n], feat [n], rows [n, L]): the whole row acts[ctx, :, feat] of every (context, feature) pair with
        a nonzero entry, each pair once, in (context, feature) order."""
        pairs, rows, _ = self._pairs()
        f = self.shape[2]
        return pairs // f, pairs % f, rows

    def rows(self, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """[n, L]: acts[b[i], :, f[i]], zeros where the pair has no nonzero entry."""
        _, rows, number = self._pairs()
        idx = number[b * self.shape[2] + f]
        if len(idx) == 0 or bool(idx.min() >= 0):  # the top-k and the reservoir take in active pairs only
            return rows[idx]
        out = torch.zeros((len(b), self.shape[1]), dtype=self.vals.dtype, device=self.vals.device)
        has = idx >= 0
        out[has] = rows[idx[has]]
        return out

    def write_contexts(self, b: torch.Tensor, out: torch.Tensor, slots: torch.Tensor) -> None:
        """out[:, slots[j]] = every feature's activations on context b[j] (out: [F, r, L]), in place: the slots
        are cleared and only the nonzero entries written, with no [F, n, L] copy of the contexts."""
        slot = torch.full((self.shape[0],), -1, dtype=torch.int64, device=self.ctx.device)
        slot[b] = slots.to(slot.device)
        j = slot[self.ctx]
        m = j >= 0
        out[:, slots] = 0.0
        out[self.feat[m], j[m], self.pos[m]] = self.vals[m]

    def _pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pairs [n] as ctx * F + feat, rows [n, L], number [B * F]: each pair's row, -1 for silent pairs), made
        once. Pairs are numbered through the [B * F] map rather than by sorting: O(B F + n), not O(n log n)."""
        cache = self._cache
        if cache is None:
            b, length, f = self.shape
            key = self.ctx * f + self.feat
            number = torch.full((b * f,), -1, dtype=torch.int64, device=key.device)
            number[key] = 0
            pairs = (number == 0).nonzero().squeeze(1)
            number[pairs] = torch.arange(len(pairs), device=key.device)
            rows = torch.zeros((len(pairs), length), dtype=self.vals.dtype, device=self.vals.device)
            rows[number[key], self.pos] = self.vals
            cache = (pairs, rows, number)
            object.__setattr__(self, "_cache", cache)
        return cache


def sparse_of(acts: torch.Tensor, threshold: float, max_density: float = MAX_DENSITY) -> SparseActs | None:
    """acts [B, L, F] (dense, or a sparse COO tensor) as its nonzero entries, or None where the dense path must run:
    more than max_density of the entries nonzero, a negative or NaN entry (zeros would then not be the least value),
    or a negative threshold (zeros would then count as active)."""
    if threshold < 0 or acts.numel() == 0:
        return None
    if acts.is_sparse:  # a reader's sparse output (a TopK SAE): its entries, without a pass over zeros
        acts = acts.coalesce()  # coalesced: (context, position, feature) order, as nonzero() gives
        if acts._nnz() > max_density * acts.numel():
            return None
        (ctx, pos, feat), vals = acts._indices(), acts._values()
        if len(vals) and not bool(vals.min() > 0):
            return None
        b, length, f = acts.shape
        return SparseActs((b, length, f), ctx, pos, feat, vals)
    # The first context decides whether to look further (a dense batch costs 1/B of a pass, not a whole one);
    # the count of the whole batch then comes with its nonzero entries, in one pass.
    if int(torch.count_nonzero(acts[0])) > max_density * acts[0].numel():
        return None
    nz = acts.nonzero()  # no copy of acts, which is often a view (the BOS position cut)
    if len(nz) > max_density * acts.numel():
        return None
    ctx, pos, feat = nz.unbind(1)
    vals = acts[ctx, pos, feat]
    if len(vals) and not bool(vals.min() > 0):
        return None
    b, length, f = acts.shape
    return SparseActs((b, length, f), ctx, pos, feat, vals)
