"""The behaviour stage: how much of each feature's role in the model its label accounts for.

On a simulation run's scored held-out contexts the model runs three ways: clean; with the feature
ablated; with the feature replaced by the label's simulation, calibrated to the feature's scale on
the run's calibration contexts. behaviour = (L_ablated - L_simulated) / (L_ablated - L_clean).

The ablation reference decides where zero is. By default (`calibrated`) the feature is replaced by
the mean of its true activations on the run's calibration contexts: exactly what a constant
simulation becomes once calibrated, so a label that predicts nothing (a constant, or predictions
uncorrelated with the truth, whose fitted slope is ~0) scores 0 and the true rule scores 1.
`mean` (the feature's mean over the whole corpus) and `zero` are kept as options; with them a
constant prediction can already repair part of the ablation's damage, so their zero is not "explains
nothing". Each result is a behaviour run keyed by its settings, so `--ablate zero` after `mean` is
new work and both stay queryable."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from autointerp import __version__, store
from autointerp.behaviour import patcher as behaviour
from autointerp.config import BehaviourConfig
from autointerp.errors import BadInput
from autointerp.label import scoring
from autointerp.records import ProgressEvent, ProgressFn, ScoreRow, ScoreRun, SimulatedContext


@dataclass
class BehaviourOutcome:
    scored: int = 0  # labels with a headline behaviour score
    no_effect: int = 0  # labels whose feature's ablation changes nothing measurable
    resolved: int = 0  # scored labels whose CI is narrower than patcher.RESOLVED_CI_WIDTH
    features: int = 0
    skipped: str | None = None  # why behaviour scoring does not apply to the dictionary


def _ablation_value(cfg: BehaviourConfig, mean_act: float, contexts: list[SimulatedContext]) -> float:
    if cfg.ablate == "zero":
        return 0.0
    if cfg.ablate == "mean":
        return mean_act
    cal = [np.asarray(c.acts) for c in contexts if c.purpose == "calibration"]
    return float(np.concatenate(cal).mean()) if cal else mean_act


def _calibrated(contexts: list[SimulatedContext]) -> list[np.ndarray]:
    cal = [(np.asarray(c.acts), np.asarray(c.predicted)) for c in contexts if c.purpose == "calibration"]
    a, b = scoring.fit_calibration(cal) if cal else (1.0, 0.0)
    return [np.asarray(c.predicted, dtype=np.float32) * a + b for c in contexts if c.purpose == "scoring"]


def _scores(losses: behaviour.ContextLosses, kinds: list[str], run: ScoreRun, n_boot: int) -> list[ScoreRow]:
    rows = [sc.record(run, note) for sc, note in behaviour.behaviour_scores(losses, n_boot)]
    # The headline on random contexts only: behaviour on ordinary text, not top-heavy.
    keep = np.array([k == "random" for k in kinds])
    if keep.sum() >= 1:
        sub = replace(losses, **{f: getattr(losses, f)[keep] for f in
                                 ("clean", "ablated", "simulated", "kl_ablated", "kl_simulated")})
        for sc, note in behaviour.behaviour_scores(sub, n_boot):
            if sc.method == "behaviour":
                rows.append(scoring.Score("behaviour_random", sc.value, sc.n_examples, sc.ci_low, sc.ci_high)
                            .record(run, note))
    return rows


Members = list[tuple[store.SimulationRunRef, list[SimulatedContext]]]


def feature_jobs(cfg: BehaviourConfig, feature: int, mean_act: float, inputs: Members, bos: int
                 ) -> list[tuple[behaviour.PatchJob, Members]]:
    """The model work of one feature: runs over the same contexts with the same ablation share the clean and
    ablated passes, so each such group is one job with a simulation per run."""
    groups: dict[tuple, Members] = {}
    for ref, ctxs in inputs:
        scored = tuple(c.seq for c in ctxs if c.purpose == "scoring")
        if scored:
            groups.setdefault((scored, _ablation_value(cfg, mean_act, ctxs)), []).append((ref, ctxs))
    out = []
    for (_, ablate_value), members in groups.items():
        tokens = [np.asarray([bos, *c.token_ids], dtype=np.int64) for c in members[0][1] if c.purpose == "scoring"]
        out.append((behaviour.PatchJob(feature, tokens, ablate_value, [_calibrated(c) for _, c in members]),
                    members))
    return out


def _bundle_job(bundle: store.Bundle, outcome: BehaviourOutcome, cfg: BehaviourConfig, dictionary_id: int,
                feature: int, job: behaviour.PatchJob, members: Members,
                losses_of: list[behaviour.ContextLosses]) -> None:
    """One job's behaviour runs and scores, one run per simulation it carried, added to the feature's bundle
    and counted in the outcome."""
    kinds = [c.kind for c in members[0][1] if c.purpose == "scoring"]
    for (ref, _), losses in zip(members, losses_of, strict=True):
        run = ScoreRun(run_id=str(uuid.uuid4()), explanation_id=ref.explanation_id,
                       dictionary_id=dictionary_id, feature=feature, stage="behaviour",
                       simulator=ref.simulator, prompt_hash=ref.prompt_hash, settings_hash=cfg.settings_hash(),
                       config=json.dumps({**cfg.settings(), "ablate_value": job.ablate_value,
                                          "autointerp_version": __version__}),
                       source_run_id=ref.run_id)
        bundle.runs.append(run)
        for r in _scores(losses, kinds, run, cfg.n_boot):
            bundle.scores.append(r)
            if r.method == "behaviour":
                outcome.scored += r.note is None
                outcome.no_effect += r.note is not None
            outcome.resolved += r.method == "behaviour_resolved" and r.value == 1.0


def behaviour_stage(db: str | Path, dictionary_id: int, cfg: BehaviourConfig | None = None,
                    features: list[int] | None = None, model: Any = None, retry_failed: bool = False,
                    on_progress: ProgressFn | None = None) -> BehaviourOutcome:
    """Behaviour scores for every newest simulation run of the dictionary without a behaviour run of
    these settings. `cfg.feature_batch` features go through the model together and are written in one
    transaction (resumable: a batch is saved whole or not at all). The model is the dictionary's own,
    random-init copy included, loaded on `cfg.device` in `cfg.dtype` unless given."""
    from autointerp import models

    cfg = cfg or BehaviourConfig()  # type: ignore[call-arg]
    key = cfg.settings_hash()
    with store.open_store(db) as con:
        d = store.get_dictionary(con, dictionary_id)
        if d.kind == "planted":
            return BehaviourOutcome(skipped="planted features are rules, not part of a model: there is no model "
                                    "to patch, so behaviour scoring does not apply")
        pending = store.behaviour_pending(con, dictionary_id, key, features, retry_failed)
    outcome = BehaviourOutcome()
    if not pending:
        return outcome
    if not d.config.get("prepend_bos", True):
        # Replacement starts after the BOS position; without one, nothing is kept clean in front.
        raise BadInput("behaviour scores need the BOS position; this dictionary was collected without it")
    device = models.resolve_device(cfg.device)
    sae = models.load_sae(d.sae, device, cfg.dtype) if d.sae else None
    if model is None:
        model = models.load_model(d.model, random_init=d.random_init, seed=d.seed,
                                  init_scheme=d.config.get("init_scheme", "init"),
                                  from_pretrained_kwargs=models.sae_model_kwargs(sae) if sae is not None else None,
                                  device=device, dtype=cfg.dtype)
    patcher = behaviour.Patcher(model, d.hook, sae)
    bos = model.tokenizer.bos_token_id
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else bos
    by_feature: dict[int, list[store.SimulationRunRef]] = {}
    for p in pending:
        by_feature.setdefault(p.feature, []).append(p)
    outcome.features = len(by_feature)
    order = list(by_feature)
    for b in range(0, len(order), cfg.feature_batch):
        batch = order[b:b + cfg.feature_batch]
        work: list[tuple[int, behaviour.PatchJob, Members]] = []
        with store.open_store(db, wait_s=600) as con:
            for feature in batch:
                mean_act = store.feature_mean(con, dictionary_id, feature)
                inputs = [(ref, store.simulated_contexts(con, ref.run_id)) for ref in by_feature[feature]]
                work += [(feature, job, members) for job, members in feature_jobs(cfg, feature, mean_act, inputs, bos)]
        results = patcher.batch_losses([job for _, job, _ in work], pad_id=pad)
        bundles: dict[int, store.Bundle] = {f: store.Bundle() for f in batch}
        for (feature, job, members), losses_of in zip(work, results, strict=True):
            _bundle_job(bundles[feature], outcome, cfg, dictionary_id, feature, job, members, losses_of)
        with store.open_store(db, wait_s=600) as con:
            store.write_bundles(con, [bundles[f] for f in batch if bundles[f].runs])
        if on_progress is not None:
            on_progress(ProgressEvent("behaviour", b + len(batch), len(by_feature), "feat"))
    return outcome
