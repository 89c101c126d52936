"""The feature reader: neurons at a hook, or SAE latents of the hook's activations, read out of a
model with the forward pass stopped after the hook."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer

from autointerp.errors import BadInput


def stop_layer(hook: str, n_layers: int) -> int | None:
    """The layer to stop the forward pass at: nothing after the hook is computed."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    if m:
        return int(m.group(1)) + 1
    if hook in ("hook_embed", "hook_pos_embed", "hook_tokens"):
        return 0
    return None


@dataclass
class FeatureReader:
    """Reads feature activations out of a model: neurons at a hook, or SAE latents of the hook's activations."""

    model: HookedTransformer
    hook: str
    sae: Any | None = None
    start: int = 0
    stop: int | None = None
    # A TopK SAE's latents as a sparse COO tensor (see `_sparse_topk`): the collector's choice, since it wants only
    # the nonzero entries; every other reader, and every other kind of SAE, gives the dense tensor.
    sparse: bool = False
    width: int = field(init=False, default=0)  # features the hook or SAE has in all, [start, stop) among them

    def __post_init__(self) -> None:
        if self.hook not in self.model.hook_dict:
            near = [h for h in self.model.hook_dict if h.split(".")[-1] == self.hook.split(".")[-1]][:5]
            hint = f" (e.g. {', '.join(near)})" if near else ""
            raise BadInput(f"unknown hook '{self.hook}' for this model{hint}; see model.hook_dict")
        self._stop_at = stop_layer(self.hook, self.model.cfg.n_layers)
        width = self._raw_width()
        if self.sae is not None and int(self.sae.cfg.d_in) != width:
            raise BadInput(
                f"the SAE reads d_in={self.sae.cfg.d_in} values but hook '{self.hook}' gives {width}: "
                "wrong SAE for this hook or model"
            )
        full = int(self.sae.cfg.d_sae) if self.sae is not None else width
        self.width = full
        if self.stop is None:
            self.stop = full
        if not (0 <= self.start < self.stop <= full):
            raise BadInput(f"features {self.start}:{self.stop} outside 0:{full}")

    @property
    def kind(self) -> str:
        return "neurons" if self.sae is None else "sae"

    @property
    def n_features(self) -> int:
        assert self.stop is not None
        return self.stop - self.start

    def _hook_acts(self, tokens: Int[torch.Tensor, "batch pos"]) -> torch.Tensor:
        captured: dict[str, torch.Tensor] = {}

        def grab(act: torch.Tensor, hook: Any) -> None:
            captured["x"] = act

        with torch.no_grad(), self.model.hooks(fwd_hooks=[(self.hook, grab)]):
            self.model(tokens, stop_at_layer=self._stop_at)
        return captured["x"]

    def _raw_width(self) -> int:
        x = self._hook_acts(torch.zeros((1, 2), dtype=torch.long))
        return int(x.reshape(x.shape[0], x.shape[1], -1).shape[-1])

    def __call__(self, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos feature"]:
        x = self._hook_acts(tokens)
        if self.sae is not None:
            with torch.no_grad():
                if self.sparse and _sparse_capable(self.sae):
                    x = self._sparse_topk(x)
                    if x.is_sparse:
                        return x
                else:
                    x = self.sae.encode(x)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        return x[..., self.start : self.stop].float()

    def _sparse_topk(self, x: torch.Tensor) -> torch.Tensor:
        """The TopK SAE's latents as a coalesced sparse COO tensor [batch, pos, feature] holding the dense tensor's
        nonzero entries, in its order and with its values: SAELens's own sparse TopK output (the same top-k values
        after ReLU, never scattered into a dense [batch, pos, d_sae] of zeros), without the zeros ReLU leaves and
        the latents outside [start, stop). A NaN among the values gives the whole dense output instead.
        The SAE's activation is switched to sparse for this call only: no other thread may encode with this SAE
        meanwhile (collection loads its own)."""
        assert self.stop is not None and self.sae is not None
        sae = self.sae
        fn = sae.activation_fn
        fn.use_sparse_activations = True
        try:
            with torch.sparse.check_sparse_tensor_invariants(False):  # SAELens builds valid indices; no check per batch
                coo = sae.encode(x)
        finally:
            fn.use_sparse_activations = False
        idx, vals = coo._indices(), coo._values()
        if bool(vals.isnan().any()):
            return coo.to_dense()  # the encode's dense output, for __call__ to cut as the dense path does
        keep = vals > 0
        if self.start or self.stop < self.width:
            keep &= (idx[-1] >= self.start) & (idx[-1] < self.stop)
        idx, vals = idx[:, keep], vals[keep].float()
        idx[-1] -= self.start
        shape = (*coo.shape[:-1], self.stop - self.start)
        return torch.sparse_coo_tensor(idx, vals, shape, check_invariants=False).coalesce()


def _sparse_capable(sae: Any) -> bool:
    """A TopK SAE whose activation can give its output as a sparse tensor (SAELens's TopK, use_sparse_activations)."""
    from sae_lens import TopKSAE
    from sae_lens.saes.topk_sae import TopK

    return isinstance(sae, TopKSAE) and isinstance(sae.activation_fn, TopK) and \
        hasattr(sae.activation_fn, "use_sparse_activations")


FeatureFn = Callable[[torch.Tensor], torch.Tensor]
