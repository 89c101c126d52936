"""Per-feature statistics of a collection that do not depend on the order of the contexts: exact sums
(integer limbs), active counts, maxima, and a histogram whose bin width is a function of the maximum.
So batching and sharding give the same numbers bit for bit, and states of disjoint contexts merge exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

HIST_BINS = 64


# Sums are order-free: each activation is cut on a fixed grid, its whole part and its fraction in units of
# 2^-FRAC_BITS (what lies below 2^-40 is dropped: at most 1e-12 per token), both added as int64. Integer
# addition does not depend on the order, so any batching or sharding gives the same sum, bit for bit.
SUM_LIMBS = 2  # [whole units, units of 2^-FRAC_BITS]
FRAC_BITS = 40
MAX_ABS = float(2**40)  # activations are clamped to +-2^40 for the sum only (an overflow guard)


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

    def update(self, flat: torch.Tensor, threshold: float) -> None:
        """flat: [tokens, F] float32."""
        self.n_tokens += flat.shape[0]
        nonzero = flat != 0
        sparse = int(nonzero.sum()) * 4 < flat.numel()  # SAE latents: only the non-zero entries (zeros add nothing)
        if sparse:
            rows, cols = nonzero.nonzero(as_tuple=True)
            x = flat[rows, cols].double().clamp_(-MAX_ABS, MAX_ABS)
        else:
            x = flat.double().clamp_(-MAX_ABS, MAX_ABS)
        whole = x.trunc()
        frac = ((x - whole) * 2.0**FRAC_BITS).trunc_()  # exact float64 steps; bits below 2^-40 dropped
        for limb, part in enumerate((whole.long(), frac.long())):
            if sparse:
                self.limbs[:, limb].index_add_(0, cols, part)
            else:
                self.limbs[:, limb] += part.sum(0)
        carry = torch.div(self.limbs[:, 1], 2**FRAC_BITS, rounding_mode="floor")  # keeps the fraction limb small
        self.limbs[:, 1] -= carry * 2**FRAC_BITS
        self.limbs[:, 0] += carry
        self.n_active += (flat > threshold).sum(0)
        self.max_act = torch.maximum(self.max_act, flat.amax(0))
        self._hist_update(flat)

    def _hist_update(self, flat: torch.Tensor) -> None:
        # Exact histogram of positive activations over [0, HIST_BINS * width), width doubling as the max
        # grows (adjacent bins merge), so no pass over the data is needed to know the range.
        width = hist_width(self.max_act)
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
        # Bin every entry at once; non-positive ones go to an extra column that is dropped.
        w = torch.where(width > 0, width, 1.0).float()
        bins = (flat / w).floor_().clamp_(0, HIST_BINS - 1).long()
        bins = torch.where(flat > 0, bins, HIST_BINS)
        bins += torch.arange(self.n_features, device=flat.device) * (HIST_BINS + 1)
        counts = torch.bincount(bins.view(-1), minlength=self.n_features * (HIST_BINS + 1))
        self.hist += counts.view(self.n_features, HIST_BINS + 1)[:, :HIST_BINS]
