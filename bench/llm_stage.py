"""Explain + score throughput against the loopback OpenAI server, and prompt sizes beside the peers'.

1. Pipeline overhead: features/s with a zero-latency server.
2. With 100 ms per request at concurrency 32 and 128, features/s beside the limit: a feature makes
   R requests in sequence (explain, simulate, detection, fuzzing; R measured from llm_calls), so the
   limit is concurrency / (R x latency). Each setting runs with one client process and with more (--processes),
   and prints the client's CPU per feature (its processes' together) beside the server's: on a machine whose cores
   both share, no client can go faster than cores / (client + server CPU per feature).
3. Prompt and completion tokens per feature (SmolLM2 tokenizer) for explain, simulate and the judges:
   ours (the exact request bodies the live and batch paths send) beside OpenAI's neuron_explainer and
   Delphi's prompts for the same contexts and label, built by their own prompt code (framing and
   few-shot examples included) from checkouts given with --openai-src / --delphi-src; the ratio beside
   the goal (<= 0.5x); the share of prompt tokens a prefix cache serves in sending order; USD per
   1,000 features live and batch at the built-in gpt-4o-mini prices, without and with the cache.

    python bench/llm_stage.py --openai-src ../automated-interpretability --delphi-src ../delphi
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autointerp.config import CollectConfig, LabelConfig, LLMConfig  # noqa: E402
from autointerp.label import explain  # noqa: E402
from autointerp.label.stage import label_stage, open_llm  # noqa: E402
from autointerp.label.units import judged_view, scoring_contexts  # noqa: E402
from autointerp.store import open_store, read_feature_contexts  # noqa: E402


@contextlib.contextmanager
def server_process(latency: float):
    """The loopback server in its own process, so its work does not share our GIL."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "llm_server.py"), str(latency)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        yield proc.stdout.readline().strip(), proc.pid
    finally:
        proc.terminate()
        proc.wait()


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` so far, from /proc (the server's, while it runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of our finished, waited-for child processes (the label stage's client processes)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_batch(db: Path, url: str, features: list[int], concurrency: int,
              profile: Path | None = None, processes: int = 1) -> tuple[float, float, float]:
    """(features/s, the client's CPU seconds per feature: ours and our client processes', requests per feature), at
    the default label settings (baseline, null labels and the reference included) but `processes`."""
    import cProfile

    llm_cfg = LLMConfig(base_urls=(url,), explainer_model="e", simulator_model="s", concurrency=concurrency,
                        timeout_s=30, processes=processes)
    cfg = LabelConfig()
    prof = cProfile.Profile() if profile else None
    start, cpu = time.perf_counter(), time.process_time() + children_cpu_s()
    with open_llm(llm_cfg) as session:
        if prof is not None:
            prof.enable()
        progress = label_stage(db, 1, features, cfg, session, concurrency=concurrency)
        if prof is not None:
            prof.disable()
    elapsed, cpu = time.perf_counter() - start, time.process_time() + children_cpu_s() - cpu
    if prof is not None and profile is not None:
        prof.dump_stats(str(profile))
    assert progress.scored == len(features), progress
    with open_store(db, read_only=True) as con:
        n_calls = con.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    return len(features) / elapsed, cpu / len(features), n_calls / len(features)


def run_batch_api(db: Path, url: str, features: list[int]) -> tuple[float, float, int]:
    """The same work through the Batch API path (the loopback server's files and batches endpoints):
    (wall seconds, our process's CPU seconds per feature: building the JSONL, polling, ingesting, batches)."""
    import os

    from autointerp.label.batch import batch_stage

    # The loopback server runs a whole batch inside the poll that finds it done: a long timeout for that poll.
    llm_cfg = LLMConfig(base_urls=(url,), explainer_model="e", simulator_model="s", timeout_s=600, batch_api=True,
                        batch_poll_s=0.2)
    cfg = LabelConfig(baseline=False, null_samples=0)
    os.environ.setdefault("OPENAI_API_KEY", "unused")
    start, cpu = time.perf_counter(), time.process_time()
    with open_llm(llm_cfg) as session:
        progress = batch_stage(db, 1, features, cfg, llm_cfg, session)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    # The batch stage counts each scored run: a feature's label and its constant reference label (on by default).
    assert progress.scored == len(features) * (2 if cfg.reference else 1), progress
    with open_store(db, read_only=True) as con:
        n_batches = con.execute("SELECT count(*) FROM batches").fetchone()[0]
    return elapsed, cpu / len(features), n_batches


class Counter:
    """Prompt tokens with the SmolLM2 tokenizer: a completions prompt as is; a chat prompt as its messages'
    contents plus 4 tokens of framing per message (OpenAI's rule of thumb, used for ours and theirs)."""

    def __init__(self, tok):
        self.tok = tok

    def ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tok(prompt).input_ids
        out: list[int] = []
        for m in prompt:
            out += [0, 0, 0] + self.tok(str(m["content"])).input_ids + [0]  # the 4 framing tokens
        return out

    def n(self, prompt) -> int:
        return len(self.ids(prompt))


def cached_share(seqs: list[list[int]], block: int, minimum: int = 0) -> float:
    """The share of prompt tokens a prefix cache serves when the prompts are sent in this order: each
    prompt's longest run of whole `block`-token blocks shared with the start of an earlier prompt (vLLM's
    prefix caching: block 16; OpenAI's prompt caching: 128-token steps, prompts of >= 1,024 tokens)."""
    seen: set[int] = set()
    cached = total = 0
    for ids in seqs:
        total += len(ids)
        h, hit, mine = 0, True, 0
        for k in range(len(ids) // block):
            h = hash((h, tuple(ids[k * block : (k + 1) * block])))
            if hit and h in seen:
                mine += block
            else:
                hit = False
                seen.add(h)
        cached += mine if len(ids) >= minimum else 0
    return cached / total if total else 0.0


# ---------------------------------------------------------------- the peers' prompts, built by their code
# Dev-only: given checkouts of openai/automated-interpretability and EleutherAI/delphi, their own prompt
# builders (framing, few-shot examples) make the prompts for the same contexts and label. Their heavy
# imports are stubbed: only prompt text is built, nothing is sent.


def _stub(name: str, **attrs) -> None:
    import types

    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules.setdefault(name, mod)


def openai_builders(src: Path, counter: Counter):
    """(explain(contexts, max_act) -> messages, simulate(label, tokens) -> prompt) from neuron_explainer."""
    import os

    class Encoding:  # prompt_builder measures prompts with tiktoken's cl100k; ours stands in
        def encode(self, text: str, allowed_special=None) -> list[int]:
            return counter.tok(text).input_ids

    _stub("tiktoken", get_encoding=lambda name: Encoding())
    _stub("boostedblob", ensure_session=lambda f: f)
    for name in ("blobfile", "orjson"):
        _stub(name)
    os.environ.setdefault("OPENAI_API_KEY", "unused")  # its api_client asserts a key at import
    sys.path.insert(0, str(src / "neuron-explainer"))
    from neuron_explainer.activations.activations import ActivationRecord
    from neuron_explainer.explanations.explainer import TokenActivationPairExplainer
    from neuron_explainer.explanations.prompt_builder import PromptFormat
    from neuron_explainer.explanations.simulator import ExplanationNeuronSimulator

    explainer = TokenActivationPairExplainer("gpt-4", prompt_format=PromptFormat.HARMONY_V4)

    def explain_prompt(contexts, max_act: float):
        records = [ActivationRecord(tokens=list(c.tokens), activations=list(c.acts)) for c in contexts]
        with contextlib.redirect_stdout(None):  # it prints when it drops few-shot records to fit 4k
            return explainer.make_explanation_prompt(all_activation_records=records, max_activation=max_act,
                                                     max_tokens_for_completion=60)

    def simulate_prompt(label: str, tokens: list[str]):
        sim = ExplanationNeuronSimulator("unused", label, prompt_format=PromptFormat.INSTRUCTION_FOLLOWING)
        return sim.make_simulation_prompt(tokens)

    return explain_prompt, simulate_prompt


def _load(path: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def delphi_builders(src: Path):
    """(explain(contexts, max_act), detection(label, excerpts), fuzzing(label, excerpts)) from Delphi's
    prompt modules (loaded by path: its package imports torch and more)."""
    import types

    pkg = types.ModuleType("delphi_default")
    pkg.__path__ = [str(src / "delphi" / "explainers" / "default")]
    sys.modules["delphi_default"] = pkg
    _load(src / "delphi/explainers/default/prompts.py", "delphi_default.prompts")
    builder = _load(src / "delphi/explainers/default/prompt_builder.py", "delphi_default.prompt_builder")
    detection = _load(src / "delphi/scorers/classifier/prompts/detection_prompt.py", "delphi_detection")
    fuzz = _load(src / "delphi/scorers/classifier/prompts/fuzz_prompt.py", "delphi_fuzz")

    def highlight(tokens, acts, threshold: float = 0.3) -> str:
        # Delphi's explainer format (Explainer._highlight, threshold 0.3 of the max): runs of active
        # tokens in one pair of << >>; then up to 11 ("token" : 0-10 activation) pairs.
        cut = max(acts) * threshold
        return marked(tokens, {i for i, a in enumerate(acts) if a > cut})

    def explain_prompt(contexts, max_act: float):
        parts = []
        for c in contexts:
            parts.append(highlight(c.tokens, c.acts))
            norm = [int(10 * a / max_act) if max_act > 0 else 0 for a in c.acts]
            pairs = [f'("{t}" : {n}), ' for t, a, n in zip(c.tokens, c.acts, norm, strict=True) if a > max(c.acts) * 0.3]
            parts.append("Activations: " + "".join(pairs[:11]))
        return builder.build_prompt(examples="\n".join(parts), activations=True, cot=False)

    def judge_prompts(module, label: str, texts: list[str], per_prompt: int = 5):
        # Delphi's classifier: "Example i: text" lines, num_examples_per_scorer_prompt (5) per prompt.
        out = []
        for k in range(0, len(texts), per_prompt):
            examples = "\n".join(f"Example {i}: {t}" for i, t in enumerate(texts[k : k + per_prompt]))
            out.append(module.prompt(examples=examples, explanation=label))
        return out

    return (explain_prompt, lambda label, texts: judge_prompts(detection, label, texts),
            lambda label, texts: judge_prompts(fuzz, label, texts))


def marked(tokens: list[str], marks: set[int]) -> str:
    out, i = "", 0
    while i < len(tokens):
        if i in marks:
            out += "<<"
            while i < len(tokens) and i in marks:
                out += tokens[i]
                i += 1
            out += ">>"
        else:
            out += tokens[i]
            i += 1
    return out


LABEL = "numbers and dates in lists"


def label_of(feature: int) -> str:
    """A label per feature: with one label for all, prompts of the contexts every feature shares (the
    random ones) would be identical and a prefix cache would serve them whole."""
    return f"{LABEL}, kind {feature}"


def token_figures(db: Path, features: list[int], openai_src: Path | None, delphi_src: Path | None) -> dict:
    """Prompt and completion tokens per feature (explain, simulate, judges), ours beside the peers' own
    prompts on the same contexts and label; cached-token shares; cost per 1,000 features."""
    from transformers import AutoTokenizer

    from autointerp.label import detect
    from autointerp.label.batch import BatchRun
    from autointerp.llm import client as llm
    from autointerp.models import offline_hf_dir

    counter = Counter(AutoTokenizer.from_pretrained(offline_hf_dir()))
    cfg = LabelConfig()
    run = BatchRun(db, 1, cfg, LLMConfig(), None, "e", "s")
    with open_store(db, read_only=True) as con:
        records = read_feature_contexts(con, 1, features)
    oai = openai_builders(openai_src, counter) if openai_src else None
    dlp = delphi_builders(delphi_src) if delphi_src else None
    rows: dict[str, list[list[int]]] = {}  # "who/part" -> prompt token ids in sending order
    completions: dict[str, int] = {}
    n_judged = 0

    def add(key: str, prompt) -> None:
        rows.setdefault(key, []).append(counter.ids(prompt))

    def answer(key: str, text: str) -> None:
        completions[key] = completions.get(key, 0) + counter.n(text)

    for fc in records.values():
        label = label_of(fc.feature)
        # Ours: the exact request bodies the live and batch paths send (BatchRun._requests).
        # Completions are the answer formats' tokens: a label; 1 generated token per echo request (0 for
        # OpenAI's); a judge's answer list for its excerpts.
        for r in run._requests("explain", "g", {"f": fc.feature, "a": 1}, fc, cfg, ("e", "s")):
            add("ours/explain", r.body["messages"])
            answer("ours/explain", label)
        judged = False
        for r in run._requests("score", "g", {"f": fc.feature, "e": "x", "l": label, "a": 1}, fc, cfg, ("e", "s")):
            part = r.custom_id.split(":")[4]
            key = "ours/simulate" if part.startswith("s") else "ours/judges"
            add(key, r.body.get("messages") or r.body["prompt"])
            if key == "ours/simulate":
                completions[key] = completions.get(key, 0) + r.body["max_tokens"]
            else:
                n_ex = r.body["messages"][-1]["content"].count("</excerpt")
                answer(key, json.dumps({"answers": [1] * n_ex}))
            judged |= key == "ours/judges"
        ctxs = explain.explain_contexts(fc, cfg.n_explain_top, cfg.n_explain_quantile)
        sim = [c for c, _ in scoring_contexts(fc, cfg)]
        if oai is not None:
            add("openai/explain", oai[0](ctxs, fc.max_act))
            answer("openai/explain", label)
            for c in sim:
                add("openai/simulate", oai[1](label, list(c.tokens)))
            completions.setdefault("openai/simulate", 0)
        if dlp is not None:
            add("delphi/explain", dlp[0](ctxs, fc.max_act))
            answer("delphi/explain", f"[EXPLANATION]: {label}")
            if judged:  # the same excerpts our judges show, in Delphi's format
                view = judged_view(fc, cfg)
                det = [("".join(c.tokens), y) for c, y in detect.detection_examples(view, cfg.n_judge, 0)]
                fuz = [(marked(c.tokens, m), y) for c, m, y in detect.fuzzing_examples(view, cfg.n_judge, 0)]
                for p in dlp[1](label, [t for t, _ in det]) + dlp[2](label, [t for t, _ in fuz]):
                    add("delphi/judges", p)
                    answer("delphi/judges", "[" + ",".join("1" * p[-1]["content"].count("Example ")) + "]")
        n_judged += judged
    n = len(records)
    out: dict[str, object] = {"features": n, "features_judged": n_judged, "label": label_of(0),
                              "tokenizer": "SmolLM2 (chat prompts: contents + 4 tokens per message)"}
    per_feature = {k: sum(map(len, v)) / n for k, v in rows.items()}
    # judges per judged feature, so the peers' and ours divide by the same features
    for k in [k for k in per_feature if k.endswith("/judges")]:
        per_feature[k] = sum(map(len, rows[k])) / max(n_judged, 1)
    out["prompt_tokens_per_feature"] = per_feature
    out["completion_tokens_per_feature"] = {
        **{k: v / (n_judged if k.endswith("/judges") else n) for k, v in completions.items()},
        "note": "the answer formats' tokens: the label (Delphi's with its '[EXPLANATION]: ' prefix); 1 generated "
                "token per echo request (OpenAI's asks for 0); each judge request's answer list"}
    out["cached_share"] = {k: {"vllm_block16": cached_share(v, 16), "openai_1024_128": cached_share(v, 128, 1024)}
                           for k, v in rows.items()}
    ratios = {}
    for part in ("explain", "simulate", "judges"):
        for peer in ("openai", "delphi"):
            if f"{peer}/{part}" in per_feature and f"ours/{part}" in per_feature:
                ratios[f"{part}_vs_{peer}"] = per_feature[f"ours/{part}"] / per_feature[f"{peer}/{part}"]
    ours_total = sum(per_feature.get(f"ours/{p}", 0.0) for p in ("explain", "simulate", "judges"))
    peer_total = (per_feature.get("delphi/explain", 0.0) + per_feature.get("openai/simulate", 0.0)
                  + per_feature.get("delphi/judges", 0.0))
    if peer_total:
        ratios["all_vs_peers (Delphi explain + OpenAI simulate + Delphi judges)"] = ours_total / peer_total
    out["ratio_ours_to_peer"] = ratios
    # Cost per 1,000 features at the built-in gpt-4o-mini prices, live and batch, without and with the
    # cache (OpenAI's rule) at the cached price.
    prices = llm.DEFAULT_PRICES["gpt-4o-mini"]
    comp = sum(v for k, v in out["completion_tokens_per_feature"].items() if k.startswith("ours/"))
    cached = sum(per_feature[f"ours/{p}"] * out["cached_share"][f"ours/{p}"]["openai_1024_128"]
                 for p in ("explain", "simulate", "judges") if f"ours/{p}" in per_feature)
    cost = {}
    for mode, batch in (("live", False), ("batch", True)):
        cost[mode] = 1000 * llm.cost({"m": prices}, "m", round(ours_total), round(comp), batch)
        cost[f"{mode}_with_cache"] = 1000 * llm.cost({"m": prices}, "m", round(ours_total), round(comp), batch,
                                                     round(cached))
    out["usd_per_1000_features_gpt-4o-mini"] = cost
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=256)
    ap.add_argument("--token-features", type=int, default=64, help="features whose prompts are measured")
    ap.add_argument("--openai-src", type=Path, default=None,
                    help="a checkout of openai/automated-interpretability (its prompt builders make its prompts)")
    ap.add_argument("--delphi-src", type=Path, default=None, help="a checkout of EleutherAI/delphi")
    ap.add_argument("--peer-commits", default=None, help="recorded in the results: which peer commits were used")
    ap.add_argument("--skip-throughput", action="store_true", help="only the token figures")
    ap.add_argument("--skip-tokens", action="store_true", help="only the throughput figures")
    ap.add_argument("--only", default=None, help="one throughput setting (zero_latency_c32, latency100ms_c32, "
                    "latency100ms_c128, batch_api)")
    ap.add_argument("--processes", default="1,2", help="client processes (LLMConfig.processes) to run each setting "
                    "with, comma-separated; a count above 1 is reported as SETTING_pN")
    ap.add_argument("--profile", type=Path, default=None, help="cProfile stats of the live runs, to this prefix")
    ap.add_argument("--out", default="bench/results/llm_stage.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    # Imported here: the client processes of --processes run this script's top level again (spawn), and the
    # model stack (torch, transformer_lens: ~6 s of CPU) would be counted as their start.
    from autointerp.collect.stage import collect_stage
    from autointerp.models import load_model
    from tests.helpers import make_model_dir, write_corpus

    model_dir = make_model_dir(tmp / "model", n_embd=128)
    base = tmp / "base.duckdb"
    collect_stage(base, CollectConfig(model=str(model_dir), hook="blocks.0.mlp.hook_post",
                                      dataset=str(write_corpus(tmp / "c.txt", 400)), n_tokens=20_000, ctx_len=64),
                  model=load_model(str(model_dir)))
    features = list(range(args.features))
    load = Path("/proc/loadavg").read_text().split()[:3]
    results: dict[str, object] = {"features": args.features, "cpus": os.cpu_count()}
    counts = [int(n) for n in args.processes.split(",")]
    for base_name, latency, conc in () if args.skip_throughput else (
            ("zero_latency_c32", 0.0, 32), ("latency100ms_c32", 0.1, 32), ("latency100ms_c128", 0.1, 128)):
        for n in counts:
            name = base_name if n == 1 else f"{base_name}_p{n}"
            if args.only not in (None, name, base_name):
                continue
            db = tmp / f"{name}.duckdb"
            db.write_bytes(base.read_bytes())
            profile = Path(f"{args.profile}.{name}") if args.profile else None
            with server_process(latency) as (url, pid):
                server = process_cpu_s(pid)
                rate, cpu, per_feature = run_batch(db, url, features, conc, profile, n)
                server = (process_cpu_s(pid) - server) / len(features)
            limit = conc / (per_feature * latency) if latency else float("inf")
            # Client and server share this machine's cores: neither can go faster than both together allow.
            machine = (os.cpu_count() or 1) / (cpu + server)
            results[name] = {"features_per_s": rate, "limit_features_per_s": limit, "requests_per_feature": per_feature,
                             "share_of_limit": rate / limit if latency else None, "client_cpu_s_per_feature": cpu,
                             "processes": n, "server_cpu_s_per_feature": server,
                             "machine_limit_features_per_s": machine}
            print(f"{name:24s} {rate:8.1f} features/s   limit {limit:8.1f}"
                  + (f" ({rate / limit:4.0%})" if latency else "       ")
                  + f"   client CPU {1000 * cpu:5.1f} ms/feature ({n} process{'es' if n > 1 else ''})"
                  + f"   server CPU {1000 * server:5.1f} ms/feature: both on {os.cpu_count()} cores <= {machine:5.1f}"
                  + f" features/s   {per_feature:.2f} requests/feature")

    if not args.skip_throughput and args.only in (None, "batch_api"):
        db = tmp / "batch_api.duckdb"
        db.write_bytes(base.read_bytes())
        with server_process(0.0) as (url, _):
            wall, cpu, n_batches = run_batch_api(db, url, features)
        results["batch_api"] = {"wall_s": wall, "client_cpu_s_per_feature": cpu, "batches": n_batches}
        print(f"{'batch_api':20s} {len(features) / wall:8.1f} features/s (server answers at once, polls every 0.2 s)"
              f"   our CPU {1000 * cpu:5.1f} ms/feature   {n_batches} batches")

    results["load_before_after"] = [load, Path("/proc/loadavg").read_text().split()[:3]]
    print(f"load average (1, 5, 15 min) before {' '.join(load)}, after {' '.join(results['load_before_after'][1])}"
          " (the machine may be shared: the figures are for this load)")
    if args.skip_tokens:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
        return
    tokens = token_figures(base, features[: args.token_features], args.openai_src, args.delphi_src)
    results["tokens"] = tokens
    results["peer_commits"] = args.peer_commits
    pf, share = tokens["prompt_tokens_per_feature"], tokens["cached_share"]
    print(f"prompt tokens per feature ({tokens['features']} features, {tokens['features_judged']} judged; "
          "SmolLM2 tokenizer; the peers' prompts built by their own code on the same contexts and label):")
    for part in ("explain", "simulate", "judges"):
        cells = [f"{who} {pf[f'{who}/{part}']:7.0f}" for who in ("ours", "openai", "delphi") if f"{who}/{part}" in pf]
        print(f"  {part:9s} " + "   ".join(cells))
    print("ours / peer (goal <= 0.50):")
    for k, v in tokens["ratio_ours_to_peer"].items():
        print(f"  {k:60s} {v:5.2f}  {'meets' if v <= 0.5 else 'misses'} the goal")
    print("cached share with a repeated prefix (in sending order; vLLM block 16 / OpenAI >= 1,024 in 128s):")
    for k, v in share.items():
        print(f"  {k:16s} {v['vllm_block16']:5.1%} / {v['openai_1024_128']:5.1%}")
    print("completion tokens per feature:", {k: round(v, 1) for k, v in tokens["completion_tokens_per_feature"].items()
                                             if k != "note"})
    print("USD per 1,000 features, ours at gpt-4o-mini prices:",
          {k: round(v, 3) for k, v in tokens["usd_per_1000_features_gpt-4o-mini"].items()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
