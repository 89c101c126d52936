"""Collection throughput and memory against their limits, over the same tokens, in one run.

Prints tokens/s of (a) the full forward pass (unless --skip-full), (b) the forward pass up to the hook's layer,
(c) the feature reader alone: forward to the hook plus the SAE's encode, the least any collector must compute
(the limit), and (d) `collect` (the reader + top-k/reservoir/random buffers + statistics, then the result
tables), with ratios; the time to write the result to DuckDB; and peak RSS of the collection (buffers and one
batch) and of building its result, beside the formula of docs/guide/collect.md. With --shards N it also runs the same tokens
through the stages: one process (`collect_stage`), N shards (a local Ray with N CPUs when `ray` is importable,
else in-process one after the other) and the merge, each in tokens/s. With --sae-width, features are latents of
an SAE of that width with random directions: --sae-kind dense (about half the latents fire on every token: the
worst case), topk (k per token, the sparsify format) or jumprelu (thresholds giving a mean L0 of --l0); --saes
measures several in turn and prints the table. Each figure is printed in wall time and in process CPU seconds
(steadier on shared cores), beside its limit, and written to --out as JSON with the load average of the
machine before and after, and the seconds per GiB that fresh memory costs when first written (a probe: on a VM that
backs guest memory lazily, as this one does, it is several times a backed machine's, and the collector's buffers are fresh
memory), with the seconds in the kernel and the page faults of each part.

    python bench/collect.py --tokens 20000
    python bench/collect.py --tokens 60000 --hook blocks.3.hook_resid_post --skip-full \
        --saes topk:16384,jumprelu:16384,dense:16384
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib.util
import json
import os
import pstats
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import autointerp  # noqa: E402, F401, I001  before torch, as in the CLI: it sets up PyTorch's allocator

import numpy as np  # noqa: E402
import torch  # noqa: E402

from autointerp import models, store  # noqa: E402
from autointerp.allocator import heap_only, lazy_zeros  # noqa: E402
from autointerp.collect import corpus  # noqa: E402
from autointerp.collect.collector import collect_contexts  # noqa: E402
from autointerp.collect.memory import collect_memory  # noqa: E402
from autointerp.collect.stage import collect_stage, token_strings  # noqa: E402
from autointerp.config import CollectConfig  # noqa: E402

GIB = 2**30
SAE_KINDS = ("dense", "topk", "jumprelu")


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
KERNEL: dict[str, dict[str, float]] = {}  # of those, seconds in the kernel (mostly page faults) and the faults


def timed(fn: Callable[[], Any], name: str = "") -> float:
    """Wall seconds of fn(); its process CPU seconds go to CPU[name]. On shared cores the CPU time is the
    steadier measure of work: wall time also counts waiting for a core."""
    t, c, r = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    fn()
    CPU[name] = time.process_time() - c
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    KERNEL[name] = {"sys_s": r1.ru_stime - r.ru_stime, "faults": r1.ru_minflt - r.ru_minflt + r1.ru_majflt - r.ru_majflt}
    return time.perf_counter() - t


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--ctx-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--hook", default="blocks.6.mlp.hook_post")
    ap.add_argument("--sae-width", type=int, default=0, help="latents of one SAE of --sae-kind (0: the hook's neurons)")
    ap.add_argument("--sae-kind", choices=SAE_KINDS, default="dense")
    ap.add_argument("--saes", default="", help="a table: KIND:WIDTH,... (e.g. topk:16384,jumprelu:16384,dense:16384)"
                    ", each measured in turn; replaces --sae-width")
    ap.add_argument("--k", type=int, default=64, help="latents per token of the TopK SAE")
    ap.add_argument("--l0", type=float, default=50.0, help="mean latents per token the JumpReLU thresholds aim at")
    ap.add_argument("--skip-full", action="store_true", help="skip the full forward pass (slow on CPU)")
    ap.add_argument("--compare-dense", action="store_true",
                    help="also time the buffers with every batch on the dense path (the path before the sparse one)")
    ap.add_argument("--profile", type=int, default=0, help="print the collector's top N functions by own CPU time")
    ap.add_argument("--shards", type=int, default=0, help="also time N shards and their merge (0: skip)")
    ap.add_argument("--out", default="bench/results/collect.json")
    return ap.parse_args()


def first_touch_s_per_gib(mib: int = 256) -> float:
    """Seconds per GiB to allocate and first write fresh memory of the kind the collector's buffers get
    (allocator.lazy_zeros: page faults, zeroing; on some VMs the host's backing of the guest's pages too): about 0.1-0.4
    on a machine whose memory is backed, several times that on a VM whose memory is backed lazily. The reader reuses
    its batch's memory."""
    t = time.perf_counter()
    a = lazy_zeros((mib << 18,))
    a.fill(1.0)
    s = (time.perf_counter() - t) * 1024 / mib
    del a
    return s


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()
    touch = {"start": first_touch_s_per_gib()}
    print(f"fresh memory: {touch['start']:.2f} s/GiB to allocate and first write")
    model = models.load_model(models.OFFLINE_MODEL)
    specs = [(k, int(w)) for k, w in (s.split(":") for s in args.saes.split(","))] if args.saes else \
        [(args.sae_kind if args.sae_width else "neurons", args.sae_width)]
    table: list[dict[str, Any]] = []
    for kind, width in specs:
        table.append(bench_one(args, model, kind, width))
        gc.collect()
        save(args.out, {"table": [{k: v for k, v in r.items() if k != "_cfg"} for r in table], "complete": False,
                        "load_before": load_before, "load_now": os.getloadavg()})  # a stopped run keeps its rows
    last_cfg = table[-1]["_cfg"]
    for row in table:
        row.pop("_cfg")  # a CollectConfig: not JSON, and not a figure
    out: dict[str, Any] = dict(table[0]) if len(table) == 1 else {"table": table, "complete": True}
    if args.shards:
        out.update(bench_shards(last_cfg, model, args.shards, table[-1]["tokens"]))
    touch["end"] = first_touch_s_per_gib()
    out["load_before"], out["load_after"] = load_before, os.getloadavg()
    out["fresh_memory_s_per_gib_run"] = touch  # start and end; each row has its own
    print(f"load average {load_before[0]:.2f} before, {out['load_after'][0]:.2f} after ({os.cpu_count()} cores); "
          f"memory first touch {touch['end']:.2f} s/GiB at the end")
    if len(table) > 1:
        print_table(table)
    save(args.out, out)


