"""Behaviour patching against a full forward pass with the same edit: at embedding hooks, restarted from
the residual stream at a middle layer, and for SAE latents (with input normalisation, and at hook_z)
against a reference SAE written out here from SAELens's definitions, the error term kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from autointerp.behaviour import patcher as behaviour
from tests.helpers import make_tokenizer

TOL = 1e-5


@pytest.fixture(scope="module")
def gpt2_like(tmp_path_factory):
    """Three layers with learned positional embeddings (hook_pos_embed exists) and LayerNorm."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("tok")
    make_tokenizer().save_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    cfg = HookedTransformerConfig(n_layers=3, d_model=32, d_mlp=64, n_heads=4, d_head=8, d_vocab=len(tok), n_ctx=64,
                                  act_fn="gelu", normalization_type="LN", seed=1)
    model = HookedTransformer(cfg, tokenizer=tok)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model.eval()


def tokens_for(model, n: int = 3, length: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, model.cfg.d_vocab, (n, length), generator=g)
    return torch.cat([torch.full((n, 1), model.tokenizer.bos_token_id), ids], 1)


def values_for(tokens: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(tokens.shape[0], tokens.shape[1] - 1, generator=g) * 3.0


def full_forward(model, tokens: torch.Tensor, hook: str, edit) -> torch.Tensor:
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda act, hook: edit(act))])


def set_neuron(feature: int, values: torch.Tensor):
    def edit(act: torch.Tensor) -> torch.Tensor:
        flat = act.clone().reshape(act.shape[0], act.shape[1], -1)
        flat[:, 1:, feature] = values
        return flat.reshape(act.shape)

    return edit


@pytest.mark.parametrize("hook", ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre",
                                  "blocks.1.mlp.hook_post", "blocks.2.hook_resid_pre", "blocks.1.attn.hook_z"])
def test_a_neuron_patch_equals_a_full_forward_with_the_same_hook(gpt2_like, hook):
    model = gpt2_like
    tokens, feature = tokens_for(model), 5
    values = values_for(tokens)
    patcher = behaviour.Patcher(model, hook)
    restarts = hook.startswith(("blocks.1.", "blocks.2."))
    assert (patcher.layer is not None) == restarts
    got = patcher.patched_logits(tokens, feature, values)
    want = full_forward(model, tokens, hook, set_neuron(feature, values))
    clean = full_forward(model, tokens, hook, lambda a: a)
    assert (want - clean).abs().max() > 1e-3, "the edit must change the logits for this test to mean anything"
    assert (got - want).abs().max() < TOL
    # And the losses run end to end at this hook (the embedding hooks used to crash).
    (losses,) = patcher.losses(tokens, feature, 0.0, [values])
    assert losses.simulated.shape == (tokens.shape[0],)


def test_a_neuron_patch_in_a_middle_layer_of_a_rotary_model_restarts_correctly(tiny_model):
    tokens, feature, hook = tokens_for(tiny_model), 7, "blocks.1.mlp.hook_post"
    values = values_for(tokens)
    patcher = behaviour.Patcher(tiny_model, hook)
    assert patcher.layer == 1
    got = patcher.patched_logits(tokens, feature, values)
    assert (got - full_forward(tiny_model, tokens, hook, set_neuron(feature, values))).abs().max() < TOL


# ---------------------------------------------------------------- SAEs


def make_sae(hook: str, d_in: int, normalize: str = "none", hook_z: bool = False, d_sae: int = 48, seed: int = 0):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, normalize_activations=normalize,  # type: ignore[arg-type]
                            reshape_activations="hook_z" if hook_z else "none",
                            metadata=SAEMetadata(hook_name=hook, model_name="tiny"))
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
        sae.W_dec.normal_(0, 0.5)
        sae.b_enc.fill_(-0.1)
        sae.b_dec.normal_(0, 0.3)
    return sae.eval()


