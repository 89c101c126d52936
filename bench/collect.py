"""Collection throughput against a bare forward pass of the same model over the same tokens, in one run.

Prints tokens/s of (a) the full forward pass, (b) the forward pass up to the hook's layer, which is
the least any collector must compute, and (c) `collect` (forward to the hook + top-k/quantile/random
buffers + statistics), with ratios, then the time to write the result to DuckDB and peak RSS.
With --sae-width, features are latents of a random SAE of that width (memory scaling check).

    python bench/collect.py --tokens 20000
    python bench/collect.py --tokens 20000 --sae-width 16384 --hook blocks.3.hook_resid_post
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autointerp import corpus, models, store
from autointerp.collect import run_collection
from autointerp.config import CollectConfig
from autointerp.stages.collect import token_strings


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--ctx-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--hook", default="blocks.6.mlp.hook_post")
    ap.add_argument("--sae-width", type=int, default=0)
    ap.add_argument("--skip-full", action="store_true", help="skip the full forward pass (slow on CPU)")
    ap.add_argument("--out", default="bench/results/collect.json")
    args = ap.parse_args()

    model = models.load_model(models.OFFLINE_MODEL)
    sae = None
    if args.sae_width:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.helpers import make_sae_dir

        tmp = Path(tempfile.mkdtemp())
        d_in = model.cfg.d_mlp if "mlp.hook_post" in args.hook else model.cfg.d_model
        sae = models.load_sae(str(make_sae_dir(tmp / "sae", args.hook, d_in=d_in, d_sae=args.sae_width)))
    reader = models.FeatureReader(model, args.hook, sae=sae)
    cfg = CollectConfig(hook=args.hook, n_tokens=args.tokens, ctx_len=args.ctx_len, batch_size=args.batch_size)
    ctxs = list(corpus.contexts(corpus.pieces("default"), model.tokenizer, cfg.ctx_len, cfg.n_tokens // cfg.ctx_len))
    n_tok = len(ctxs) * cfg.ctx_len
    bos = model.tokenizer.bos_token_id
    batches = [torch.cat([torch.full((len(b), 1), bos), torch.from_numpy(np.stack(b))], 1)
               for b in (ctxs[i : i + cfg.batch_size] for i in range(0, len(ctxs), cfg.batch_size))]
    strings = token_strings(model.tokenizer)
    stop = models.stop_layer(args.hook, model.cfg.n_layers)

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def forward(stop_at: int | None) -> None:
        with torch.no_grad():
            for b in batches:
                model(b, stop_at_layer=stop_at)  # outputs dropped at once: only time is measured

    forward(stop)  # warm-up
    result = None

    def run() -> None:
        nonlocal result
        result = run_collection(cfg, reader, reader.n_features, iter(ctxs), strings, bos)

    collect_s = timed(run)
    collect_rss = rss_gib()  # peak so far: model + collection (the forward passes below are measured after)
    to_hook_s = timed(lambda: forward(stop))
    full_s = timed(lambda: forward(None)) if not args.skip_full else float("nan")
    assert result is not None
    db = Path(tempfile.mkdtemp()) / "bench.duckdb"

    def write() -> None:
        import pyarrow as pa

        with store.open_store(db) as con:
            did = store.begin_dictionary(con, model="m", hook=args.hook, kind=reader.kind, sae=None, random_init=False,
                                         seed=0, dataset="default", ctx_len=cfg.ctx_len, n_features=reader.n_features,
                                         config_hash="bench", config={})

            def ids(t):
                return t.append_column("dictionary_id", pa.array([did] * t.num_rows, pa.int32()))

            store.complete_dictionary(con, did, n_tokens=result.n_tokens, n_contexts=result.n_contexts,
                                      sequences=ids(result.sequences), features=ids(result.features),
                                      examples=ids(result.examples))

    write_s = timed(write)
    rows = {
        "tokens": n_tok,
        "features": reader.n_features,
        "hook": args.hook,
        "full_forward_tok_s": n_tok / full_s,
        "forward_to_hook_tok_s": n_tok / to_hook_s,
        "collect_tok_s": n_tok / collect_s,
        "collect_vs_forward_to_hook": to_hook_s / collect_s,
        "collect_vs_full_forward": full_s / collect_s,
        "duckdb_write_s": write_s,
        "examples_rows": result.examples.num_rows,
        "peak_rss_gib_collect": collect_rss,
        "threads": torch.get_num_threads(),
    }
    print(f"tokens {n_tok:,}  features {reader.n_features:,}  hook {args.hook}")
    print(f"  full forward pass      {rows['full_forward_tok_s']:9.0f} tok/s")
    print(f"  forward to the hook    {rows['forward_to_hook_tok_s']:9.0f} tok/s   <- the limit")
    print(f"  collect                {rows['collect_tok_s']:9.0f} tok/s   = {rows['collect_vs_forward_to_hook']:.2f}x "
          f"the limit (target >= 0.90), {rows['collect_vs_full_forward']:.2f}x the full forward pass")
    print(f"  write to DuckDB        {write_s:9.2f} s for {result.examples.num_rows:,} example rows")
    print(f"  peak RSS of collect    {collect_rss:9.2f} GiB (model, buffers, one batch)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
