"""The zero every score is shown beside: null labels and the reference label.

- Null labels, for a seeded sample of features: another sampled feature's label (shuffled, never its
  own) and a constant label. Scored exactly like real labels, their scores are the null distribution
  behind `labels.*_margin` and `*_p`.
- The reference: the same constant label ("nothing in particular") simulated on every scored feature
  (`LabelConfig.reference`). A simulator's predictions follow token content whatever the label says,
  and neurons follow content too, so a label that says nothing gets a raw correlation above 0
  (SmolLM2-135M: ~0.04). `correlation_gain` is a run's correlation minus the reference run's on the same
  contexts, with a paired bootstrap CI: the reference itself scores exactly 0, and a label scores above 0
  only by what its text adds.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import numpy as np

from autointerp import store
from autointerp.label import scoring
from autointerp.llm import prompts
from autointerp.records import Explanation, ScoreRow, SimulatedContext

NULL_HASH = "null-v1"
SHUFFLED = "null:shuffled:"
CONSTANT = "null:constant"
# (method, which scored contexts): the gain over all scored contexts and over the random ones only.
GAINS = (("correlation_gain", ("top", "random")), ("correlation_random_gain", ("random",)))


def _order(seed: int, feature: int) -> str:
    return hashlib.sha256(f"{seed}:{feature}".encode()).hexdigest()


def _constant(dictionary_id: int, feature: int, config: dict) -> Explanation:
    return Explanation(explanation_id=str(uuid.uuid4()), dictionary_id=dictionary_id, feature=feature,
                       label=prompts.render("null_constant"), explainer=CONSTANT, prompt_hash=NULL_HASH,
                       status="ok", null_kind="constant", config=json.dumps(config))


def make_null_labels(db: str | Path, dictionary_id: int, explainer: str, n: int, seed: int = 0) -> int:
    """Null labels for `n` features (a seeded sample of those `explainer` labelled): each gets another
    sampled feature's label (the sample rotated by one, so never its own) and a constant label. Scored
    like real labels, they are the zero every score is shown beside. Returns how many were added."""
    with store.open_store(db, wait_s=600) as con:
        labels = store.ok_labels(con, dictionary_id, explainer)
        existing = {(e.null_kind, e.feature) for e in store.null_explanations(con, dictionary_id, explainer)}
    chosen = sorted(labels, key=lambda f: _order(seed, f))[:n]
    if len(chosen) < 2:
        return 0
    config = {"seed": seed, "null_samples": n}
    new = []
    for i, f in enumerate(chosen):
        source = chosen[(i + 1) % len(chosen)]
        if ("shuffled", f) not in existing:
            new.append(Explanation(explanation_id=str(uuid.uuid4()), dictionary_id=dictionary_id, feature=f,
                                   label=labels[source], explainer=SHUFFLED + explainer, prompt_hash=NULL_HASH,
                                   status="ok", null_kind="shuffled", null_of=explainer, label_feature=source,
                                   config=json.dumps(config)))
        if ("constant", f) not in existing:
            new.append(_constant(dictionary_id, f, config))
    _write(db, new)
    return len(new)


def make_reference_labels(db: str | Path, dictionary_id: int, explainers: list[str], features: list[int]) -> int:
    """The constant label for each of `features` that one of `explainers` labelled and that has none yet.
    Returns how many were added."""
    with store.open_store(db, wait_s=600) as con:
        labelled = set().union(*(store.ok_labels(con, dictionary_id, e) for e in explainers))
        have = {e.feature for e in store.null_explanations(con, dictionary_id, "") if e.null_kind == "constant"}
    new = [_constant(dictionary_id, f, {"reference_label": True}) for f in sorted(set(features) & labelled - have)]
    _write(db, new)
    return len(new)


def _write(db: str | Path, explanations: list[Explanation]) -> None:
    if explanations:
        with store.open_store(db, wait_s=600) as con:
            store.write_bundles(con, [store.Bundle(explanations=explanations)])


def null_features(db: str | Path, dictionary_id: int, explainers: list[str], features: list[int],
                  null_samples: int, reference: bool) -> list[int]:
    """Make the null labels (and, with `reference`, the reference labels of `features`); return the
    features that have any, whose null labels the caller scores."""
    for explainer in explainers:
        if null_samples:
            make_null_labels(db, dictionary_id, explainer, null_samples)
    if reference:
        make_reference_labels(db, dictionary_id, explainers, features)
    with store.open_store(db, wait_s=600) as con:
        return sorted({e.feature for x in explainers for e in store.null_explanations(con, dictionary_id, x)})


def reference_gains(db: str | Path, dictionary_id: int, n_boot: int = 1000) -> int:
    """Write `correlation_gain` and `correlation_random_gain` for every scored simulation run whose
    feature has a reference run with the same simulator and settings and that has no gain yet.
    Idempotent; returns the runs given a gain."""
    with store.open_store(db, wait_s=600) as con:
        rows: list[ScoreRow] = []
        pending = store.gain_pending(con, dictionary_id, GAINS[0][0])
        for k in range(0, len(pending), 256):  # one query per chunk of runs, not two per run
            chunk = pending[k : k + 256]
            sims: dict[str, list[SimulatedContext]] = store.simulated_contexts_of(
                con, sorted({x for p in chunk for x in (p.run_id, p.reference_run_id)}), tokens=False)
            for p in chunk:
                ours, ref = sims.get(p.run_id, []), sims.get(p.reference_run_id, [])
                same = [(c.seq, c.kind, c.purpose) for c in ours] == [(c.seq, c.kind, c.purpose) for c in ref]
                for method, kinds in GAINS:
                    if not same:
                        score = scoring.Score(method, float("nan"), 0, float("nan"), float("nan"))
                        note: str | None = f"contexts differ from reference run {p.reference_run_id}"
                    else:
                        pick = [i for i, c in enumerate(ours) if c.purpose == "scoring" and c.kind in kinds]
                        score = scoring.correlation_gain_score(
                            method, [(np.asarray(ours[i].acts), np.asarray(ours[i].predicted)) for i in pick],
                            [(np.asarray(ref[i].acts), np.asarray(ref[i].predicted)) for i in pick], n_boot)
                        note = f"reference run {p.reference_run_id}"
                    rows.append(score.row(p.run_id, p.explanation_id, dictionary_id, p.feature, p.simulator, note))
        if rows:
            store.add_scores(con, rows)
    return len(pending)