def save(path: str, out: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=1))


def make_sae(args: argparse.Namespace, model: Any, kind: str, width: int, sample: list[torch.Tensor]) -> Path:
    """An SAE of `kind` at `width` latents with random directions, saved in the format its kind comes in: the
    dense worst case (a SAELens ReLU SAE whose latents fire on about half the tokens), TopK (sparsify, k latents
    per token) or JumpReLU (thresholds set so the sample's mean L0 is --l0)."""
    from tests.helpers import make_jumprelu_sae_file, make_sae_dir, make_topk_sae_dir, random_encoder

    d_in = model.cfg.d_mlp if "mlp.hook_post" in args.hook else model.cfg.d_model
    root = Path(tempfile.mkdtemp())
    if kind == "dense":
        return make_sae_dir(root / "sae", args.hook, d_in=d_in, d_sae=width)
    if kind == "topk":
        return make_topk_sae_dir(root / "sae", args.hook, d_in=d_in, d_sae=width, k=args.k)
    enc = random_encoder(d_in, width)
    hook = models.FeatureReader(model, args.hook)
    x = torch.cat([hook(b)[:, 1:].reshape(-1, d_in) for b in sample])
    pre = x @ enc
    mean, std = pre.mean(0), pre.std(0)
    lo, hi = 0.0, 20.0  # z: the threshold in standard deviations above each latent's mean, one z for all
    for _ in range(30):
        z = (lo + hi) / 2
        l0 = float((pre > mean + z * std).sum(1).float().mean())
        lo, hi = (z, hi) if l0 > args.l0 else (lo, z)
    return make_jumprelu_sae_file(root / "sae.safetensors", args.hook, enc, (mean + hi * std).clamp(min=0))


