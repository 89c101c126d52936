"""The sparse path (only nonzero activations touch the statistics and buffers) against the dense path: the same
state and the same tables, bit for bit, on real SAEs over a tiny model and on planted activations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autointerp.collect import corpus
from autointerp.collect.collector import Collector, collect_contexts
from autointerp.collect.sparse import sparse_of
from autointerp.config import CollectConfig
from autointerp.models import FeatureReader, load_sae
from tests.helpers import make_jumprelu_sae_file, make_topk_sae_dir, random_encoder

HOOK = "blocks.1.hook_resid_post"


def _assert_same_state(a: Collector, b: Collector) -> None:
    arrays_a, meta_a = a.state()
    arrays_b, meta_b = b.state()
    assert meta_a == meta_b
    assert arrays_a.keys() == arrays_b.keys()
    for key in arrays_a:
        assert arrays_a[key].dtype == arrays_b[key].dtype, key
        assert np.array_equal(arrays_a[key], arrays_b[key], equal_nan=True), key


def _assert_same_tables(a: Collector, b: Collector, strings) -> None:
    ra, rb = a.result(strings), b.result(strings)
    for name in ("sequences", "features", "examples"):
        assert getattr(ra, name).equals(getattr(rb, name)), name


def _sae(kind: str, tmp_path: Path, d_in: int):
    if kind == "topk":
        return load_sae(str(make_topk_sae_dir(tmp_path / "topk", HOOK, d_in=d_in, d_sae=96, k=3)))
    enc = random_encoder(d_in, 96, seed=1)
    threshold = torch.linspace(1.5, 4.0, 96)  # per latent, so latents fire at different rates
    return load_sae(str(make_jumprelu_sae_file(tmp_path / "jump.safetensors", HOOK, enc, threshold)))


@pytest.mark.parametrize("kind", ["topk", "jumprelu"])
@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_sparse_and_dense_paths_give_the_same_tables_on_an_sae(tmp_path, tiny_model, tiny_model_dir, corpus_file,
                                                               kind, threshold):
    reader = FeatureReader(tiny_model, HOOK, sae=_sae(kind, tmp_path, tiny_model.cfg.d_model))
    cfg = CollectConfig(model=str(tiny_model_dir), hook=HOOK, dataset=str(corpus_file), n_tokens=1600, ctx_len=16,
                        top_k=4, n_quantiles=3, per_quantile=2, n_random=5, batch_size=7, seed=3, threshold=threshold)
    ctxs = list(corpus.contexts(corpus.pieces(cfg.dataset), tiny_model.tokenizer, cfg.ctx_len, 100))
    bos = tiny_model.tokenizer.bos_token_id
    first = reader(torch.cat([torch.full((7, 1), bos), torch.from_numpy(np.stack(ctxs[:7]))], 1))[:, 1:]
    assert sparse_of(first, threshold, max_density=1.0) is not None  # the sparse path does run on this SAE
    assert float((first != 0).float().mean()) < 0.25
    dense, _ = collect_contexts(cfg, reader, reader.n_features, iter(ctxs), bos, max_density=0.0)
    sparse, _ = collect_contexts(cfg, reader, reader.n_features, iter(ctxs), bos, max_density=1.0)
    assert int(dense.stats.n_active.sum()) > 0
    _assert_same_state(dense, sparse)
    strings = [f"t{i}" for i in range(tiny_model.cfg.d_vocab)]
    _assert_same_tables(dense, sparse, strings)


def _topk_with_zeros(tmp_path: Path, d_in: int):
    """A TopK SAE whose biases push some tokens' top-k pre-activations below zero: ReLU leaves zeros among them."""
    sae = load_sae(str(make_topk_sae_dir(tmp_path / "topk", HOOK, d_in=d_in, d_sae=96, k=5)))
    with torch.no_grad():
        sae.b_enc -= 2.5
    return sae


@pytest.mark.parametrize("features", [(0, None), (10, 70)])
def test_a_topk_readers_sparse_output_holds_the_dense_outputs_nonzero_entries(tmp_path, tiny_model, corpus_file,
                                                                            features):
    sae = _topk_with_zeros(tmp_path, tiny_model.cfg.d_model)
    dense_reader = FeatureReader(tiny_model, HOOK, sae=sae, start=features[0], stop=features[1])
    sparse_reader = FeatureReader(tiny_model, HOOK, sae=sae, start=features[0], stop=features[1], sparse=True)
    ctxs = list(corpus.contexts(corpus.pieces(str(corpus_file)), tiny_model.tokenizer, 16, 7))
    tokens = torch.from_numpy(np.stack(ctxs))
    dense, coo = dense_reader(tokens), sparse_reader(tokens)
    assert coo.is_sparse and coo.shape == dense.shape
    fired = (dense > 0).sum(-1)
    assert int(fired.sum()) > 0 and int(fired.min()) < 5  # ReLU cut some tokens' top-k values
    assert torch.equal(coo.to_dense(), dense)
    for a, b in [(dense, coo), (dense[:, 1:], coo.narrow_copy(1, 1, dense.shape[1] - 1))]:  # the BOS cut too
        want, got = sparse_of(a, 0.0, max_density=1.0), sparse_of(b, 0.0, max_density=1.0)
        assert want is not None and got is not None
        for part in ("ctx", "pos", "feat", "vals"):
            assert torch.equal(getattr(want, part), getattr(got, part)), part
    assert dense_reader.sae.activation_fn.use_sparse_activations is False  # switched for the call only


