"""Cost of behaviour scoring per feature beside a bare forward pass over the same tokens, in one run.

Per feature the scored holdout contexts go through the model: a clean pass (whose residual stream at the
hook's block is kept), one ablated pass and one simulated pass per explanation, the patched passes
restarting at the hook's block. For k labels of a feature that is 2 + k passes of the layers after the
hook plus one of the layers before it: the floor, in bare passes, is 1 + (1 + k)(N - L)/N for a hook in
block L of N. Batching features (`--feature-batch`) puts several features' contexts in one batch and runs
the contexts they share (their random contexts) clean once. Measured here: one feature at a time
(feature_batch=1) and batched, each on its own copy of the same database, with the time inside the model
(Patcher.batch_losses) apart from the store reads and writes and the bootstrap CIs. Labels are the token-
lookup baseline's (no LLM needed), so k = 1. The goal is at most 2x a bare forward pass per feature.

    python bench/behaviour.py --features 16
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autointerp import models, store
from autointerp.behaviour import patcher as behaviour  # noqa: E402
from autointerp.behaviour.stage import behaviour_stage  # noqa: E402
from autointerp.collect.stage import collect_stage  # noqa: E402
from autointerp.config import BehaviourConfig, CollectConfig, LabelConfig  # noqa: E402
from autointerp.label.stage import label_stage  # noqa: E402

GOAL = 2.0  # behaviour per feature at most this many bare forward passes


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


class ModelClock:
    """Seconds spent in Patcher.batch_losses (the model's share of the stage)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._orig = behaviour.Patcher.batch_losses

    def __enter__(self) -> ModelClock:
        orig, clock = self._orig, self

        def timed(patcher, *args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            try:
                return orig(patcher, *args, **kwargs)
            finally:
                clock.seconds += time.perf_counter() - start

        behaviour.Patcher.batch_losses = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        behaviour.Patcher.batch_losses = self._orig  # type: ignore[method-assign]


def batched_floor(per_feature: dict[int, list[list[int]]], feature_batch: int, k: int, layer: int,
                  n_layers: int) -> float:
    """Passes per feature, in bare passes of its contexts, when batches of `feature_batch` features (in feature
    order, as the stage takes them) run their distinct contexts clean once: tokens counted, not seconds."""
    order = sorted(per_feature)
    clean = 0
    for b in range(0, len(order), feature_batch):
        clean += sum(len(c) for c in {tuple(c) for f in order[b:b + feature_batch] for c in per_feature[f]})
    bare = sum(len(c) for v in per_feature.values() for c in v)
    return clean / bare + (1 + k) * (n_layers - layer) / n_layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--feature-batch", type=int, default=BehaviourConfig.model_fields["feature_batch"].default)
    ap.add_argument("--hook", default="blocks.6.mlp.hook_post")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--n-tokens", type=int, default=16_000)
    ap.add_argument("--out", default="bench/results/behaviour.json")
    args = ap.parse_args()
    model = models.load_model(models.OFFLINE_MODEL)
    tmp = Path(tempfile.mkdtemp())
    db = tmp / "b.duckdb"
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
    distinct = len({tuple(ids) for batch in per_feature.values() for ids in batch})

    def bare_pass() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for batch in per_feature.values():
                model(torch.tensor(batch))
        return (time.perf_counter() - start) / len(per_feature)

    def behaviour_run(feature_batch: int) -> tuple[float, float, int]:
        copy = tmp / f"batch{feature_batch}.duckdb"
        shutil.copy(db, copy)
        with ModelClock() as clock:
            start = time.perf_counter()
            out = behaviour_stage(copy, 1, BehaviourConfig(n_boot=args.n_boot, feature_batch=feature_batch),
                                  model=model)
            elapsed = time.perf_counter() - start
        n = max(out.features, 1)
        return elapsed / n, clock.seconds / n, out.features

    load_before = load()
    bare_pass()  # warm-up: the first pass pays for allocations the others reuse
    # Bare passes before and after the two behaviour runs: the machine is shared, the load drifts.
    bare_a = bare_pass()
    one_s, one_model_s, n_features = behaviour_run(1)
    many_s, many_model_s, _ = behaviour_run(args.feature_batch)
    bare_b = bare_pass()
    load_after = load()
    bare = (bare_a + bare_b) / 2
    k = 1
    m = re.match(r"blocks\.(\d+)\.", args.hook)
    layer, n_layers = (int(m.group(1)) if m else 0), model.cfg.n_layers
    floor_x = 1 + (1 + k) * (n_layers - layer) / n_layers
    batched_floor_x = batched_floor(per_feature, args.feature_batch, k, layer, n_layers)
    n_ctx = sum(len(v) for v in per_feature.values()) / len(per_feature)
    rows = {
        "features": n_features, "contexts_per_feature": n_ctx, "distinct_contexts": distinct,
        "tokens_per_context": 65, "explanations_per_feature": k, "hook": args.hook, "n_layers": n_layers,
        "feature_batch": args.feature_batch, "n_boot": args.n_boot,
        "bare_forward_s_per_feature": bare, "bare_forward_s_per_feature_before_after": [bare_a, bare_b],
        "floor_x_bare": floor_x, "floor_s_per_feature": floor_x * bare, "batched_floor_x_bare": batched_floor_x,
        "one_at_a_time_s_per_feature": one_s, "one_at_a_time_model_s_per_feature": one_model_s,
        "batched_s_per_feature": many_s, "batched_model_s_per_feature": many_model_s,
        "one_at_a_time_x_bare": one_s / bare, "batched_x_bare": many_s / bare,
        "batched_model_x_bare": many_model_s / bare, "goal_x_bare": GOAL,
        "device": str(model.cfg.device), "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_before": load_before, "load_after": load_after,
        "passes": "clean prefix + clean rest + ablated + 1 simulated per feature (patched passes from the hook's "
                  "block); batched: the clean pass over the distinct contexts of the batch",
    }
    print(f"{n_features} features, {n_ctx:.0f} scored contexts of 65 tokens each ({distinct} distinct), "
          f"{args.hook} of {n_layers} layers, k = {k} label per feature, on {model.cfg.device}")
    print(f"  bare forward pass          {bare:7.3f} s/feature   (before {bare_a:.3f}, after {bare_b:.3f})")
    print(f"  floor 2 + k partial passes {floor_x * bare:7.3f} s/feature   = {floor_x:.2f}x the bare pass")
    print(f"  batched floor              {batched_floor_x * bare:7.3f} s/feature   = {batched_floor_x:.2f}x "
          "(the clean pass over each batch's distinct contexts only)")
    print(f"  goal                       {GOAL * bare:7.3f} s/feature   = {GOAL:.2f}x the bare pass")
    print(f"  one feature at a time      {one_s:7.3f} s/feature   = {one_s / bare:.2f}x "
          f"(model {one_model_s:.3f} s = {one_model_s / bare:.2f}x; the rest is the store and {args.n_boot} "
          "bootstrap resamples)")
    print(f"  batched, {args.feature_batch} features      {many_s:7.3f} s/feature   = {many_s / bare:.2f}x "
          f"(model {many_model_s:.3f} s = {many_model_s / bare:.2f}x)")
    print(f"  load: before {load_before}\n        after  {load_after}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
