"""Do the scores mean what their names say? One run on SmolLM2-135M with the local LLM (SmolLM2-135M-
Instruct: llama.cpp server for chat, in-process echo logprobs for simulation).

For N features of the trained model and of each random-init control scheme: the score distributions
of the LLM's labels, the token-lookup baseline, shuffled labels (another feature's LLM label) and the
constant label, each mean with its bootstrap 95% CI over features (behaviour: the KL headline, with
`captured`, the KL-damage weighted share, and the features with no effect); and the simulator's position
trend: the slope of the mean prediction of the constant label against the context's place in the
scoring order (top contexts first, then random ones), which must be ~0 if prediction does not drift.

    python bench/validity.py --features 8 --tokens 60000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autointerp import store
from autointerp.analysis import compare  # noqa: E402
from autointerp.behaviour.stage import behaviour_stage  # noqa: E402
from autointerp.collect.stage import collect_stage  # noqa: E402
from autointerp.config import RANDOM_INIT_SCHEMES, BehaviourConfig, CollectConfig, LabelConfig, LLMConfig  # noqa: E402
from autointerp.label import scoring
from autointerp.label.stage import label_stage, open_llm  # noqa: E402
from autointerp.pipeline import control_config  # noqa: E402

METHODS = ("correlation_top_random", "correlation_gain", "correlation_random", "explained_variance", "behaviour",
           "behaviour_random", "behaviour_loss")


def kind(explainer: str) -> str:
    if explainer.startswith("null:shuffled"):
        return "shuffled label"
    if explainer == "null:constant":
        return "constant label"
    if explainer.startswith("baseline:"):
        return "token lookup"
    return "LLM label"


def position_slope(db: Path, dictionary_id: int) -> dict[str, float]:
    """Slope of the constant label's mean prediction against the context's index in the scoring order,
    with a bootstrap 95% CI over features."""
    with store.open_store(db, read_only=True) as con:
        rows = con.execute("""
            SELECT s.feature, s.kind, s.rank, list_avg(s.predicted) FROM simulations s
            JOIN explanations e USING (explanation_id)
            WHERE e.null_kind = 'constant' AND s.dictionary_id = ?
            ORDER BY s.feature, s.kind DESC, s.rank""", [dictionary_id]).fetchall()
    per_feature: dict[int, list[float]] = {}
    for f, _, _, mean in rows:
        per_feature.setdefault(f, []).append(mean)
    slopes = np.array([np.polyfit(np.arange(len(v)), v, 1)[0] for v in per_feature.values() if len(v) > 2])
    if len(slopes) == 0:
        return {"slope": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    lo, hi = scoring.mean_ci(slopes)
    return {"slope": float(slopes.mean()), "ci_low": lo, "ci_high": hi, "n": len(slopes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=8, help="features labelled per dictionary")
    ap.add_argument("--tokens", type=int, default=60_000)
    ap.add_argument("--schemes", default=",".join(RANDOM_INIT_SCHEMES))
    ap.add_argument("--no-behaviour", action="store_true")
    ap.add_argument("--db", default=None, help="database to use (default: a new temporary one)")
    ap.add_argument("--out", default="bench/results/validity.json")
    args = ap.parse_args()
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "validity.duckdb"
    label_cfg = LabelConfig(n_explain_top=6, n_explain_quantile=4, n_sim_top=6, n_sim_random=6, judge=False,
                            null_samples=args.features, n_boot=1000)
    t0 = time.time()
    trained = collect_stage(db, CollectConfig(n_tokens=args.tokens))
    dictionaries = {"trained": trained.dictionary_id}
    for scheme in [s for s in args.schemes.split(",") if s]:
        cfg = control_config(db, trained.dictionary_id, scheme=scheme)
        dictionaries[f"random init: {scheme}"] = collect_stage(db, cfg).dictionary_id
    with open_llm(LLMConfig(concurrency=2)) as session:
        for did in dictionaries.values():
            with store.open_store(db, read_only=True) as con:
                # Features that fire at all, the same indices in every dictionary where possible.
                features = store.select_features(con, did, "max_act > 0")[: args.features]
            label_stage(db, did, features, label_cfg, session, concurrency=2)
    if not args.no_behaviour:
        for did in dictionaries.values():
            behaviour_stage(db, did, BehaviourConfig())
    with store.open_store(db, read_only=True) as con:
        labels = store.label_scores(con, (*METHODS, "ablation_kl"), list(dictionaries.values()))
    table = []
    for name, did in dictionaries.items():
        for k in ("LLM label", "token lookup", "shuffled label", "constant label"):
            group = [lab for lab in labels if lab.dictionary_id == did and kind(lab.explainer) == k]
            row: dict[str, object] = {"dictionary": name, "labels": k, "n": len(group)}
            for m in METHODS:
                d = compare.distribution(np.array([np.nan if g.values[m] is None else g.values[m] for g in group],
                                                  dtype=np.float64))
                row[m] = {"mean": d.mean, "ci": list(d.mean_ci), "n": d.n}
            cap = compare.captured_share(*(np.array([np.nan if g.values[m] is None else g.values[m] for g in group],
                                                    dtype=np.float64) for m in ("behaviour", "ablation_kl")))
            row["captured"] = cap.text()
            table.append(row)
    slopes = {name: position_slope(db, did) for name, did in dictionaries.items()}
    out = {"features": args.features, "tokens": args.tokens, "wall_s": time.time() - t0, "table": table,
           "position_slope_constant_label": slopes, "label_settings": label_cfg.model_dump()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))

    def fmt(v: dict) -> str:
        return "" if not v["n"] else f"{v['mean']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]"

    print(f"{'dictionary':30} {'labels':15} {'n':>3}  " + "  ".join(f"{m:28}" for m in METHODS) + "  captured")
    for r in table:
        print(f"{r['dictionary']:30} {r['labels']:15} {r['n']:>3}  "
              + "  ".join(f"{fmt(r[m]):28}" for m in METHODS) + f"  {r['captured']}")  # type: ignore[arg-type]
    print("\nposition trend of the constant label's mean prediction (slope per context, 95% CI over features):")
    for name, s in slopes.items():
        print(f"  {name}: {s['slope']:+.4f} [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}] over {s['n']} features")
    print(f"\n{time.time() - t0:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