def bench_one(args: argparse.Namespace, model: Any, kind: str, width: int) -> dict[str, Any]:
    """One dictionary's collect, reader and forward-to-hook figures over the same tokens, wall and CPU."""
    cfg0 = CollectConfig(model=models.OFFLINE_MODEL, hook=args.hook, n_tokens=args.tokens, ctx_len=args.ctx_len,
                         batch_size=args.batch_size, device="cpu")
    ctxs = list(corpus.contexts(corpus.pieces("default"), model.tokenizer, cfg0.ctx_len, cfg0.n_tokens // cfg0.ctx_len))
    bos = model.tokenizer.bos_token_id
    batches = [torch.cat([torch.full((len(b), 1), bos), torch.from_numpy(np.stack(b))], 1)
               for b in (ctxs[i : i + cfg0.batch_size] for i in range(0, len(ctxs), cfg0.batch_size))]
    sae_path = make_sae(args, model, kind, width, batches[:4]) if width else None
    sae = models.load_sae(str(sae_path)) if sae_path else None
    reader = models.FeatureReader(model, args.hook, sae=sae, sparse=True)  # as the collect stage reads
    cfg = cfg0.model_copy(update={"hook": None, "sae": str(sae_path)}) if sae_path else cfg0
    n_params = sum(p.numel() * p.element_size() for p in model.parameters())
    n_params += sum(p.numel() * p.element_size() for p in sae.parameters()) if sae is not None else 0
    first = reader(batches[0])
    first = (first.to_dense() if first.is_sparse else first)[:, 1:]
    l0 = float((first != 0).sum(-1).float().mean())
    touch = first_touch_s_per_gib()
    rows = measure(args, model, reader, cfg, ctxs, batches, bos)
    rows.update(memory_first_touch_s_per_gib=touch, kind=kind, sae_width=width, l0=l0,
                density=l0 / reader.n_features, weights_gib=n_params / GIB)
    report(rows, n_params)
    rows["_cfg"] = cfg
    return rows


def measure(args: argparse.Namespace, model: Any, reader: Any, cfg: CollectConfig, ctxs: list[np.ndarray],
            batches: list[torch.Tensor], bos: int) -> dict[str, Any]:
    """Times (wall and process CPU) and peak RSS of collect (buffers, then result tables), the reader and the
    forward pass to the hook, over the same batches; then the DuckDB write."""
    n_tok = len(ctxs) * cfg.ctx_len
    stop = models.stop_layer(args.hook, model.cfg.n_layers)

    # The limit runs as collection runs its reader: blocks from the heap, reused batch after batch (heap_only).
    def forward(stop_at: int | None) -> None:
        with torch.no_grad(), heap_only():
            for b in batches:
                model(b, stop_at_layer=stop_at)  # outputs dropped at once: only time is measured

    def read() -> None:
        with heap_only():
            for b in batches:
                reader(b)

    read()  # warm-up, and the allocator's pools for one batch
    base_rss = rss_now()  # model, SAE, tokens, one batch's pools: what any collector holds before it starts
    out: dict[str, Any] = {}
    profiler = cProfile.Profile() if args.profile else None

    def run() -> None:
        if profiler:
            profiler.enable()
        out["collector"], _ = collect_contexts(cfg, reader, reader.n_features, iter(ctxs), bos)
        if profiler:
            profiler.disable()

    with PeakRSS() as mem_collect:
        buffers_s = timed(run, "buffers")
    if profiler:
        print(f"profile of the buffers (default path), top {args.profile} by own time:")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    dense: dict[str, Any] = {}
    if args.compare_dense:
        dense = compare_dense(args, reader, cfg, ctxs, bos, n_tok)
    collector = out.pop("collector")
    with PeakRSS() as mem_result:
        result_s = timed(lambda c=collector: out.update(result=c.result(token_strings(model.tokenizer))), "result")
    del collector
    result = out.pop("result")
    read_s = timed(read, "read")
    to_hook_s = timed(lambda: forward(stop), "to_hook")
    full_s = timed(lambda: forward(None)) if not args.skip_full else float("nan")
    write_s = timed(lambda: write_db(args.hook, reader, cfg, result), "duckdb_write")
    formula = collect_memory(cfg, reader.n_features)
    collect_s, collect_cpu = buffers_s + result_s, CPU["buffers"] + CPU["result"]
    return {
        "tokens": n_tok, "features": reader.n_features, "hook": args.hook,
        "batch_size": cfg.batch_size, "ctx_len": cfg.ctx_len,
        "full_forward_tok_s": n_tok / full_s, "forward_to_hook_tok_s": n_tok / to_hook_s,
        "reader_tok_s": n_tok / read_s, "collect_tok_s": n_tok / collect_s,
        "collect_buffers_s": buffers_s, "collect_result_s": result_s,
        "collect_vs_reader": read_s / collect_s,
        "cpu_s": dict(CPU),
        "cpu_us_per_token": {"collect": 1e6 * collect_cpu / n_tok, "reader": 1e6 * CPU["read"] / n_tok,
                             "to_hook": 1e6 * CPU["to_hook"] / n_tok},
        "collect_vs_reader_cpu": CPU["read"] / collect_cpu,
        "kernel": dict(KERNEL),
        "collect_vs_reader_user_cpu": (CPU["read"] - KERNEL["read"]["sys_s"]) / (
            collect_cpu - KERNEL["buffers"]["sys_s"] - KERNEL["result"]["sys_s"]),
        "collect_vs_forward_to_hook": to_hook_s / collect_s,
        "collect_vs_forward_to_hook_cpu": CPU["to_hook"] / collect_cpu,
        "collect_vs_full_forward": full_s / collect_s,
        "duckdb_write_s": write_s, "examples_rows": result.examples.num_rows,
        "rss_base_gib": base_rss / GIB,
        "rss_peak_collect_gib": mem_collect.peak / GIB, "rss_peak_result_gib": mem_result.peak / GIB,
        "rss_collect_over_base_gib": (mem_collect.peak - base_rss) / GIB,
        "rss_result_over_base_gib": (mem_result.peak - base_rss) / GIB,
        "formula_collect_gib": formula.collect / GIB, "formula_result_gib": formula.result / GIB,
        "ru_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), **dense,
    }


def compare_dense(args: argparse.Namespace, reader: Any, cfg: CollectConfig, ctxs: list[np.ndarray], bos: int,
                  n_tok: int) -> dict[str, Any]:
    """The buffers' wall and CPU seconds with every batch on the dense path, profiled like the default run."""
    profiler = cProfile.Profile() if args.profile else None

    def run() -> None:
        if profiler:
            profiler.enable()
        collect_contexts(cfg, reader, reader.n_features, iter(ctxs), bos, max_density=0.0)
        if profiler:
            profiler.disable()

    wall = timed(run, "buffers_dense_path")
    if profiler:
        print(f"profile of the buffers on the dense path, top {args.profile} by own time:")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    cpu = CPU["buffers_dense_path"]
    print(f"  buffers on the dense path {wall:.1f} s ({cpu:.1f} CPU) against {CPU['buffers']:.1f} CPU s by default")
    return {"dense_path_buffers_s": wall, "dense_path_buffers_cpu_s": cpu,
            "dense_path_cpu_us_per_token": 1e6 * cpu / n_tok}


def write_db(hook: str, reader: Any, cfg: CollectConfig, result: Any) -> None:
    import pyarrow as pa

    with store.open_store(Path(tempfile.mkdtemp()) / "bench.duckdb") as con:
        did = store.begin_dictionary(con, model="m", hook=hook, kind=reader.kind, sae=None, random_init=False,
                                     seed=0, dataset="default", ctx_len=cfg.ctx_len, n_features=reader.n_features,
                                     config_hash="bench", config={})

        def ids(t: Any) -> Any:
            return t.append_column("dictionary_id", pa.array([did] * t.num_rows, pa.int32()))

        store.complete_dictionary(con, did, n_tokens=result.n_tokens, n_contexts=result.n_contexts,
                                  sequences=ids(result.sequences), features=ids(result.features),
                                  examples=ids(result.examples))


def report(rows: dict[str, Any], n_params: int) -> None:
    cpu, per = rows["cpu_s"], rows["cpu_us_per_token"]
    print(f"{rows['kind']} {rows['sae_width'] or ''}: tokens {rows['tokens']:,}  features {rows['features']:,}  "
          f"hook {rows['hook']}  L0 {rows['l0']:.1f} ({100 * rows['density']:.2f}% of features per token)")
    print(f"  full forward pass      {rows['full_forward_tok_s']:9.0f} tok/s")
    print(f"  forward to the hook    {rows['forward_to_hook_tok_s']:9.0f} tok/s   {per['to_hook']:7.1f} CPU us/token")
    print(f"  reader (+ SAE encode)  {rows['reader_tok_s']:9.0f} tok/s   {per['reader']:7.1f} CPU us/token  <- the limit")
    print(f"  collect                {rows['collect_tok_s']:9.0f} tok/s   {per['collect']:7.1f} CPU us/token  = "
          f"{rows['collect_vs_reader']:.2f}x the limit in wall time, {rows['collect_vs_reader_cpu']:.2f}x in CPU "
          f"(goal >= 0.80); buffers {rows['collect_buffers_s']:.1f} s ({cpu['buffers']:.1f} CPU) + result "
          f"{rows['collect_result_s']:.1f} s ({cpu['result']:.1f} CPU)")
    k = rows["kernel"]
    print(f"  in the kernel          collect {k['buffers']['sys_s'] + k['result']['sys_s']:.1f} s "
          f"({k['buffers']['faults'] + k['result']['faults']:,} page faults), reader {k['read']['sys_s']:.1f} s "
          f"({k['read']['faults']:,}); fresh memory {rows['memory_first_touch_s_per_gib']:.2f} s/GiB; "
          f"collect / limit in user CPU {rows['collect_vs_reader_user_cpu']:.2f}x")
    print(f"  write to DuckDB        {rows['duckdb_write_s']:9.2f} s for {rows['examples_rows']:,} example rows")
    print(f"  RSS before collecting  {rows['rss_base_gib']:9.2f} GiB (weights {n_params / GIB:.2f} GiB, tokens, one batch)")
    for name in ("collect", "result"):
        over, want = rows[f"rss_{name}_over_base_gib"], rows[f"formula_{name}_gib"]
        print(f"  peak RSS of {name:9s}  {over:9.2f} GiB over that = {over / want:.2f}x the formula of docs/guide/collect.md "
              f"{want:.2f} GiB (goal within 25%)")


def print_table(table: list[dict[str, Any]]) -> None:
    print("| SAE | latents | L0 | forward to hook tok/s | forward + encode tok/s | collect tok/s | collect / limit, "
          "wall | CPU us/token: hook, encode, collect | collect / limit, CPU | kernel s: reader, collect | "
          "collect / limit, user CPU | fresh memory s/GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        per, k = r["cpu_us_per_token"], r["kernel"]
        print(f"| {r['kind']} | {r['sae_width']} | {r['l0']:.0f} | {r['forward_to_hook_tok_s']:.0f} | "
              f"{r['reader_tok_s']:.0f} | {r['collect_tok_s']:.0f} | {r['collect_vs_reader']:.2f} | "
              f"{per['to_hook']:.0f}, {per['reader']:.0f}, {per['collect']:.0f} | {r['collect_vs_reader_cpu']:.2f} | "
              f"{k['read']['sys_s']:.1f}, {k['buffers']['sys_s'] + k['result']['sys_s']:.1f} | "
              f"{r['collect_vs_reader_user_cpu']:.2f} | {r['memory_first_touch_s_per_gib']:.2f} |")


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
