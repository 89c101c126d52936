"""Placebo labels on real features, per few-shot setting: what a label that says nothing scores.

SmolLM2-135M layer-6 neurons [start, stop) (the slow placebo test uses 0-12; other ranges replicate it
on features it never saw), 40k tokens in 32-token contexts, 5 top + 5 random held-out contexts, scored
as the label stage scores them. The echo simulator (SmolLM2-135M-Instruct in-process) simulates the
reference label "nothing in particular" and three placebos, with each `--fewshot` setting's worked
examples from other features (chosen as the label stage chooses them). Reported per label: mean raw
correlation_top_random and mean correlation_gain (minus the reference on the same contexts), each with
a bootstrap 95% CI over features; a label that says nothing should have both CIs contain 0.

    python bench/placebo.py --features 12:24 --fewshot 0,2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autointerp import store
from autointerp.collect.stage import collect_stage  # noqa: E402
from autointerp.config import CollectConfig, LabelConfig  # noqa: E402
from autointerp.label import scoring, simulate
from autointerp.label.fewshot import fewshot_for  # noqa: E402
from autointerp.label.units import scoring_contexts  # noqa: E402
from autointerp.llm import local, prompts  # noqa: E402
from autointerp.llm.client import OpenAICompatibleClient  # noqa: E402
from autointerp.models import smollm2_gguf_path  # noqa: E402

PLACEBOS = ["nothing", "mentions of fruit such as apples and bananas", "the digit 7"]
N_BOOT = 2000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", default="0:12", help="START:STOP of the layer-6 neurons")
    ap.add_argument("--fewshot", default="0,2", help="few-shot settings to compare, comma-separated")
    ap.add_argument("--out", default=None, help="default: bench/results/placebo_START_STOP.json")
    args = ap.parse_args()
    start, stop = (int(x) for x in args.features.split(":"))
    out_path = Path(args.out or f"bench/results/placebo_{start}_{stop}.json")
    t0 = time.time()
    db = Path(tempfile.mkdtemp()) / "placebo.duckdb"
    collected = collect_stage(db, CollectConfig(hook="blocks.6.mlp.hook_post", n_tokens=40_000, ctx_len=32,
                                                features=(start, stop), top_k=5, n_random=5, n_quantiles=2,
                                                per_quantile=2))
    did = collected.dictionary_id
    with store.open_store(db, read_only=True) as con:
        records = store.read_feature_contexts(con, did, list(range(start, stop)))
    features = [records[f] for f in sorted(records)]
    cfg = LabelConfig(n_sim_top=5, n_sim_random=5)
    lp = local.InProcessLogprobs(str(smollm2_gguf_path()), n_ctx=4096)
    client = local.EmbeddedClient(OpenAICompatibleClient(["http://127.0.0.1:9/v1"]), lp)
    reference = prompts.render("null_constant")
    labels = [reference, *PLACEBOS]

    async def run(n_fewshot: int) -> dict[str, np.ndarray]:
        corr: dict[str, list[float]] = {label: [] for label in labels}
        for fc in features:
            pairs = scoring_contexts(fc, cfg)
            fewshot = fewshot_for(db, did, fc.feature, n_fewshot)
            for label in labels:
                predicted, _ = await simulate.simulate_echo(client, local.MODEL_NAME, label, [c for c, _ in pairs],
                                                            fewshot=fewshot)
                examples = [(np.asarray(c.acts), np.asarray(p))
                            for (c, purpose), p in zip(pairs, predicted, strict=True) if purpose == "scoring"]
                corr[label].append(scoring.correlation_score("correlation_top_random", examples).value)
        return {k: np.asarray(v) for k, v in corr.items()}

    def ci(values: np.ndarray) -> list[float]:
        low, high = scoring.bootstrap(lambda idx: float(np.mean(values[idx])), len(values), N_BOOT)
        return [float(values.mean()), low, high]

    result: dict = {"features": [start, stop], "settings": {}}
    for n in [int(x) for x in args.fewshot.split(",")]:
        t = time.time()
        corr = asyncio.run(run(n))
        result.setdefault("simulation_s", {})[f"fewshot={n}"] = round(time.time() - t, 1)
        result["settings"][f"fewshot={n}"] = {
            label: {"correlation_top_random": ci(v), "correlation_gain": ci(v - corr[reference]),
                    "per_feature": v.round(4).tolist()} for label, v in corr.items()}
    lp.close()
    result["wall_s"] = time.time() - t0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print(f"layer-6 neurons {start}-{stop}: mean over features (95% CI); a label that says nothing should contain 0")
    for setting, rows in result["settings"].items():
        for label, r in rows.items():
            raw, gain = r["correlation_top_random"], r["correlation_gain"]
            print(f"  {setting:10} {label[:32]:32} raw {raw[0]:+.3f} [{raw[1]:+.3f}, {raw[2]:+.3f}]"
                  f"   gain {gain[0]:+.3f} [{gain[1]:+.3f}, {gain[2]:+.3f}]")
    print(f"\nsimulation seconds per setting: {result['simulation_s']}")
    print(f"{result['wall_s']:.0f} s; written to {out_path}")


if __name__ == "__main__":
    main()
