"""Random-init copies of a model (the control every score is compared with), by scheme."""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable

import torch
from transformer_lens import HookedTransformer

from autointerp.errors import BadInput


def _architecture_init(model: HookedTransformer, seed: int) -> HookedTransformer:
    cfg = dataclasses.replace(model.cfg, seed=seed, init_weights=True)
    torch.manual_seed(seed)
    fresh = HookedTransformer(cfg, tokenizer=model.tokenizer, move_to_device=False)  # drawn on the CPU: any device
    if torch.device(cfg.device or "cpu").type != "cpu":  # gets the same weights
        fresh.move_model_modules_to_device()
    return fresh


# Heap et al.'s code treats every parameter whose name contains "embed" as an embedding; in
# TransformerLens those are the token embedding, the learned positions and the unembedding.
EMBEDDING_MODULES = ("embed", "pos_embed", "unembed")


def _rerandomised(model: HookedTransformer, seed: int, keep_embeddings: bool) -> HookedTransformer:
    fresh = copy.deepcopy(model, memo={id(model.tokenizer): model.tokenizer})  # share the tokenizer
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in fresh.named_parameters():  # a fixed order: the same seed gives the same weights
            if keep_embeddings and name.split(".")[0] in EMBEDDING_MODULES:
                continue
            trained = p.detach().double()
            mean = trained.mean().cpu()
            std = trained.std().cpu() if trained.numel() > 1 else torch.zeros((), dtype=torch.float64)
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.copy_((noise * std + mean).to(p.dtype))
    return fresh


INIT_SCHEMES: dict[str, Callable[[HookedTransformer, int], HookedTransformer]] = {
    "init": _architecture_init,
    "rerandomised": functools.partial(_rerandomised, keep_embeddings=False),
    "rerandomised-keep-embeddings": functools.partial(_rerandomised, keep_embeddings=True),
}


def random_init_copy(model: HookedTransformer, seed: int, scheme: str = "init") -> HookedTransformer:
    """Same config and tokenizer, random weights made by `scheme` with `seed` (the model is not changed).

    The schemes (config.RANDOM_INIT_SCHEMES; Heap et al. 2025, arXiv 2501.17727, "Sparse
    Autoencoders Can Interpret Randomly Initialized Transformers"):

    - ``init``: the architecture's initialisation as TransformerLens implements it (the role of the
      paper's "Step-0" model, Pythia's checkpoint before training, for models without such a checkpoint).
    - ``rerandomised`` (the paper's re-randomised model, embeddings included): every parameter tensor
      replaced by i.i.d. Gaussian noise with that tensor's trained mean and standard deviation, so each
      tensor keeps its scale and offset but none of its structure.
    - ``rerandomised-keep-embeddings`` (re-randomised, embeddings excluded): the same, except the token
      embedding W_E, learned positions W_pos (if any) and the unembedding W_U, b_U stay the trained ones,
      as in the paper's code, which skips every parameter named "embed" (Pythia's embed_in and embed_out).

    Norm layers: LayerNorm / RMSNorm gains and biases are re-randomised like every other tensor, with
    their own trained mean and std (the paper's code re-randomises layer norms by default and its
    training script keeps that default); a gain of trained mean 1.1 and std 0.05 stays near 1.1.
    A one-element tensor has no std and gets its trained value. Buffers (masks, rotary tables) are
    not parameters and are kept.
    """
    try:
        build = INIT_SCHEMES[scheme]
    except KeyError:
        raise BadInput(f"unknown random-init scheme '{scheme}'; known: {', '.join(INIT_SCHEMES)}") from None
    fresh = build(model, seed)
    fresh.eval()
    return fresh