def reference_splice(sae, normalize: str, feature: int, values: torch.Tensor):
    """The activation replaced by decode(z with the latent set) + (act - decode(z)), written out from
    SAELens's definitions of its normalisers and of hook_z flattening, without calling the SAE."""
    W_enc, b_enc, W_dec, b_dec = (sae.W_enc.detach(), sae.b_enc.detach(), sae.W_dec.detach(), sae.b_dec.detach())

    def edit(act: torch.Tensor) -> torch.Tensor:
        x = act.reshape(act.shape[0], act.shape[1], -1)  # hook_z: (heads, d_head) -> heads * d_head
        if normalize == "layer_norm":
            mu = x.mean(-1, keepdim=True)
            std = (x - mu).std(-1, keepdim=True)
            xn, undo = (x - mu) / (std + 1e-5), (lambda y: y * std + mu)
        elif normalize == "constant_norm_rescale":
            c = x.shape[-1] ** 0.5 / x.norm(dim=-1, keepdim=True)
            xn, undo = x * c, (lambda y: y / c)
        else:
            xn, undo = x, (lambda y: y)
        z = torch.relu((xn - b_dec) @ W_enc + b_enc)

        def decode(z: torch.Tensor) -> torch.Tensor:
            return undo(z @ W_dec + b_dec)

        z_new = z.clone()
        z_new[:, 1:, feature] = values
        return (decode(z_new) + (x - decode(z))).reshape(act.shape)

    return edit


def raw_decoder_row_patch(sae, feature: int, values: torch.Tensor):
    """What the patcher did before: (new - old) x the raw decoder row added to the activation."""

    def edit(act: torch.Tensor) -> torch.Tensor:
        current = sae.encode(act)[:, 1:, feature]
        flat = act.clone().reshape(act.shape[0], act.shape[1], -1)
        flat[:, 1:] += (values - current).unsqueeze(-1) * sae.W_dec[feature].detach()
        return flat.reshape(act.shape)

    return edit


@pytest.mark.parametrize(("hook", "normalize"), [
    ("blocks.1.hook_resid_pre", "none"),
    ("blocks.1.hook_resid_pre", "layer_norm"),
    ("blocks.1.hook_resid_pre", "constant_norm_rescale"),
    ("blocks.0.hook_resid_pre", "layer_norm"),
    ("blocks.1.attn.hook_z", "none"),
    ("blocks.1.attn.hook_z", "layer_norm"),
])
def test_an_sae_patch_equals_a_full_forward_with_the_sae_spliced_in(tiny_model, hook, normalize):
    model = tiny_model
    hook_z = hook.endswith("hook_z")
    d_in = model.cfg.n_heads * model.cfg.d_head if hook_z else model.cfg.d_model
    sae = make_sae(hook, d_in, normalize, hook_z)
    tokens = tokens_for(model)
    values = values_for(tokens)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
        z = sae.encode(cache[hook])
    feature = int(z[:, 1:].gt(0).float().mean((0, 1)).argmax())  # an active latent: the edit matters
    ref = reference_splice(sae, normalize, feature, values)
    # The reference reads the same latents as SAELens does.
    with torch.no_grad():
        identity = reference_splice(sae, normalize, feature, z[:, 1:, feature])(cache[hook])
    assert (identity - cache[hook]).abs().max() < TOL
    want = full_forward(model, tokens, hook, ref)
    got = behaviour.Patcher(model, hook, sae).patched_logits(tokens, feature, values)
    assert (want - full_forward(model, tokens, hook, lambda a: a)).abs().max() > 1e-3
    assert (got - want).abs().max() < TOL
    if normalize != "none":
        # The raw decoder row ignores the normaliser: measurably wrong, so this test can fail for that bug.
        old = full_forward(model, tokens, hook, raw_decoder_row_patch(sae, feature, values))
        assert (old - want).abs().max() > 1e-3


# ---------------------------------------------------------------- several features in one batch


def reference_losses(model, hook: str, job: behaviour.PatchJob, make_edit) -> list[behaviour.ContextLosses]:
    """Each context alone (no padding, no restart, no batch): full forward passes, clean and with the edit."""

    def run(values_of) -> tuple[np.ndarray, np.ndarray]:  # per context: mean loss, mean KL to the clean logits
        nll, kl = [], []
        for k, t in enumerate(job.tokens):
            tokens = torch.as_tensor(t)[None]
            clean = full_forward(model, tokens, hook, lambda a: a)[0, :-1].log_softmax(-1)
            edit = (lambda a: a) if values_of is None else make_edit(job.feature, values_of(k)[None])
            lp = full_forward(model, tokens, hook, edit)[0, :-1].log_softmax(-1)
            nll.append(float(-lp.gather(-1, tokens[0, 1:, None]).mean()))
            kl.append(float((clean.exp() * (clean - lp)).sum(-1).mean()))
        return np.array(nll), np.array(kl)

    clean, _ = run(None)
    ablated, kl_ablated = run(lambda k: torch.full((len(job.tokens[k]) - 1,), job.ablate_value))
    out = []
    for sim in job.simulated:
        simulated, kl_simulated = run(lambda k, sim=sim: torch.as_tensor(sim[k]))
        out.append(behaviour.ContextLosses(clean, ablated, simulated, kl_ablated, kl_simulated))
    return out


