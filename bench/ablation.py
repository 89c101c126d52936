"""Which ablation reference, and the behaviour headline beside its zeros. SmolLM2-135M layer-6 MLP neurons,
labelled by the token-lookup baseline (no LLM), on the trained model and a random-init ('init') copy.

Features: 0-3 (the README demo's) and the first N that fire (bench/validity.py's selection). For each
ablation reference (calibrated, mean, zero), on the same simulation runs and through the stage's own
code (feature_jobs, Patcher.batch_losses, behaviour_scores), three simulations per feature share the
clean and ablated passes:
- the baseline's predictions (the label);
- a constant prediction (a label that says nothing: calibrated, it is the calibration contexts' mean);
- the baseline's predictions shifted by one context (shuffled: the right amount of activity, at the wrong
  places; calibration and scoring contexts each rotated among themselves).
Reported per ablation: the share of features whose KL damage (ablation_kl, the headline's denominator) has a
95% CI above 0 (the rule that picks the default: the ablation that damages most reliably; ties go to the order
calibrated, mean, zero), the same for the loss damage (ablation_effect, the loss form's), every
feature's scores, the mean headline behaviour of each kind with a bootstrap CI over features, captured
(KL-damage weighted) with its CI, and how many headline scores are resolved. Power: a CI's width shrinks as
1/sqrt(contexts), so a feature whose CI is w wide on n scored contexts needs about n (w / bound)^2.

    python bench/ablation.py --tokens 100000 --first 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autointerp import models, store  # noqa: E402
from autointerp.analysis import compare  # noqa: E402
from autointerp.behaviour import RESOLVED_CI_WIDTH  # noqa: E402
from autointerp.behaviour import patcher as behaviour  # noqa: E402
from autointerp.behaviour.stage import feature_jobs  # noqa: E402
from autointerp.collect.stage import collect_stage  # noqa: E402
from autointerp.config import BehaviourConfig, CollectConfig, LabelConfig  # noqa: E402
from autointerp.label.stage import label_stage  # noqa: E402
from autointerp.pipeline import control_config  # noqa: E402
from autointerp.records import SimulatedContext  # noqa: E402

ABLATIONS = ("calibrated", "mean", "zero")
KINDS = ("label", "constant", "shuffled")
METHODS = ("ablation_effect", "ablation_kl", "behaviour", "behaviour_loss", "behaviour_resolved")


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def rotated(ctxs: list[SimulatedContext]) -> list[SimulatedContext]:
    """Each context gets the predictions of the next one of its purpose (same lengths: fixed-length contexts)."""
    out = list(ctxs)
    for purpose in ("calibration", "scoring"):
        idx = [i for i, c in enumerate(ctxs) if c.purpose == purpose]
        for i, j in zip(idx, idx[1:] + idx[:1], strict=True):
            out[i] = ctxs[i].model_copy(update={"predicted": ctxs[j].predicted})
    return out


def variants(ctxs: list[SimulatedContext]) -> list[list[SimulatedContext]]:
    constant = [c.model_copy(update={"predicted": [1.0] * len(c.predicted)}) for c in ctxs]
    return [ctxs, constant, rotated(ctxs)]


def feature_scores(db: Path, did: int, features: list[int], model: Any, n_boot: int
                   ) -> dict[str, dict[int, dict[str, dict[str, Any]]]]:
    """ablation -> feature -> kind -> method -> {value, ci, note, n}. A feature's three ablations go through
    the model in one batch, so they share its clean pass."""
    with store.open_store(db, read_only=True) as con:
        d = store.get_dictionary(con, did)
        refs = [r for r in store.behaviour_pending(con, did, "bench", features) if r.simulator.startswith("baseline")]
        inputs = {r.feature: (r, store.simulated_contexts(con, r.run_id), store.feature_mean(con, did, r.feature))
                  for r in refs}
    patcher = behaviour.Patcher(model, d.hook)
    bos = model.tokenizer.bos_token_id
    out: dict[str, dict[int, dict[str, dict[str, Any]]]] = {a: {} for a in ABLATIONS}
    for f, (ref, ctxs, mean_act) in sorted(inputs.items()):
        jobs = [feature_jobs(BehaviourConfig(ablate=a), f, mean_act, [(ref, v) for v in variants(ctxs)], bos)[0][0]
                for a in ABLATIONS]
        for ablate, losses in zip(ABLATIONS, patcher.batch_losses(jobs, pad_id=bos), strict=True):
            out[ablate][f] = {kind: {s.method: {"value": s.value, "ci": [s.ci_low, s.ci_high], "note": note,
                                                "n": s.n_examples}
                                     for s, note in behaviour.behaviour_scores(loss, n_boot)}
                              for kind, loss in zip(KINDS, losses, strict=True)}
        print(f"feature {f} done ({time.strftime('%H:%M:%S')})", flush=True)
    return out


def summarise(per: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    def col(kind: str, method: str) -> np.ndarray:
        return np.array([per[f][kind][method]["value"] for f in per], dtype=np.float64)

    lab = per.values()
    summary: dict[str, Any] = {
        "features": len(per),
        "loss_damage_ci_above_0": sum(p["label"]["ablation_effect"]["ci"][0] > 0 for p in lab),
        "kl_damage_ci_above_0": sum(p["label"]["ablation_kl"]["ci"][0] > 0 for p in lab),
        "resolved": {k: int(np.nansum(col(k, "behaviour_resolved"))) for k in KINDS},
        "loss_form_defined": {k: int(np.isfinite(col(k, "behaviour_loss")).sum()) for k in KINDS},
    }
    for kind in KINDS:
        d = compare.distribution(col(kind, "behaviour"))
        cap = compare.captured_share(col(kind, "behaviour"), col(kind, "ablation_kl"))
        summary[kind] = {"mean": d.mean, "ci": list(d.mean_ci), "n": d.n, "captured": cap.share,
                         "captured_ci": list(cap.ci), "no_effect": cap.no_effect}
    widths = [(p["label"]["behaviour"]["ci"][1] - p["label"]["behaviour"]["ci"][0], p["label"]["behaviour"]["n"])
              for p in lab]
    summary["contexts_for_bound"] = [int(np.ceil(n * (w / RESOLVED_CI_WIDTH) ** 2)) if np.isfinite(w) else None
                                     for w, n in widths]
    return summary


def prepare(db: Path, args: argparse.Namespace, model: Any) -> dict[str, tuple[int, list[int]]]:
    trained = collect_stage(db, CollectConfig(n_tokens=args.tokens), model=model).dictionary_id
    dictionaries = {"trained": trained}
    if args.control:
        dictionaries["random init: init"] = collect_stage(db, control_config(db, trained, scheme="init")).dictionary_id
    out = {}
    for name, did in dictionaries.items():
        with store.open_store(db, read_only=True) as con:
            firing = store.select_features(con, did, "max_act > 0")[: args.first]
        features = sorted({0, 1, 2, 3} | set(firing))
        label_stage(db, did, features, LabelConfig(judge=False, null_samples=0), None)
        out[name] = (did, features)
    return out


def fmt(v: float, ci: list[float]) -> str:
    return f"{v:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if np.isfinite(v) else "undefined"


def report(name: str, ablate: str, per: dict[int, dict[str, dict[str, Any]]], s: dict[str, Any]) -> None:
    print(f"\n== {name}, ablation {ablate}: loss damage CI > 0 on {s['loss_damage_ci_above_0']}/{s['features']} "
          f"features, KL damage CI > 0 on {s['kl_damage_ci_above_0']}/{s['features']}")
    print(f"{'feature':>7}  {'ablation_effect':28}{'ablation_kl':28}{'behaviour (label)':28}"
          f"{'constant':28}{'shuffled':28}{'behaviour_loss (label)':28}")
    for f, p in per.items():
        cells = [p["label"]["ablation_effect"], p["label"]["ablation_kl"], p["label"]["behaviour"],
                 p["constant"]["behaviour"], p["shuffled"]["behaviour"], p["label"]["behaviour_loss"]]
        print(f"{f:>7}  " + "".join(f"{fmt(c['value'], c['ci']):28}" for c in cells))
    for kind in KINDS:
        k = s[kind]
        print(f"  {kind:9} mean behaviour {fmt(k['mean'], k['ci'])} over {k['n']}; captured "
              f"{fmt(k['captured'], k['captured_ci'])}, {k['no_effect']} no effect; resolved {s['resolved'][kind]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--first", type=int, default=8, help="also the first N features that fire")
    ap.add_argument("--no-control", dest="control", action="store_false")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--db", default=None, help="database to use (default: a new temporary one)")
    ap.add_argument("--out", default="bench/results/ablation.json")
    args = ap.parse_args()
    t0, load_before = time.time(), load()
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "ablation.duckdb"
    model = models.load_model(models.OFFLINE_MODEL)
    result: dict[str, Any] = {"tokens": args.tokens, "resolved_bound": RESOLVED_CI_WIDTH, "dictionaries": {}}
    for name, (did, features) in prepare(db, args, model).items():
        with store.open_store(db, read_only=True) as con:
            d = store.get_dictionary(con, did)
        m = model if not d.random_init else models.load_model(d.model, random_init=True, seed=d.seed,
                                                               init_scheme=d.config.get("init_scheme", "init"))
        runs = {}
        for ablate, per in feature_scores(db, did, features, m, args.n_boot).items():
            runs[ablate] = {"features": per, "summary": summarise(per)}
            report(name, ablate, per, runs[ablate]["summary"])
        result["dictionaries"][name] = runs
        trained = result["dictionaries"]["trained"]
        # The rule: the ablation whose headline damage is reliable on most features; ties go to ABLATIONS' order.
        result["rule_pick"] = max(ABLATIONS, key=lambda a: trained[a]["summary"]["kl_damage_ci_above_0"])
        result["loss_damage_pick"] = max(ABLATIONS, key=lambda a: trained[a]["summary"]["loss_damage_ci_above_0"])
        result.update(wall_s=time.time() - t0, load_before=load_before, load_after=load(),
                      n_boot=args.n_boot, ci="bootstrap 95%")
        # Written after each dictionary: on a loaded machine the control may not finish.
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(f"\nrule pick (larger share of features with a KL damage CI above 0; ties: calibrated, mean, zero): "
          f"{result['rule_pick']}; counting the loss damage instead: {result['loss_damage_pick']}")
    print(f"{time.time() - t0:.0f} s; load before: {load_before}\n  after: {result['load_after']}")


if __name__ == "__main__":
    main()
