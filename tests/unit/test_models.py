"""Random-init control schemes (Heap et al. 2025): what each scheme promises about the weights, seeding,
and that the random model still runs. On the tiny Llama from tests/helpers.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from autointerp import models
from autointerp.config import RANDOM_INIT_SCHEMES, CollectConfig
from autointerp.errors import AutointerpError

EMBEDDINGS = ("embed.W_E", "unembed.W_U", "unembed.b_U")


@pytest.fixture(scope="module")
def trained(tiny_model):
    """The tiny model with every tensor given its own mean and std, as training leaves them (norm gains
    near 1 but not all 1, biases not all 0), so a scheme that used one global mean and std would show."""
    model = copy.deepcopy(tiny_model)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for k, (_, p) in enumerate(sorted(model.named_parameters())):
            mean, std = 0.1 * (k % 7) - 0.3, 0.05 + 0.02 * (k % 5)
            p.copy_(torch.randn(p.shape, generator=gen) * std + mean)
    return model


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_same_stats(name: str, new: torch.Tensor, old: torch.Tensor) -> None:
    n, std = old.numel(), old.double().std().item()
    # 5 standard errors of the sample mean and of the sample std (Gaussian: std / sqrt(2n)).
    assert abs(new.double().mean().item() - old.double().mean().item()) <= 5 * std / math.sqrt(n) + 1e-9, name
    assert abs(new.double().std().item() - std) <= 5 * std / math.sqrt(2 * n) + 1e-9, name


def test_registry_and_config_agree():
    assert set(models.INIT_SCHEMES) == set(RANDOM_INIT_SCHEMES)


@pytest.mark.parametrize("scheme", ["rerandomised", "rerandomised-keep-embeddings"])
def test_rerandomised_tensors_keep_each_trained_tensors_mean_and_std(trained, scheme):
    before = _params(trained)
    fresh = models.random_init_copy(trained, seed=3, scheme=scheme)
    after = _params(fresh)
    assert _params(trained).keys() == before.keys() and all(torch.equal(_params(trained)[n], before[n]) for n in before)
    keep = scheme == "rerandomised-keep-embeddings"
    for name, old in before.items():
        new = after[name]
        assert new.shape == old.shape
        if keep and name.split(".")[0] in models.EMBEDDING_MODULES:
            assert torch.equal(new, old), f"{name} should be the trained tensor"
            continue
        _assert_same_stats(name, new, old)
        # Fresh noise, not the trained values: their correlation is near zero.
        corr = torch.corrcoef(torch.stack([new.flatten(), old.flatten()]))[0, 1].item()
        assert abs(corr) < 0.6, f"{name} looks like the trained tensor (corr {corr:.2f})"
    for name in EMBEDDINGS:  # the norm gains (ln1.w ...) are re-randomised in both schemes
        assert torch.equal(after[name], before[name]) is keep, name
    assert not torch.equal(after["blocks.0.ln1.w"], before["blocks.0.ln1.w"])


def test_init_scheme_is_the_architectures_initialisation(trained):
    fresh = models.random_init_copy(trained, seed=3, scheme="init")
    after = _params(fresh)
    assert not torch.equal(after["embed.W_E"], trained.embed.W_E)
    # TransformerLens initialises RMSNorm gains to exactly 1, whatever the trained ones were.
    assert torch.equal(after["blocks.0.ln1.w"], torch.ones_like(after["blocks.0.ln1.w"]))


@pytest.mark.parametrize("scheme", sorted(RANDOM_INIT_SCHEMES))
def test_same_seed_same_weights_and_the_model_runs(trained, scheme):
    a = _params(models.random_init_copy(trained, seed=5, scheme=scheme))
    b_model = models.random_init_copy(trained, seed=5, scheme=scheme)
    b = _params(b_model)
    c = _params(models.random_init_copy(trained, seed=6, scheme=scheme))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["blocks.0.mlp.W_in"], c["blocks.0.mlp.W_in"])
    tokens = torch.tensor([[trained.tokenizer.bos_token_id, 5, 17, 42, 9]])
    with torch.no_grad():
        logits = b_model(tokens)
    assert logits.shape == (1, 5, trained.cfg.d_vocab) and torch.isfinite(logits).all()
    assert b_model.tokenizer is trained.tokenizer


def test_load_model_passes_the_scheme_through(tiny_model_dir, tiny_model):
    kept = models.load_model(str(tiny_model_dir), random_init=True, seed=1, init_scheme="rerandomised-keep-embeddings")
    redrawn = models.load_model(str(tiny_model_dir), random_init=True, seed=1, init_scheme="rerandomised")
    assert torch.equal(kept.embed.W_E, tiny_model.embed.W_E) and torch.equal(kept.unembed.W_U, tiny_model.unembed.W_U)
    assert not torch.equal(redrawn.embed.W_E, tiny_model.embed.W_E)
    assert not torch.equal(kept.blocks[0].mlp.W_in, tiny_model.blocks[0].mlp.W_in)


def test_unknown_scheme_is_refused(trained):
    with pytest.raises(AutointerpError, match="unknown random-init scheme 'shuffled'"):
        models.random_init_copy(trained, seed=0, scheme="shuffled")


def test_config_validates_the_scheme_and_hashes_it():
    base = {"n_tokens": 1000, "ctx_len": 16}
    with pytest.raises(ValueError, match="unknown init_scheme"):
        CollectConfig(**base, random_init=True, init_scheme="shuffled")
    with pytest.raises(ValueError, match="needs random_init"):
        CollectConfig(**base, init_scheme="rerandomised")
    default = CollectConfig(**base, random_init=True)
    assert "init_scheme" not in default.identity()  # dictionaries collected before the field keep their hash
    hashes = {CollectConfig(**base, random_init=True, init_scheme=s).config_hash() for s in RANDOM_INIT_SCHEMES}
    assert len(hashes) == len(RANDOM_INIT_SCHEMES)
