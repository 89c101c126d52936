"""Collection statistics against brute force on arrays built to hit the edge cases (zeros, negatives, activations
exactly on bin edges, a non-zero threshold), and bit-for-bit equality whatever the batching and order of contexts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autointerp.collect.stats import HIST_BINS, Stats, context_sums, limb_total


def _acts(seed: int = 0, n_ctx: int = 24, length: int = 13, n_feat: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn((n_ctx, length, n_feat), generator=g) * torch.tensor([0.01, 1, 3, 100, 1e4, 0.5, 2.0])
    acts[torch.rand(acts.shape, generator=g) < 0.4] = 0.0  # exact zeros, as ReLU/JumpReLU latents have
    acts[0, 0, 2], acts[1, 0, 2] = 8.0, 0.25  # on bin edges (the width is 0.25 or 0.5: a power of two)
    acts[:, :, 6] = -1.0  # a feature that never fires
    return acts


def _fed(acts: torch.Tensor, cuts: list[int], threshold: float = 0.0) -> Stats:
    st = Stats(acts.shape[2], torch.device("cpu"))
    for lo, hi in zip([0, *cuts], [*cuts, len(acts)], strict=True):
        part = acts[lo:hi]
        st.update(part, part.amax(1), threshold)
    return st


def test_statistics_equal_brute_force():
    acts = _acts()
    st = _fed(acts, [5, 6, 17])
    flat = acts.reshape(-1, acts.shape[2]).double().numpy()
    assert st.n_tokens == flat.shape[0]
    np.testing.assert_allclose(limb_total(st.limbs.numpy()), flat.sum(0), rtol=1e-12, atol=1e-9)
    assert st.max_act.tolist() == pytest.approx(flat.max(0).tolist())
    assert st.n_active.tolist() == (flat > 0).sum(0).tolist()
    for f in range(flat.shape[1]):
        pos = flat[flat[:, f] > 0, f]
        width = float(st.bin_width[f])
        if not len(pos):
            assert width == 0 and st.hist[f].sum() == 0
            continue
        expected = np.bincount(np.minimum(np.floor(pos / width).astype(int), HIST_BINS - 1), minlength=HIST_BINS)
        assert st.hist[f].tolist() == expected.tolist(), f  # bin j is [j*w, (j+1)*w), edges included on the left


def test_threshold_counts_only_activations_above_it():
    acts = _acts(1)
    st = _fed(acts, [10], threshold=0.5)
    assert st.n_active.tolist() == (acts > 0.5).sum((0, 1)).tolist()
    assert st.hist.sum(1).tolist() == (acts > 0).sum((0, 1)).tolist()  # the histogram still holds every positive


@pytest.mark.parametrize("length", [1, 2, 7, 64])
def test_context_sums_do_not_depend_on_the_batch(length):
    acts = _acts(2, length=length)
    whole = context_sums(acts)
    alone = torch.stack([context_sums(acts[i : i + 1])[0] for i in range(len(acts))])
    assert torch.equal(whole, alone)
    np.testing.assert_allclose(whole.numpy(), acts.double().sum(1).numpy(), rtol=1e-12, atol=1e-12)


def test_every_batching_and_order_gives_the_same_state_bit_for_bit():
    acts = _acts(3)
    ref = _fed(acts, [])
    shuffled = acts[torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))]
    for st in (_fed(acts, [1, 2, 3, 11]), _fed(acts, list(range(1, len(acts)))), _fed(shuffled, [7])):
        for part in ("limbs", "n_active", "max_act", "hist", "bin_width"):
            assert torch.equal(getattr(st, part), getattr(ref, part)), part


def _quantiles_one_feature_at_a_time(res_seq, res_max, top_seq, n_q, per):
    rows = []
    for f in range(len(res_seq)):
        slots = np.flatnonzero((res_seq[f] >= 0) & ~np.isin(res_seq[f], top_seq[f]))
        if len(slots) < n_q:
            continue
        by_max = slots[np.argsort(res_max[f, slots], kind="stable")]
        for q, group in enumerate(np.array_split(by_max, n_q)):
            for rank, slot in enumerate(np.sort(group)[:per]):
                rows.append((f, slot, q, rank, res_max[f, group].min(), res_max[f, group].max()))
    return rows


@pytest.mark.parametrize(("n_q", "per"), [(10, 5), (3, 2), (4, 9)])
def test_vectorised_quantile_samples_equal_the_per_feature_loop(n_q, per):
    from autointerp.collect.result import _quantile_rows

    rng = np.random.default_rng(n_q)
    n_feat, size, k = 40, 30, 6
    res_seq = rng.integers(0, 60, (n_feat, size))
    res_seq[rng.random((n_feat, size)) < 0.3] = -1  # unfilled slots
    res_seq[:5, 3:] = -1  # features with too few entries
    res_max = rng.integers(0, 8, (n_feat, size)).astype(np.float32)  # many ties
    top_seq = rng.integers(-1, 60, (n_feat, k))
    got = _quantile_rows(res_seq, res_max, top_seq, n_q, per)
    assert got is not None
    assert list(zip(*(a.tolist() for a in got), strict=True)) == \
        [tuple(float(v) if i >= 4 else int(v) for i, v in enumerate(r)) for r in
         _quantiles_one_feature_at_a_time(res_seq, res_max, top_seq, n_q, per)]


def _collector(n_feat: int, offset: int, acts: torch.Tensor):
    from autointerp.collect.collector import Collector
    from autointerp.config import CollectConfig

    cfg = CollectConfig(hook="x", n_tokens=64, ctx_len=acts.shape[1], top_k=3, n_quantiles=2, per_quantile=2,
                        n_random=4)
    c = Collector(cfg, n_feat, offset)
    tokens = np.arange(acts.shape[0] * acts.shape[1]).reshape(acts.shape[:2]) % 50
    for lo in range(0, len(acts), 5):
        c.add(torch.arange(lo, min(lo + 5, len(acts))), tokens[lo : lo + 5], acts[lo : lo + 5, :, offset : offset + n_feat])
    return c, cfg


def test_feature_ranges_joined_equal_the_whole_run():
    from autointerp.collect import partial
    from autointerp.collect.collector import Collector

    acts = _acts(4, n_ctx=150, length=6)  # 7 features, ranges [0, 3) and [3, 7); contexts some range lacks
    whole, cfg = _collector(7, 0, acts)
    low, _ = _collector(3, 0, acts)
    high, _ = _collector(4, 3, acts)
    for c in (low, high):
        c.prune_tokens()  # as a shard does before writing its state: each keeps the contexts it refers to
    arrays, meta = partial.concat_features([high.state(), low.state()])  # any order
    joined = Collector.from_state(cfg, 7, 0, arrays, meta)
    assert set(low.tokens_of) != set(high.tokens_of)  # the union of token ids is needed
    strings = [f"t{i}" for i in range(50)]
    a, b = whole.result(strings), joined.result(strings)
    for name in ("sequences", "features", "examples"):
        assert getattr(a, name).equals(getattr(b, name)), name
    with pytest.raises(ValueError, match="overlap or leave a gap"):
        partial.concat_features([low.state(), low.state()])
    other, _ = _collector(4, 3, acts[:145])
    with pytest.raises(ValueError, match="same contexts"):
        partial.concat_features([low.state(), other.state()])
