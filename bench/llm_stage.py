"""Explain + score throughput against the loopback OpenAI server, and prompt sizes beside the peers'.

1. Pipeline overhead: features/s with a zero-latency server.
2. With 100 ms per request at concurrency 32 and 128, features/s beside the limit: a feature makes
   R requests in sequence (explain, simulate, detection, fuzzing; R measured from llm_calls), so the
   limit is concurrency / (R x latency).
3. Tokens per feature (SmolLM2 tokenizer) for our explain and simulation prompts, beside the same
   contexts formatted as OpenAI's neuron_explainer and Delphi format them (their framing text and
   few-shot examples are not included, so their real prompts are larger than shown here).

    python bench/llm_stage.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autointerp import explain, prompts, simulate  # noqa: E402
from autointerp.config import CollectConfig, LabelConfig, LLMConfig  # noqa: E402
from autointerp.models import load_model  # noqa: E402
from autointerp.stages.collect import collect_stage  # noqa: E402
from autointerp.stages.label import label_stage, open_llm, scoring_contexts  # noqa: E402
from autointerp.store import open_store, read_feature_contexts  # noqa: E402
from tests.helpers import make_model_dir, write_corpus  # noqa: E402


@contextlib.contextmanager
def server_process(latency: float):
    """The loopback server in its own process, so its work does not share our GIL."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "llm_server.py"), str(latency)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait()


def run_batch(db: Path, url: str, features: list[int], concurrency: int) -> tuple[float, float, float]:
    """(features/s, our process's CPU seconds per feature, requests per feature)."""
    llm_cfg = LLMConfig(base_urls=(url,), explainer_model="e", simulator_model="s", concurrency=concurrency,
                        timeout_s=30)
    cfg = LabelConfig(baseline=False, null_samples=0)
    start, cpu = time.perf_counter(), time.process_time()
    with open_llm(llm_cfg) as session:
        progress = label_stage(db, 1, features, cfg, session, concurrency=concurrency)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert progress.scored == len(features), progress
    with open_store(db, read_only=True) as con:
        n_calls = con.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    return len(features) / elapsed, cpu / len(features), n_calls / len(features)


def openai_style_explain(contexts, max_act: float) -> str:
    rows = []
    for c in contexts:
        levels = [min(10, max(0, round(10 * a / max_act))) for a in c.acts] if max_act > 0 else [0] * len(c.acts)
        rows.append("<start>\n" + "".join(f"{t}\t{s}\n" for t, s in zip(c.tokens, levels, strict=True)) + "<end>")
    return "Neuron 1\nActivations:\n" + "\n".join(rows) + \
        "\nExplanation of neuron 1 behavior: the main thing this neuron does is find"


def delphi_style_explain(contexts, max_act: float) -> str:
    out = []
    for i, c in enumerate(contexts, 1):
        levels = [round(10 * a / max_act) if max_act > 0 else 0 for a in c.acts]
        text = "".join(f"<<{t}>>" if s > 0 else t for t, s in zip(c.tokens, levels, strict=True))
        acts = ", ".join(f"({t}, {s})" for t, s in zip(c.tokens, levels, strict=True) if s > 0)
        out.append(f"Example {i}: {text}\nActivations: {acts}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=256)
    ap.add_argument("--out", default="bench/results/llm_stage.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    model_dir = make_model_dir(tmp / "model", n_embd=128)
    base = tmp / "base.duckdb"
    collect_stage(base, CollectConfig(model=str(model_dir), hook="blocks.0.mlp.hook_post",
                                      dataset=str(write_corpus(tmp / "c.txt", 400)), n_tokens=20_000, ctx_len=64),
                  model=load_model(str(model_dir)))
    features = list(range(args.features))
    results: dict[str, object] = {"features": args.features}
    for name, latency, conc in (("zero_latency_c32", 0.0, 32), ("latency100ms_c32", 0.1, 32),
                                ("latency100ms_c128", 0.1, 128)):
        db = tmp / f"{name}.duckdb"
        db.write_bytes(base.read_bytes())
        with server_process(latency) as url:
            rate, cpu, per_feature = run_batch(db, url, features, conc)
        limit = conc / (per_feature * latency) if latency else float("inf")
        results[name] = {"features_per_s": rate, "limit_features_per_s": limit, "requests_per_feature": per_feature,
                         "share_of_limit": rate / limit if latency else None, "client_cpu_s_per_feature": cpu}
        print(f"{name:20s} {rate:8.1f} features/s   limit {limit:8.1f}"
              + (f" ({rate / limit:4.0%})" if latency else "       ")
              + f"   our CPU {1000 * cpu:5.1f} ms/feature (alone: {1 / cpu:5.0f} features/s per core)"
              + f"   {per_feature:.2f} requests/feature")

    from transformers import AutoTokenizer

    from autointerp.models import offline_hf_dir

    tok = AutoTokenizer.from_pretrained(offline_hf_dir())
    with open_store(base, read_only=True) as con:
        records = read_feature_contexts(con, 1, features[:32])
    sizes: dict[str, list[int]] = {k: [] for k in ("ours_explain", "openai_explain", "delphi_explain",
                                                   "ours_simulate", "openai_simulate")}
    cfg = LabelConfig()
    for fc in records.values():
        ctxs = explain.explain_contexts(fc, cfg.n_explain_top, cfg.n_explain_quantile)
        ours = prompts.render("explain.system") + prompts.render("explain.user",
                                                                  excerpts=explain.format_excerpts(ctxs, fc.max_act))
        sizes["ours_explain"].append(len(tok(ours).input_ids))
        sizes["openai_explain"].append(len(tok(openai_style_explain(ctxs, fc.max_act)).input_ids))
        sizes["delphi_explain"].append(len(tok(delphi_style_explain(ctxs, fc.max_act)).input_ids))
        sim_ctxs = [c for c, _ in scoring_contexts(fc, cfg)]
        # one echo prompt per context
        sizes["ours_simulate"].append(sum(len(tok(simulate.echo_prompt("numbers and dates", c.tokens)[0]).input_ids)
                                          for c in sim_ctxs))
        sizes["openai_simulate"].append(len(tok(openai_style_explain(sim_ctxs, 1.0)).input_ids))
    means = {k: sum(v) / len(v) for k, v in sizes.items()}
    results["prompt_tokens_per_feature"] = means
    print("prompt tokens per feature (SmolLM2 tokenizer, same contexts):")
    print(f"  explain   ours {means['ours_explain']:7.0f}   OpenAI-style {means['openai_explain']:7.0f}   "
          f"Delphi-style {means['delphi_explain']:7.0f}")
    print(f"  simulate  ours {means['ours_simulate']:7.0f}   OpenAI-style {means['openai_simulate']:7.0f}")
    print("  completion tokens per feature: explain <= 60 (one phrase), simulate 1 (echo)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
