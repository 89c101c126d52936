"""Collection throughput and memory against their limits, over the same tokens, in one run.

Prints tokens/s of (a) the full forward pass (unless --skip-full), (b) the forward pass up to the hook's layer,
(c) the feature reader alone: forward to the hook plus the SAE's encode, the least any collector must compute
(the limit), and (d) `collect` (the reader + top-k/reservoir/random buffers + statistics, then the result
tables), with ratios; the time to write the result to DuckDB; and peak RSS of the collection (buffers and one
batch) and of building its result, beside the README's formula. With --shards N it also runs the same tokens
through the stages: one process (`collect_stage`), N shards (a local Ray with N CPUs when `ray` is importable,
else in-process one after the other) and the merge, each in tokens/s. With --sae-width, features are latents of
a random SAE of that width. Every figure is printed beside its limit and written to --out as JSON, with the
load average of the machine before and after (the cores may be shared).

    python bench/collect.py --tokens 20000
    python bench/collect.py --tokens 20000 --sae-width 16384 --hook blocks.3.hook_resid_post --skip-full --shards 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autointerp import models, store
from autointerp.collect import corpus  # noqa: E402
from autointerp.collect.collector import collect_contexts  # noqa: E402
from autointerp.collect.memory import collect_memory  # noqa: E402
from autointerp.collect.stage import collect_stage, token_strings  # noqa: E402
from autointerp.config import CollectConfig  # noqa: E402

GIB = 2**30


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The highest resident set size seen while the block runs (sampled every 2 ms, and at both ends)."""

    def __enter__(self) -> PeakRSS:
        self.peak = rss_now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_now())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_now())


CPU: dict[str, float] = {}  # process CPU seconds of the last timed call of each name (all threads of this process)


