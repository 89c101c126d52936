"""Per-feature statistics of a collection that do not depend on the order of the contexts: exact sums
(integer limbs), active counts, maxima, and a histogram whose bin width is a function of the maximum.
So batching and sharding give the same numbers bit for bit, and states of disjoint contexts merge exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from autointerp.collect.sparse import SparseActs

HIST_BINS = 64


# Sums are order-free: each context's sum over its positions is taken in float64 by a fixed pairwise tree (a
# function of that context's activations alone, whatever batch or shard it comes in), then cut on a fixed grid,
# its whole part and its fraction in units of 2^-FRAC_BITS (what lies below 2^-40 is dropped: at most 1e-12 per
# context), both added as int64. Integer addition does not depend on the order, so any batching or sharding gives
# the same sum, bit for bit. Only [contexts, F] values meet the grid, not [tokens, F]: 64x less integer work.
SUM_LIMBS = 2  # [whole units, units of 2^-FRAC_BITS]
FRAC_BITS = 40
MAX_ABS = float(2**40)  # context sums are clamped to +-2^40 for the sum only (an overflow guard)


def context_sums(acts: torch.Tensor) -> torch.Tensor:
    """[b, L, F] float32 -> [b, F] float64: each context's sum by a fixed pairwise tree over its L positions
    (position i paired with i + ceil(n/2) at every level). Elementwise IEEE additions only, so the result for a
    context does not depend on which other contexts share its batch, nor on the device."""
    length = acts.shape[1]
    half = (length + 1) // 2
    tree = acts[:, :half].to(torch.float64, copy=True)
    tree[:, : length - half] += acts[:, half:]
    while tree.shape[1] > 1:
        n = tree.shape[1]
        h = (n + 1) // 2
        tree[:, : n - h] += tree[:, h:]
        tree = tree[:, :h]
    return tree[:, 0]


def limb_total(limbs: np.ndarray) -> np.ndarray:
    """[F, 2] int64 -> [F] float64: the sum, rounded once from its exact integer value."""
    return np.asarray([float((int(w) << FRAC_BITS) + int(f)) / 2.0**FRAC_BITS for w, f in limbs.tolist()])


def hist_width(max_act: torch.Tensor) -> torch.Tensor:
    """The histogram bin width of a feature: the power of two with 64 bins just covering its maximum (0 until a
    positive activation is seen). A function of the maximum alone, so it does not depend on the order of batches."""
    _, exp = torch.frexp(max_act.float())
    width = torch.ldexp(torch.ones_like(max_act, dtype=torch.float64), (exp - int(math.log2(HIST_BINS))).double())
    return torch.where(max_act > 0, width, 0.0)


@dataclass
class Stats:
    n_features: int
    device: torch.device
    n_tokens: int = 0
    limbs: torch.Tensor = field(init=False)
    n_active: torch.Tensor = field(init=False)
    max_act: torch.Tensor = field(init=False)
    hist: torch.Tensor = field(init=False)
    bin_width: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        f, dev = self.n_features, self.device
        self.limbs = torch.zeros((f, SUM_LIMBS), dtype=torch.int64, device=dev)
        self.n_active = torch.zeros(f, dtype=torch.int64, device=dev)
        self.max_act = torch.full((f,), -math.inf, device=dev)
        self.hist = torch.zeros((f, HIST_BINS), dtype=torch.int64, device=dev)
        self.bin_width = torch.zeros(f, dtype=torch.float64, device=dev)  # 0 until a positive activation is seen

    def update(self, acts: torch.Tensor, ctx_max: torch.Tensor, threshold: float) -> None:
        """acts: [b, L, F] float32 (whole contexts); ctx_max: [b, F], acts' maximum over positions."""
        b, length, _ = acts.shape
        self.n_tokens += b * length
        self._add_sums(context_sums(acts), None)
        self.max_act = torch.maximum(self.max_act, ctx_max.amax(0))
        positive = (acts > 0).sum((0, 1), dtype=torch.int32)
        self._hist_update(acts, positive)
        self.n_active += positive if threshold == 0.0 else (acts > threshold).sum((0, 1), dtype=torch.int32)

    def update_sparse(self, sp: SparseActs, ctx_max: torch.Tensor, threshold: float) -> None:
        """The same update from the batch's nonzero entries (all positive; threshold >= 0), bit for bit: zeros
        add nothing to the sums, the counts or the histogram, and each (context, feature) pair with a nonzero
        entry has its whole row summed by the same tree."""
        b, length, f = sp.shape
        self.n_tokens += b * length
        _, feats, rows = sp.context_rows()
        self._add_sums(context_sums(rows.unsqueeze(-1))[:, 0], feats)
        self.max_act = torch.maximum(self.max_act, ctx_max.amax(0))
        positive = torch.bincount(sp.feat, minlength=f)
        self._rebin_to(hist_width(self.max_act))
        w = torch.where(self.bin_width > 0, self.bin_width, 1.0).float()
        bins = (sp.vals / w[sp.feat]).floor_().clamp_(-1, HIST_BINS - 1)
        counts = torch.bincount(bins.long() + sp.feat * (HIST_BINS + 1) + 1, minlength=f * (HIST_BINS + 1))
        self._add_hist(counts.view(f, HIST_BINS + 1), positive)
        self.n_active += positive if threshold == 0.0 else torch.bincount(sp.feat[sp.vals > threshold], minlength=f)

    def _add_sums(self, x: torch.Tensor, feats: torch.Tensor | None) -> None:
        """Adds context sums x (float64) to the limbs: x is [b, F], or [n] of features `feats`."""
        x = x.clamp(-MAX_ABS, MAX_ABS)
        whole = x.trunc()
        frac = ((x - whole) * 2.0**FRAC_BITS).trunc_()  # exact float64 steps; bits below 2^-40 dropped
        if feats is None:
            self.limbs[:, 0] += whole.long().sum(0)
            self.limbs[:, 1] += frac.long().sum(0)
        else:
            self.limbs[:, 0].index_add_(0, feats, whole.long())
            self.limbs[:, 1].index_add_(0, feats, frac.long())
        carry = torch.div(self.limbs[:, 1], 2**FRAC_BITS, rounding_mode="floor")  # keeps the fraction limb small
        self.limbs[:, 1] -= carry * 2**FRAC_BITS
        self.limbs[:, 0] += carry

    def _rebin_to(self, width: torch.Tensor) -> None:
        """Merges adjacent bins of the features whose bin width grows to `width` (powers of two: bins nest)."""
        grow = (self.bin_width > 0) & (width > self.bin_width)
        if grow.any():
            feats = grow.nonzero().squeeze(1)
            factor = (width[feats] / self.bin_width[feats]).round().long()
            for m in factor.unique().tolist():
                sel = feats[factor == m]
                mm = int(min(m, HIST_BINS))
                merged = self.hist[sel].view(len(sel), HIST_BINS // mm, mm).sum(-1)
                self.hist[sel] = torch.nn.functional.pad(merged, (0, HIST_BINS - merged.shape[1]))
        self.bin_width = width

    def _add_hist(self, counts: torch.Tensor, positive: torch.Tensor) -> None:
        """counts [F, HIST_BINS + 1]: column j + 1 holds bin j's count (column 1 may hold zeros too, so bin 0 is
        what the other bins leave of `positive`); column 0, negative activations, is dropped."""
        self.hist[:, 1:] += counts[:, 2:]
        self.hist[:, 0] += positive - counts[:, 2:].sum(1)

    def _hist_update(self, acts: torch.Tensor, positive: torch.Tensor) -> None:
        """Adds acts' positive activations (`positive` of them per feature) to the histogram.

        Exact histogram of positive activations over [0, HIST_BINS * width), bin j holding [j*width, (j+1)*width),
        width doubling as the max grows (adjacent bins merge), so no pass over the data is needed to know the
        range. One floor bins everything (x / width is exact: width is a power of two); negative activations go to
        an extra column that is dropped, and zeros land in bin 0's column beside the positives under width, so
        bin 0 is what the other bins leave of `positive`."""
        self._rebin_to(hist_width(self.max_act))
        width = self.bin_width
        n_features = self.n_features
        cols = HIST_BINS + 1  # column 0: negative (dropped); column j + 1: bin j (and zeros in column 1)
        w = torch.where(width > 0, width, 1.0).float()
        bins = acts / w
        bins.floor_().clamp_(-1, HIST_BINS - 1)
        if n_features * cols < 2**24:  # feature offsets added in float32 stay exact integers
            bins += torch.arange(1, n_features * cols, cols, device=acts.device, dtype=torch.float32)
            flat = bins.reshape(-1).to(torch.int32)
        else:
            flat = (bins.to(torch.int64) + torch.arange(1, n_features * cols, cols, device=acts.device)).reshape(-1)
        counts = torch.bincount(flat, minlength=n_features * cols).view(n_features, cols)
        self._add_hist(counts, positive)