def ragged_jobs(model, seed: int = 0) -> list[behaviour.PatchJob]:
    """Three features over contexts of different lengths, sharing a context (as features share their random
    contexts), one of them twice (two groups of runs), with one to three simulations each, all different."""
    g = torch.Generator().manual_seed(seed)
    bos = model.tokenizer.bos_token_id

    def context(length: int) -> np.ndarray:
        return np.array([bos, *torch.randint(1, model.cfg.d_vocab, (length,), generator=g).tolist()])

    def sim(ctxs) -> list[np.ndarray]:
        return [(torch.rand(len(t) - 1, generator=g) * 3.0).numpy() for t in ctxs]

    shared = context(9)
    a, b, c, d = ([context(12), shared, context(5)], [shared, context(14)], [context(7), context(11), context(3)],
                  [context(10), shared])
    return [behaviour.PatchJob(5, a, 0.1, [sim(a), sim(a)]),
            behaviour.PatchJob(7, b, 0.4, [sim(b)]),
            behaviour.PatchJob(5, c, 0.0, [sim(c), sim(c)]),  # a feature's second group of runs
            behaviour.PatchJob(11, d, 0.2, [sim(d), sim(d), sim(d)])]


FIELDS = ("clean", "ablated", "simulated", "kl_ablated", "kl_simulated")


def assert_same(got: list[behaviour.ContextLosses], want: list[behaviour.ContextLosses], tol: float = TOL) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for name in FIELDS:
            assert getattr(g, name).shape == getattr(w, name).shape
            assert np.abs(getattr(g, name) - getattr(w, name)).max() < tol, name


@pytest.mark.parametrize("hook", ["blocks.1.mlp.hook_post", "blocks.0.mlp.hook_post", "blocks.1.hook_resid_pre"])
def test_features_batched_together_equal_each_feature_alone(tiny_model, hook):
    patcher = behaviour.Patcher(tiny_model, hook)
    jobs = ragged_jobs(tiny_model)
    batched = patcher.batch_losses(jobs)
    alone = [patcher.batch_losses([job])[0] for job in jobs]
    for got, want, job in zip(batched, alone, jobs, strict=True):
        assert_same(got, want)
        # Against each context run alone with a full forward pass: no padding, no restart, no batch.
        assert_same(got, reference_losses(tiny_model, hook, job, set_neuron))
    # The composition of the batch does not matter: reversed, and with the other features' order changed.
    for got, want in zip(patcher.batch_losses(jobs[::-1])[::-1], batched, strict=True):
        assert_same(got, want)
    # The test can fail for swapped rows: the features' simulations give measurably different losses.
    sims = [s.simulated for per_job in batched for s in per_job]
    assert min(np.abs(x - y).max() for i, x in enumerate(sims) for y in sims[i + 1:] if x.shape == y.shape) > 1e-3
    assert all(np.abs(s.ablated - s.simulated).max() > 1e-3 for per_job in batched for s in per_job)


def test_sae_latents_batched_together_equal_each_latent_alone(tiny_model):
    hook = "blocks.1.hook_resid_pre"
    sae = make_sae(hook, tiny_model.cfg.d_model, "layer_norm")
    patcher = behaviour.Patcher(tiny_model, hook, sae)
    jobs = ragged_jobs(tiny_model, seed=3)
    for got, job in zip(patcher.batch_losses(jobs), jobs, strict=True):
        assert_same(got, patcher.batch_losses([job])[0])
        assert_same(got, reference_losses(tiny_model, hook, job,
                                          lambda f, v: reference_splice(sae, "layer_norm", f, v)))


def test_the_old_one_feature_entry_point_is_the_batch_of_one(gpt2_like):
    tokens, hook = tokens_for(gpt2_like, n=4), "blocks.1.mlp.hook_post"
    values = [values_for(tokens, seed=s) for s in (1, 2)]
    patcher = behaviour.Patcher(gpt2_like, hook)
    job = behaviour.PatchJob(5, list(tokens.numpy()), 0.2, [list(v.numpy()) for v in values])
    assert_same(patcher.losses(tokens, 5, 0.2, values), reference_losses(gpt2_like, hook, job, set_neuron))
