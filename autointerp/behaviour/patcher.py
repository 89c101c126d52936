"""How much of a feature's role in the model its label accounts for.

On held-out contexts the model runs three ways: clean; with the feature ablated (replaced by its
mean activation, or zero); with the feature replaced by the label's simulated activations,
calibrated to the feature's scale on the calibration split. The behaviour score is the share of
the ablation's damage that the simulation repairs. The headline measures damage as the KL divergence
from the clean next-token distribution, 1 - KL(clean||simulated) / KL(clean||ablated) pooled over the
scored contexts: never negative, so its denominator never changes sign. The loss form,
(L_ablated - L_simulated) / (L_ablated - L_clean), is kept where the loss damage is reliably positive. Neurons are replaced at their hook; SAE latents through the SAE's encode / decode
(normalisation and hook_z reshaping honoured), keeping the SAE's error term.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from autointerp.behaviour import RESOLVED_CI_WIDTH
from autointerp.label import scoring

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


@dataclass(frozen=True)
class PatchJob:
    """One feature's scored contexts and the values it is set to on them: `tokens`, per context its token ids
    with BOS first (contexts may differ in length); `ablate_value`; `simulated`, per simulation and context
    the replacement values of the positions after BOS (on the feature's scale)."""

    feature: int
    tokens: Sequence[np.ndarray]
    ablate_value: float
    simulated: Sequence[Sequence[np.ndarray]]


class Patcher:
    """Runs a model clean and with features' values replaced, sharing the clean prefix of the forward pass.

    Neurons are set at their hook. An SAE latent is set through the SAE's own encode / decode, so its
    input normalisation and hook_z reshaping apply, and its error term stays: the activation becomes
    decode(z with the latent replaced) + (act - decode(z))."""

    def __init__(self, model: Any, hook: str, sae: Any | None = None):
        self.model = model
        self.hook = hook
        self.sae = sae
        self.layer = restart_layer(hook)
        self.device = torch.device(model.cfg.device or "cpu")

    def _replace_hook(self, features: torch.Tensor, values: torch.Tensor):
        """features: [n], the feature each row replaces; values: [n, T] for positions 1..T."""
        sae = self.sae
        rows = torch.arange(len(features), device=features.device)[:, None]
        pos = torch.arange(1, values.shape[1] + 1, device=features.device)[None, :]
        cols = features[:, None]

        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            if sae is None:
                flat = act.clone().reshape(act.shape[0], act.shape[1], -1)
                flat[rows, pos, cols] = values.to(act.dtype)
                return flat.reshape(act.shape)
            # Each decode follows its own encode: normalisers keep per-input statistics (layer_norm,
            # constant_norm_rescale) that encode sets and decode consumes.
            z = sae.encode(act)
            error = act - sae.decode(z).to(act.dtype)
            z_new = z.clone()
            z_new[rows, pos, cols] = values.to(z.dtype)
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

    def _patched(self, tokens: torch.Tensor, resid: torch.Tensor | None, features: torch.Tensor,
                 values: torch.Tensor) -> torch.Tensor:
        with self.model.hooks(fwd_hooks=[(self.hook, self._replace_hook(features, values))]):
            return self._run(tokens, resid)

    @torch.no_grad()
    def patched_logits(self, tokens: torch.Tensor, feature: int, values: torch.Tensor,
                       resid: torch.Tensor | None = None) -> torch.Tensor:
        """Logits with the feature set to `values` ([n, T]) after BOS; `resid` is the clean residual
        stream before the hook's block (computed when not given)."""
        tokens = tokens.to(self.device)
        if resid is None:
            resid = self._clean_resid(tokens)
        features = torch.full((len(tokens),), feature, dtype=torch.long, device=self.device)
        return self._patched(tokens, resid, features, values.to(self.device))

    @torch.no_grad()
    def losses(self, tokens: torch.Tensor, feature: int, ablate_value: float, simulated: list[torch.Tensor]
               ) -> list[ContextLosses]:
        """tokens: [n, T+1] with BOS; each simulated: [n, T] replacement values on the feature's scale.
        The clean and ablated passes are shared by all the simulations of one feature."""
        rows = list(tokens.cpu().numpy())
        sims = [list(v.detach().cpu().float().numpy()) for v in simulated]
        return self.batch_losses([PatchJob(feature, rows, ablate_value, sims)])[0]

    def _distinct_contexts(self, jobs: Sequence[PatchJob], pad_id: int
                           ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The jobs' distinct contexts right-padded into one [U, width] batch on the device, each job's rows
        in it, and each context's length: the clean pass runs each distinct context once (features share
        their random contexts)."""
        where: dict[bytes, int] = {}
        uniq: list[np.ndarray] = []
        rows_of: list[torch.Tensor] = []
        for job in jobs:
            idx = []
            for t in job.tokens:
                t = np.asarray(t, dtype=np.int64)
                idx.append(where.setdefault(t.tobytes(), len(uniq)))
                if idx[-1] == len(uniq):
                    uniq.append(t)
            rows_of.append(torch.tensor(idx, dtype=torch.long, device=self.device))
        lengths = torch.tensor([len(t) for t in uniq], device=self.device)
        tokens = torch.full((len(uniq), int(lengths.max())), pad_id, dtype=torch.long)
        for i, t in enumerate(uniq):
            tokens[i, :len(t)] = torch.from_numpy(t)
        return tokens.to(self.device), rows_of, lengths

    @torch.no_grad()
    def batch_losses(self, jobs: Sequence[PatchJob], pad_id: int = 0) -> list[list[ContextLosses]]:
        """Per job, per simulation, the context losses: what `losses` gives for each job alone, computed with
        all the jobs in one batch. One clean pass over the distinct contexts of all jobs (its residual stream
        kept at the hook's block), then one patched pass per replacement index (the ablation, then each
        job's first, second, ... simulation), each over the rows of every job that has it, restarting at
        the hook's block. Contexts are right-padded with `pad_id`: a causal model's real positions never
        see the padding, and the losses average over each context's own positions only."""
        if not jobs:
            return []
        tokens, rows_of, lengths = self._distinct_contexts(jobs, pad_id)
        width = tokens.shape[1]
        n_pred = lengths - 1  # predicted positions per context: every token after BOS
        real = torch.arange(width - 1, device=self.device)[None, :] < n_pred[:, None]  # [U, width-1]
        targets = tokens[:, 1:].unsqueeze(-1)

        resid = self._clean_resid(tokens)  # the patched passes restart at the hook's block from here
        clean_lp = self._run(tokens, resid)[:, :-1].float().log_softmax(-1)

        def row_mean(x: torch.Tensor, rows: torch.Tensor) -> np.ndarray:  # x: [n, width-1] per position
            x = torch.where(real[rows], x, torch.zeros_like(x))
            return (x.sum(-1) / n_pred[rows]).double().cpu().numpy()

        clean_all = -clean_lp.gather(-1, targets).squeeze(-1)
        clean = [row_mean(clean_all[r], r) for r in rows_of]
        n_passes = 1 + max(len(job.simulated) for job in jobs)
        nll: list[list[np.ndarray]] = [[] for _ in jobs]
        kl: list[list[np.ndarray]] = [[] for _ in jobs]
        for j in range(n_passes):
            members = [f for f, job in enumerate(jobs) if j <= len(job.simulated)]
            rows = torch.cat([rows_of[f] for f in members])
            features = torch.cat([torch.full_like(rows_of[f], jobs[f].feature) for f in members])
            values = _pass_values([jobs[f] for f in members], j, len(rows), width - 1)
            logits = self._patched(tokens[rows], None if resid is None else resid[rows], features,
                                   values.to(self.device))
            lp = logits[:, :-1].float().log_softmax(-1)
            del logits
            start = 0
            for f in members:
                r = rows_of[f]
                seg = lp[start:start + len(r)]
                start += len(r)
                # One log-softmax over the vocabulary per pass serves both the loss and the KL.
                c_lp = clean_lp[r]
                nll[f].append(row_mean(-seg.gather(-1, targets[r]).squeeze(-1), r))
                kl[f].append(row_mean((c_lp.exp() * (c_lp - seg)).sum(-1), r))
            del lp
        return [[ContextLosses(clean[f], nll[f][0], nll[f][s], kl[f][0], kl[f][s])
                 for s in range(1, len(job.simulated) + 1)] for f, job in enumerate(jobs)]


Scored = tuple[scoring.Score, str | None]


def _undefined(method: str, n: int, note: str) -> Scored:
    return scoring.Score(method, float("nan"), n, float("nan"), float("nan")), note


def _share(method: str, repaired: np.ndarray, damage: np.ndarray, n_boot: int, seed: int) -> Scored:
    value = float(repaired.sum() / damage.sum())
    return scoring.Score(method, value, len(damage), *scoring.ratio_ci(repaired, damage, n_boot, seed)), None


def _resolved(headline: scoring.Score) -> Scored:
    """1 when the headline's CI is narrower than RESOLVED_CI_WIDTH, 0 when wider, undefined with it."""
    width = headline.ci_high - headline.ci_low
    if not np.isfinite(width):
        return _undefined("behaviour_resolved", headline.n_examples, "no CI: the behaviour score is undefined")
    return (scoring.Score("behaviour_resolved", float(width < RESOLVED_CI_WIDTH), headline.n_examples,
                          float("nan"), float("nan")),
            f"CI width {width:.3g} against the bound {RESOLVED_CI_WIDTH}")


def behaviour_scores(losses: ContextLosses, n_boot: int = 1000, seed: int = 0) -> list[Scored]:
    """The behaviour stage's scores of one simulation, each with a note when undefined:
    - 'behaviour', the headline: the share of the ablation's KL divergence from the clean next-token
      distribution that the simulation removes, 1 - sum KL(clean||simulated) / sum KL(clean||ablated);
    - 'behaviour_resolved': 1 when its 95% CI is narrower than RESOLVED_CI_WIDTH, else 0;
    - 'behaviour_loss': the same share of the next-token loss, (L_ablated - L_simulated) / (L_ablated - L_clean),
      defined only where the ablation's loss damage has a CI above 0 (else the ratio's sign is noise);
    - 'ablation_effect' (loss damage) and 'ablation_kl' (KL damage), nats per token, with their CIs."""
    n = len(losses.clean)
    damage = losses.ablated - losses.clean
    kl_damage = losses.kl_ablated
    effect_ci = scoring.ratio_ci(damage, np.ones_like(damage), n_boot, seed)
    out: list[Scored] = [
        (scoring.Score("ablation_effect", float(damage.mean()) if n else float("nan"), n, *effect_ci), None),
        (scoring.Score("ablation_kl", float(kl_damage.mean()) if n else float("nan"), n,
                       *scoring.ratio_ci(kl_damage, np.ones_like(kl_damage), n_boot, seed)), None)]
    if n == 0 or kl_damage.sum() < NO_EFFECT_NATS * n:
        out.append(_undefined("behaviour", n, "no effect: ablating the feature leaves the logits unchanged"))
    else:
        out.append(_share("behaviour", kl_damage - losses.kl_simulated, kl_damage, n_boot, seed))
    out.append(_resolved(out[-1][0]))
    if n == 0 or abs(damage.sum()) < NO_EFFECT_NATS * n:
        out.append(_undefined("behaviour_loss", n, f"no effect: ablating the feature changes the loss by "
                              f"{float(damage.mean()) if n else 0.0:.2g} nats/token"))
    elif not effect_ci[0] > 0:
        out.append(_undefined("behaviour_loss", n, f"loss damage {damage.mean():.2g} nats/token, 95% CI "
                              f"[{effect_ci[0]:.2g}, {effect_ci[1]:.2g}] does not exclude 0"))
    else:
        out.append(_share("behaviour_loss", losses.ablated - losses.simulated, damage, n_boot, seed))
    return out


def _pass_values(members: Sequence[PatchJob], j: int, n_rows: int, width: int) -> torch.Tensor:
    """The values the feature takes in patched pass j over the members' rows, in order: pass 0 the
    ablation, pass j > 0 each member's j-th simulation (one value per token after BOS)."""
    values = torch.zeros(n_rows, width)
    start = 0
    for job in members:
        for k, t in enumerate(job.tokens):
            if j == 0:
                values[start + k] = job.ablate_value
            else:
                v = np.asarray(job.simulated[j - 1][k], dtype=np.float32)
                if len(v) != len(t) - 1:
                    raise ValueError(f"feature {job.feature}: simulation {j} of context {k} has {len(v)} "
                                     f"values for {len(t) - 1} tokens after BOS")
                values[start + k, :len(v)] = torch.from_numpy(v)
        start += len(job.tokens)
    return values
