"""Cost of behaviour scoring per feature beside a bare forward pass over the same tokens, in one run.

For each feature the scored holdout contexts go through the model as one batch: a clean pass (whose
residual stream at the hook's block is kept), one ablated pass and one simulated pass per
explanation, the patched passes restarting at the hook's block. With the LLM label and the
token-lookup baseline that is 1 + 1 + 2 partial passes per feature; the limit is one bare
forward pass of those contexts. Labels here are the baseline's (no LLM needed).

    python bench/behaviour.py --features 16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autointerp import models, store  # noqa: E402
from autointerp.config import BehaviourConfig, CollectConfig, LabelConfig  # noqa: E402
from autointerp.stages.behaviour import behaviour_stage  # noqa: E402
from autointerp.stages.collect import collect_stage  # noqa: E402
from autointerp.stages.label import label_stage  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--hook", default="blocks.6.mlp.hook_post")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--n-tokens", type=int, default=16_000)
    ap.add_argument("--out", default="bench/results/behaviour.json")
    args = ap.parse_args()
    model = models.load_model(models.OFFLINE_MODEL)
    db = Path(tempfile.mkdtemp()) / "b.duckdb"
    collect_stage(db, CollectConfig(hook=args.hook, n_tokens=args.n_tokens, ctx_len=64), model=model)
    # No LLM session: only the token-lookup baseline labels and scores the features.
    label_stage(db, 1, list(range(args.features)), LabelConfig(judge=False, null_samples=0), None)
    with store.open_store(db, read_only=True) as con:
        seqs = con.execute("SELECT DISTINCT s.feature, q.token_ids FROM simulations s JOIN sequences q "
                           "ON q.dictionary_id = s.dictionary_id AND q.seq = s.seq WHERE s.purpose = 'scoring'"
                           ).fetchall()
    bos = model.tokenizer.bos_token_id
    per_feature: dict[int, list[list[int]]] = {}
    for f, ids in seqs:
        per_feature.setdefault(f, []).append([bos, *ids])
    start = time.perf_counter()
    with torch.no_grad():
        for batch in per_feature.values():
            model(torch.tensor(batch))
    bare = (time.perf_counter() - start) / len(per_feature)
    start = time.perf_counter()
    out = behaviour_stage(db, 1, BehaviourConfig(n_boot=args.n_boot), model=model)
    elapsed = (time.perf_counter() - start) / max(out.features, 1)
    n_ctx = sum(len(v) for v in per_feature.values()) / len(per_feature)
    rows = {"features": out.features, "contexts_per_feature": n_ctx, "explanations_per_feature": 1,
            "bare_forward_s_per_feature": bare, "behaviour_s_per_feature": elapsed, "ratio": elapsed / bare,
            "passes": "clean prefix + clean full + ablated + 1 simulated (patched passes from the hook's block)"}
    print(f"{out.features} features, {n_ctx:.0f} scored contexts of 65 tokens each")
    print(f"  bare forward pass     {bare:7.3f} s/feature   <- the limit")
    print(f"  behaviour scoring     {elapsed:7.3f} s/feature   = {elapsed / bare:.2f}x the bare pass "
          "(clean + ablated + simulated, patched passes from layer 6 of 30, plus the store reads and writes)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
