"""A batch's activations as its nonzero entries, for features that fire rarely (SAE latents).

A trained SAE fires a few dozen of its thousands of latents per token (TopK k = 32-128, JumpReLU L0 20-100), so
nearly every entry of a batch [B, L, F] is zero. The collector's statistics then need only the nonzero entries:
zeros add nothing to a sum, a count or a histogram of positive values, and a context's max over positions is the
max of its nonzero entries (or 0). The collector takes this path when a batch's measured density is at most
MAX_DENSITY; dense features (MLP neurons, a random SAE) stay on the dense path. Both give the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def context_max(self) -> torch.Tensor:
        """[B, F]: acts.amax(1), the max over each context's positions (0 where a feature is silent)."""
        b, _, f = self.shape
        out = torch.zeros(b * f, dtype=self.vals.dtype, device=self.vals.device)
        out.scatter_reduce_(0, self.ctx * f + self.feat, self.vals, "amax")
        return out.view(b, f)

    def context_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ctx [n], feat [n], rows [n, L]): the whole row acts[ctx, :, feat] of every (context, feature) pair with
        a nonzero entry, each pair once."""
        b, length, f = self.shape
        # Pairs numbered through a [B * F] map rather than by sorting (torch.unique): O(B F + n), not O(n log n).
        key = self.ctx * f + self.feat
        seen = torch.zeros(b * f, dtype=torch.bool, device=key.device)
        seen[key] = True
        pairs = seen.nonzero().squeeze(1)
        number = torch.empty(b * f, dtype=torch.int64, device=key.device)
        number[pairs] = torch.arange(len(pairs), device=key.device)
        inverse = number[key]
        rows = torch.zeros((len(pairs), length), dtype=self.vals.dtype, device=self.vals.device)
        rows[inverse, self.pos] = self.vals
        return pairs // f, pairs % f, rows


def sparse_of(acts: torch.Tensor, threshold: float, max_density: float = MAX_DENSITY) -> SparseActs | None:
    """acts [B, L, F] as its nonzero entries, or None where the dense path must run: more than max_density of the
    entries nonzero, a negative or NaN entry (zeros would then not be the least value), or a negative threshold
    (zeros would then count as active)."""
    if threshold < 0 or acts.numel() == 0:
        return None
    if int(torch.count_nonzero(acts)) > max_density * acts.numel():
        return None
    ctx, pos, feat = acts.nonzero().unbind(1)  # no copy of acts, which is often a view (the BOS position cut)
    vals = acts[ctx, pos, feat]
    if len(vals) and not bool(vals.min() > 0):
        return None
    b, length, f = acts.shape
    return SparseActs((b, length, f), ctx, pos, feat, vals)
