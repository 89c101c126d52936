"""How much of a feature's role in the model its label accounts for.

On held-out contexts the model runs three ways: clean; with the feature ablated (replaced by its
mean activation, or zero); with the feature replaced by the label's simulated activations,
calibrated to the feature's scale on the calibration split. The behaviour score is the share of
the ablation's damage that the simulation repairs, (L_ablated - L_simulated) / (L_ablated - L_clean)
with L the next-token loss summed over the scored contexts (and the same with KL divergence to the
clean logits). Neurons are replaced at their hook; SAE latents through the SAE's encode / decode
(normalisation and hook_z reshaping honoured), keeping the SAE's error term.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from autointerp import scoring

NO_EFFECT_NATS = 1e-5  # per token: below this the ablation changes nothing measurable


@dataclass(frozen=True)
class ContextLosses:
    """Per-context mean next-token loss (nats per token) and mean KL to the clean logits."""

    clean: np.ndarray  # [n]
    ablated: np.ndarray
    simulated: np.ndarray
    kl_ablated: np.ndarray
    kl_simulated: np.ndarray


def restart_layer(hook: str) -> int | None:
    """The block a patched pass can restart at from the clean residual stream (the hook's own block),
    or None when the whole model must run (embedding hooks, block 0, hooks outside the blocks)."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m and int(m.group(1)) >= 1 else None


class Patcher:
    """Runs a model clean and with one feature's values replaced, sharing the clean prefix of the forward pass.

    Neurons are set at their hook. An SAE latent is set through the SAE's own encode / decode, so its
    input normalisation and hook_z reshaping apply, and its error term stays: the activation becomes
    decode(z with the latent replaced) + (act - decode(z))."""

    def __init__(self, model: Any, hook: str, sae: Any | None = None):
        self.model = model
        self.hook = hook
        self.sae = sae
        self.layer = restart_layer(hook)

    def _replace_hook(self, feature: int, values: torch.Tensor):  # values: [n, T] for positions 1..T
        sae = self.sae

        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            if sae is None:
                flat = act.clone().reshape(act.shape[0], act.shape[1], -1)
                flat[:, 1:, feature] = values.to(act.dtype)
                return flat.reshape(act.shape)
            # Each decode follows its own encode: normalisers keep per-input statistics (layer_norm,
            # constant_norm_rescale) that encode sets and decode consumes.
            z = sae.encode(act)
            error = act - sae.decode(z).to(act.dtype)
            z_new = z.clone()
            z_new[:, 1:, feature] = values.to(z.dtype)
            sae.encode(act)
            return sae.decode(z_new).to(act.dtype) + error

        return fn

    def _clean_resid(self, tokens: torch.Tensor) -> torch.Tensor | None:
        if self.layer is None:
            return None
        name = f"blocks.{self.layer - 1}.hook_resid_post"
        _, cache = self.model.run_with_cache(tokens, names_filter=[name], stop_at_layer=self.layer)
        return cache[name]

    def _run(self, tokens: torch.Tensor, resid: torch.Tensor | None) -> torch.Tensor:
        if resid is None:
            return self.model(tokens)
        return self.model(resid, start_at_layer=self.layer, tokens=tokens)

    @torch.no_grad()
    def patched_logits(self, tokens: torch.Tensor, feature: int, values: torch.Tensor,
                       resid: torch.Tensor | None = None) -> torch.Tensor:
        """Logits with the feature set to `values` ([n, T]) after BOS; `resid` is the clean residual
        stream before the hook's block (computed when not given)."""
        if resid is None:
            resid = self._clean_resid(tokens)
        with self.model.hooks(fwd_hooks=[(self.hook, self._replace_hook(feature, values))]):
            return self._run(tokens, resid)

    @torch.no_grad()
    def losses(self, tokens: torch.Tensor, feature: int, ablate_value: float, simulated: list[torch.Tensor]
               ) -> list[ContextLosses]:
        """tokens: [n, T+1] with BOS; each simulated: [n, T] replacement values on the feature's scale.
        The clean and ablated passes are shared by all the simulations of one feature."""
        resid = self._clean_resid(tokens)  # the patched passes restart at the hook's block from here
        clean_logits = self._run(tokens, resid)

        def patched(values: torch.Tensor) -> torch.Tensor:
            return self.patched_logits(tokens, feature, values, resid)

        targets = tokens[:, 1:].unsqueeze(-1)
        clean_lp = clean_logits[:, :-1].log_softmax(-1)
        clean_p = clean_lp.exp()

        def nll_kl(logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            # One log-softmax over the vocabulary per pass serves both the loss and the KL.
            lp = logits[:, :-1].log_softmax(-1)
            nll = -lp.gather(-1, targets).squeeze(-1).mean(-1)
            kl = (clean_p * (clean_lp - lp)).sum(-1).mean(-1)
            return nll.double().numpy(), kl.double().numpy()

        clean = (-clean_lp.gather(-1, targets).squeeze(-1).mean(-1)).double().numpy()
        ablated_logits = patched(torch.full_like(tokens[:, 1:], 0, dtype=clean_logits.dtype) + ablate_value)
        ablated, kl_ablated = nll_kl(ablated_logits)
        out = []
        for values in simulated:
            sim_nll, sim_kl = nll_kl(patched(values.to(clean_logits.dtype)))
            out.append(ContextLosses(clean, ablated, sim_nll, kl_ablated, sim_kl))
        return out


def behaviour_scores(losses: ContextLosses, n_boot: int = 1000, seed: int = 0) -> list[tuple[scoring.Score, str | None]]:
    """'behaviour', 'behaviour_kl' and 'ablation_effect' (nats per token), each with a note when undefined."""
    n = len(losses.clean)
    damage = losses.ablated - losses.clean
    repaired = losses.ablated - losses.simulated
    effect = float(damage.mean()) if n else float("nan")
    kl_damage = losses.kl_ablated
    out: list[tuple[scoring.Score, str | None]] = []
    lo, hi = scoring.ratio_ci(damage, np.ones_like(damage), n_boot, seed)
    out.append((scoring.Score("ablation_effect", effect, n, lo, hi), None))
    if n == 0 or abs(damage.sum()) < NO_EFFECT_NATS * n:
        note = f"no effect: ablating the feature changes the loss by {effect:.2g} nats/token"
        out.append((scoring.Score("behaviour", float("nan"), n, float("nan"), float("nan")), note))
    else:
        value = float(repaired.sum() / damage.sum())
        out.append((scoring.Score("behaviour", value, n, *scoring.ratio_ci(repaired, damage, n_boot, seed)), None))
    if n == 0 or kl_damage.sum() < NO_EFFECT_NATS * n:
        note = "no effect: ablating the feature leaves the logits unchanged"
        out.append((scoring.Score("behaviour_kl", float("nan"), n, float("nan"), float("nan")), note))
    else:
        kl_repaired = losses.kl_ablated - losses.kl_simulated
        value = float(kl_repaired.sum() / kl_damage.sum())
        out.append((scoring.Score("behaviour_kl", value, n, *scoring.ratio_ci(kl_repaired, kl_damage, n_boot, seed)), None))
    return out