def timed(fn: Callable[[], Any], name: str = "") -> float:
    """Wall seconds of fn(); its process CPU seconds go to CPU[name]. On shared cores the CPU time is the
    steadier measure of work: wall time also counts waiting for a core."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    CPU[name] = time.process_time() - c
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--ctx-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--hook", default="blocks.6.mlp.hook_post")
    ap.add_argument("--sae-width", type=int, default=0)
    ap.add_argument("--skip-full", action="store_true", help="skip the full forward pass (slow on CPU)")
    ap.add_argument("--shards", type=int, default=0, help="also time N shards and their merge (0: skip)")
    ap.add_argument("--out", default="bench/results/collect.json")
    args = ap.parse_args()
    load_before = os.getloadavg()

    model = models.load_model(models.OFFLINE_MODEL)
    sae, sae_path = None, None
    if args.sae_width:
        from tests.helpers import make_sae_dir

        d_in = model.cfg.d_mlp if "mlp.hook_post" in args.hook else model.cfg.d_model
        sae_path = make_sae_dir(Path(tempfile.mkdtemp()) / "sae", args.hook, d_in=d_in, d_sae=args.sae_width)
        sae = models.load_sae(str(sae_path))
    reader = models.FeatureReader(model, args.hook, sae=sae)
    cfg = CollectConfig(model=models.OFFLINE_MODEL, hook=None if sae_path else args.hook,
                        sae=str(sae_path) if sae_path else None, n_tokens=args.tokens, ctx_len=args.ctx_len,
                        batch_size=args.batch_size, device="cpu")
    ctxs = list(corpus.contexts(corpus.pieces("default"), model.tokenizer, cfg.ctx_len, cfg.n_tokens // cfg.ctx_len))
    n_tok = len(ctxs) * cfg.ctx_len
    bos = model.tokenizer.bos_token_id
    batches = [torch.cat([torch.full((len(b), 1), bos), torch.from_numpy(np.stack(b))], 1)
               for b in (ctxs[i : i + cfg.batch_size] for i in range(0, len(ctxs), cfg.batch_size))]
    strings = token_strings(model.tokenizer)
    stop = models.stop_layer(args.hook, model.cfg.n_layers)
    n_params = sum(p.numel() * p.element_size() for p in model.parameters())
    n_params += sum(p.numel() * p.element_size() for p in sae.parameters()) if sae is not None else 0

    def forward(stop_at: int | None) -> None:
        with torch.no_grad():
            for b in batches:
                model(b, stop_at_layer=stop_at)  # outputs dropped at once: only time is measured

    def read() -> None:
        for b in batches:
            reader(b)

    read()  # warm-up, and the allocator's pools for one batch
    base_rss = rss_now()  # model, SAE, tokens, one batch's pools: what any collector holds before it starts
    out: dict[str, Any] = {}

    def run() -> None:
        out["collector"], _ = collect_contexts(cfg, reader, reader.n_features, iter(ctxs), bos)

    with PeakRSS() as mem_collect:
        buffers_s = timed(run, "buffers")
    collector = out.pop("collector")
    with PeakRSS() as mem_result:
        result_s = timed(lambda c=collector: out.update(result=c.result(strings)), "result")
    del collector
    result = out.pop("result")
    collect_s = buffers_s + result_s
    read_s = timed(read, "read")
    to_hook_s = timed(lambda: forward(stop), "to_hook")
    full_s = timed(lambda: forward(None)) if not args.skip_full else float("nan")
    db = Path(tempfile.mkdtemp()) / "bench.duckdb"

    def write() -> None:
        import pyarrow as pa

        with store.open_store(db) as con:
            did = store.begin_dictionary(con, model="m", hook=args.hook, kind=reader.kind, sae=None, random_init=False,
                                         seed=0, dataset="default", ctx_len=cfg.ctx_len, n_features=reader.n_features,
                                         config_hash="bench", config={})

            def ids(t: Any) -> Any:
                return t.append_column("dictionary_id", pa.array([did] * t.num_rows, pa.int32()))

            store.complete_dictionary(con, did, n_tokens=result.n_tokens, n_contexts=result.n_contexts,
                                      sequences=ids(result.sequences), features=ids(result.features),
                                      examples=ids(result.examples))

    write_s = timed(write, "duckdb_write")
    formula = collect_memory(cfg, reader.n_features)
    rows: dict[str, Any] = {
        "tokens": n_tok, "features": reader.n_features, "hook": args.hook, "sae_width": args.sae_width,
        "batch_size": cfg.batch_size, "ctx_len": cfg.ctx_len,
        "full_forward_tok_s": n_tok / full_s,
        "forward_to_hook_tok_s": n_tok / to_hook_s,
        "reader_tok_s": n_tok / read_s,
        "collect_tok_s": n_tok / collect_s,
        "collect_buffers_s": buffers_s, "collect_result_s": result_s,
        "collect_vs_reader": read_s / collect_s,
        "cpu_s": dict(CPU),
        "collect_vs_reader_cpu": CPU["read"] / (CPU["buffers"] + CPU["result"]),
        "collect_vs_forward_to_hook": to_hook_s / collect_s,
        "collect_vs_full_forward": full_s / collect_s,
        "duckdb_write_s": write_s,
        "examples_rows": result.examples.num_rows,
        "rss_base_gib": base_rss / GIB, "weights_gib": n_params / GIB,
        "rss_peak_collect_gib": mem_collect.peak / GIB, "rss_peak_result_gib": mem_result.peak / GIB,
        "rss_collect_over_base_gib": (mem_collect.peak - base_rss) / GIB,
        "rss_result_over_base_gib": (mem_result.peak - base_rss) / GIB,
        "formula_collect_gib": formula.collect / GIB, "formula_result_gib": formula.result / GIB,
        "ru_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
    }
    print(f"tokens {n_tok:,}  features {reader.n_features:,}  hook {args.hook}  (load {load_before[0]:.1f})")
    print(f"  full forward pass      {rows['full_forward_tok_s']:9.0f} tok/s")
    print(f"  forward to the hook    {rows['forward_to_hook_tok_s']:9.0f} tok/s")
    print(f"  reader (+ SAE encode)  {rows['reader_tok_s']:9.0f} tok/s   <- the limit")
    print(f"  collect                {rows['collect_tok_s']:9.0f} tok/s   = {rows['collect_vs_reader']:.2f}x the limit "
          f"(goal >= 0.80), {rows['collect_vs_forward_to_hook']:.2f}x the forward to the hook; buffers "
          f"{buffers_s:.1f} s + result tables {result_s:.1f} s")
    print(f"  by process CPU time    reader {CPU['read']:.1f} s, collect {CPU['buffers']:.1f} + {CPU['result']:.1f} s "
          f"= {rows['collect_vs_reader_cpu']:.2f}x the limit (goal >= 0.80)")
    print(f"  write to DuckDB        {write_s:9.2f} s for {result.examples.num_rows:,} example rows")
    print(f"  RSS before collecting  {base_rss / GIB:9.2f} GiB (model {n_params / GIB:.2f} GiB of weights, tokens, "
          "one batch)")
    for name, peak, want in (("collect", mem_collect.peak, formula.collect), ("result", mem_result.peak,
                                                                              formula.result)):
        over = (peak - base_rss) / GIB
        print(f"  peak RSS of {name:9s}  {over:9.2f} GiB over that = {over * GIB / want:.2f}x the README's formula "
              f"{want / GIB:.2f} GiB (goal within 25%); {peak / GIB:.2f} GiB in all")

    if args.shards:
        rows.update(bench_shards(cfg, model, args.shards, n_tok))
    rows["load_before"], rows["load_after"] = load_before, os.getloadavg()
    print(f"  load average           {load_before[0]:.2f} before, {rows['load_after'][0]:.2f} after "
          f"({os.cpu_count()} cores)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


def bench_shards(cfg: CollectConfig, model: Any, n_shards: int, n_tok: int) -> dict[str, Any]:
    """One process through the stages, then n shards and their merge, over the same tokens."""
    from autointerp.collect.shards import collect_shard, merge_stage

    root = Path(tempfile.mkdtemp())
    one_s = timed(lambda: collect_stage(root / "one.duckdb", cfg, model=model))
    db = root / "sharded.duckdb"
    if importlib.util.find_spec("ray") is not None:
        from autointerp.collect import ray_shards

        how = f"local Ray, {n_shards} CPUs (each worker loads the model; Ray's start included)"
        shards_s = timed(lambda: ray_shards.run(db, cfg, n_shards, list(range(n_shards)), None, num_cpus=n_shards))
    else:
        how = "in-process, one after the other (ray is not installed)"
        shards_s = timed(lambda: [collect_shard(db, cfg, n_shards, i, model=model) for i in range(n_shards)])
    merge_s = timed(lambda: merge_stage(db, cfg, n_shards))
    rows = {"shards": n_shards, "shards_how": how, "one_process_stage_tok_s": n_tok / one_s,
            "shards_tok_s": n_tok / shards_s, "merge_s": merge_s, "merge_tok_s": n_tok / merge_s,
            "shards_plus_merge_tok_s": n_tok / (shards_s + merge_s),
            "shards_plus_merge_vs_one_process": one_s / (shards_s + merge_s)}
    print(f"  {n_shards} shards: {how}")
    print(f"    one process (collect_stage, DuckDB write included)  {rows['one_process_stage_tok_s']:9.0f} tok/s")
    print(f"    {n_shards} shards                                        {rows['shards_tok_s']:9.0f} tok/s")
    print(f"    merge (read shard files, merge, write DuckDB)       {merge_s:9.1f} s = {rows['merge_tok_s']:.0f} tok/s")
    print(f"    shards + merge                                      {rows['shards_plus_merge_tok_s']:9.0f} tok/s = "
          f"{rows['shards_plus_merge_vs_one_process']:.2f}x one process")
    return rows


if __name__ == "__main__":
    main()