def test_a_topk_reader_with_nan_among_its_values_gives_the_dense_output(tmp_path, tiny_model, corpus_file):
    """NaN is no zero and no positive value: the sparse form cannot hold what the dense path would see."""
    sae = _topk_with_zeros(tmp_path, tiny_model.cfg.d_model)
    with torch.no_grad():
        sae.b_enc[3] = float("nan")
    ctxs = list(corpus.contexts(corpus.pieces(str(corpus_file)), tiny_model.tokenizer, 16, 3))
    tokens = torch.from_numpy(np.stack(ctxs))
    dense = FeatureReader(tiny_model, HOOK, sae=sae, start=2, stop=50)(tokens)
    got = FeatureReader(tiny_model, HOOK, sae=sae, start=2, stop=50, sparse=True)(tokens)
    assert bool(dense.isnan().any())
    assert not got.is_sparse and got.shape == dense.shape
    assert torch.equal(got.nan_to_num(-1.0), dense.nan_to_num(-1.0))


@pytest.mark.parametrize("max_density", [1.0, 1e-6])
def test_a_topk_readers_sparse_output_collects_the_tables_of_its_dense_output(tmp_path, tiny_model, tiny_model_dir,
                                                                              corpus_file, max_density):
    """Through the sparse path, and densified where a batch is denser than max_density."""
    sae = _topk_with_zeros(tmp_path, tiny_model.cfg.d_model)
    cfg = CollectConfig(model=str(tiny_model_dir), hook=HOOK, dataset=str(corpus_file), n_tokens=1600, ctx_len=16,
                        top_k=4, n_quantiles=3, per_quantile=2, n_random=5, batch_size=7, seed=3)
    ctxs = list(corpus.contexts(corpus.pieces(cfg.dataset), tiny_model.tokenizer, cfg.ctx_len, 100))
    bos = tiny_model.tokenizer.bos_token_id
    runs = [collect_contexts(cfg, FeatureReader(tiny_model, HOOK, sae=sae, sparse=sparse), 96, iter(ctxs), bos,
                             max_density=density)[0]
            for sparse, density in ((False, 0.0), (True, max_density))]
    assert int(runs[0].stats.n_active.sum()) > 0
    _assert_same_state(*runs)
    _assert_same_tables(*runs, [f"t{i}" for i in range(tiny_model.cfg.d_vocab)])


def _planted(seed: int, n_ctx: int = 60, length: int = 9, n_feat: int = 11) -> torch.Tensor:
    """Sparse activations spanning many binades (so histogram bins merge as maxima grow), with whole contexts
    active for some features (rows with no zero) and features silent throughout."""
    g = torch.Generator().manual_seed(seed)
    scale = 2.0 ** torch.randint(-12, 6, (n_ctx, length, n_feat), generator=g).float()
    acts = torch.rand((n_ctx, length, n_feat), generator=g) * scale
    acts *= torch.rand((n_ctx, length, n_feat), generator=g) < 0.15
    acts[5, :, 2] = torch.rand(length, generator=g) + 0.5
    acts[:, :, 7] = 0.0
    return acts


@pytest.mark.parametrize("cuts", [[60], [1, 7, 30, 60], list(range(1, 61))])
@pytest.mark.parametrize("threshold", [0.0, 0.01])
def test_sparse_and_dense_paths_agree_bit_for_bit_on_planted_activations(cuts, threshold):
    acts = _planted(4)
    cfg = CollectConfig(hook="x", n_tokens=64, ctx_len=acts.shape[1], top_k=3, n_quantiles=2, per_quantile=2,
                        n_random=4, threshold=threshold)
    tokens = np.arange(acts.shape[0] * acts.shape[1]).reshape(acts.shape[:2]) % 50
    states = []
    for density in (0.0, 1.0):
        c = Collector(cfg, acts.shape[2], 0, max_density=density)
        lo = 0
        for hi in cuts:
            c.add(torch.arange(lo, hi), tokens[lo:hi], acts[lo:hi])
            lo = hi
        states.append(c)
    _assert_same_state(*states)
    _assert_same_tables(*states, [f"t{i}" for i in range(50)])


def test_dense_batches_and_negative_values_keep_the_dense_path():
    acts = _planted(1)
    assert sparse_of(acts, 0.0, max_density=0.05) is None  # denser than asked
    assert sparse_of(acts, -0.1, max_density=1.0) is None  # zeros would be active
    negative = acts.clone()
    negative[0, 0, 0] = -1.0
    assert sparse_of(negative, 0.0, max_density=1.0) is None
    sp = sparse_of(acts, 0.0, max_density=1.0)
    assert sp is not None
    assert torch.equal(sp.context_max(), acts.amax(1))


def test_the_density_of_the_whole_batch_decides_not_only_its_first_context():
    acts = torch.zeros((4, 8, 10))
    acts[1:, :, :5] = 1.0  # contexts 1-3 half dense, context 0 silent
    assert sparse_of(acts, 0.0, max_density=0.25) is None  # 3/8 of the batch is nonzero
    assert sparse_of(acts, 0.0, max_density=0.5) is not None
    first_dense = torch.zeros((4, 8, 10))
    first_dense[0] = 1.0  # the first context says dense: the batch stays dense without a full pass
    assert sparse_of(first_dense, 0.0, max_density=0.5) is None
    assert sparse_of(first_dense, 0.0, max_density=1.0) is not None


def test_hashing_only_the_active_pairs_gives_the_keys_of_every_pair():
    from autointerp.collect.buffers import _SALT_RESERVOIR, hash_pairs, hash_uniform

    seqs, feats = torch.arange(1000, 1013), torch.arange(40, 77)
    every = hash_uniform(5, _SALT_RESERVOIR, seqs, feats)  # [13, 37]
    b, f = torch.meshgrid(torch.arange(13), torch.arange(37), indexing="ij")
    assert torch.equal(hash_pairs(5, _SALT_RESERVOIR, seqs[b.flatten()], feats[f.flatten()]), every.flatten())
