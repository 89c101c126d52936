"""Output-side evidence: the tokens a feature promotes and suppresses through the unembedding (Gur-Arieh et
al. 2025): W_out·W_U for MLP neurons (at `mlp.hook_post`), W_dec·W_U for SAE latents (through W_out when the
SAE reads an MLP's hook_post), W_U for residual-stream directions. The final layer norm is left out (a
direct-logit view, as the logit lens reads it): the ranks are what the explainer is shown, not exact logits."""

from __future__ import annotations

import re
from typing import Any

import torch
from jaxtyping import Float
from transformer_lens import HookedTransformer

TokenValues = list[tuple[int, float]]


def _to_residual(model: HookedTransformer, hook: str) -> Float[torch.Tensor, "width d_model"] | None:
    """The matrix taking the hook's space to the residual stream, or None when there is no such linear map."""
    if re.fullmatch(r"blocks\.\d+\.hook_resid_(pre|mid|post)", hook):
        return torch.eye(model.cfg.d_model, device=model.W_U.device, dtype=model.W_U.dtype)
    m = re.fullmatch(r"blocks\.(\d+)\.mlp\.hook_post", hook)
    if m:
        return model.blocks[int(m.group(1))].mlp.W_out
    return None


def supports_output_tokens(model: HookedTransformer, hook: str) -> bool:
    return _to_residual(model, hook) is not None


@torch.no_grad()
def output_tokens(model: HookedTransformer, hook: str, sae: Any | None, features: list[int], k: int = 10,
                  chunk: int = 256) -> dict[int, tuple[TokenValues, TokenValues]]:
    """For each feature: its `k` most promoted and `k` most suppressed token ids with their direct-logit
    values (the unembedding of its output direction). Empty when the hook has no linear path to the
    residual stream (see `supports_output_tokens`)."""
    to_resid = _to_residual(model, hook)
    if to_resid is None:
        return {}
    out: dict[int, tuple[TokenValues, TokenValues]] = {}
    for i in range(0, len(features), chunk):
        part = features[i : i + chunk]
        idx = torch.tensor(part, device=to_resid.device)
        directions = sae.W_dec[idx].to(to_resid.dtype) if sae is not None else torch.eye(
            to_resid.shape[0], device=to_resid.device, dtype=to_resid.dtype)[idx]
        logits = directions @ to_resid @ model.W_U  # [features, vocab]
        top, bottom = logits.topk(k, dim=-1), (-logits).topk(k, dim=-1)
        for j, f in enumerate(part):
            out[f] = ([(int(t), float(v)) for t, v in zip(top.indices[j], top.values[j], strict=True)],
                      [(int(t), -float(v)) for t, v in zip(bottom.indices[j], bottom.values[j], strict=True)])
    return out
