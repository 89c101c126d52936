"""Does best-of-k or the agent beat one-shot labels from the same LLM on the same features?

Two endpoints:
- `scripted` (default): a real HTTP server on 127.0.0.1 (tests/llm_server.py). Its simulator follows labels
  (it applies the planted rule a label names, else a content prior). Its explainer names the most frequent
  strongest token X ("the word 'X'"); given probe results it narrows to "the word 'X' right after 'Y'" only when
  every token X that fired follows one word Y and some X stayed quiet. Planted dictionary over the default corpus
  (SmolLM2 tokenizer): four token rules and four "X right after Y" rules. One-shot can only name X; the
  agent can find Y only from the probe activations. This measures the machinery, not an LLM.
- `embedded`: the embedded default (SmolLM2-135M-Instruct on llama.cpp) as explainer and simulator, on the same
  planted dictionary and on real SmolLM2-135M MLP neurons; reported as it comes out, gain or none.
Real neurons (`--features N`, either endpoint) are also judged (detection, fuzzing) and behaviour-scored, and every
strategy runs again on their random-init control (the `control` command's collect settings).

For each strategy: recovery (planted: the final label is the true description, exactly), correlation_gain on the
scoring contexts (the label's correlation minus the constant label's), the paired gain over one-shot per feature
with a bootstrap 95% CI, the shuffled and constant null labels' correlation beside them, and explainer /
simulator requests and tokens per feature spent making the label (scoring excluded). Writes bench/results/agent.json.

    python bench/agent.py                      # scripted, about a minute
    python bench/agent.py --endpoint embedded --light --planted-features 0 --features 2
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autointerp import store  # noqa: E402
from autointerp.behaviour.stage import behaviour_stage  # noqa: E402
from autointerp.collect import planted  # noqa: E402
from autointerp.collect.planted_stage import planted_stage  # noqa: E402
from autointerp.collect.stage import collect_stage  # noqa: E402
from autointerp.config import BehaviourConfig, CollectConfig, LabelConfig, LLMConfig  # noqa: E402
from autointerp.label import scoring  # noqa: E402
from autointerp.label.stage import label_stage, open_llm  # noqa: E402
from autointerp.pipeline import control_config  # noqa: E402
from tests.llm_server import LoopbackLLM, Reply  # noqa: E402
from tests.unit.test_agent import _marked_words, echo_reply  # noqa: E402
from tests.unit.test_planted import _echo_target, _key, prior  # noqa: E402

PAIRS = [("the", "of"), ("be", "to"), ("is", "it"), ("a", "is")]
PROBES = {  # what the scripted explainer writes under "the word 'X'": X in several contexts, and one without X
    "the": ["One of the best days.", "She went to the park.", "The cat sat on the mat.", "A dog barked."],
    "be": ["It has to be done.", "This will be fine.", "Let it be.", "Dogs bark."],
    "is": ["I think it is late.", "This is good.", "The sky is blue.", "Dogs bark."],
    "a": ["This is a test.", "I saw a dog.", "Take a break.", "Dogs bark."],
}
STRATEGIES = {"one-shot": {}, "best-of-k": {"k": 3}, "agent": {"k": 3, "agent_rounds": 2, "agent_probes": 4}}
N_BOOT = 1000


def broad(x: str) -> str:
    return f"the word '{x}'"


def narrow(x: str, y: str) -> str:
    return f"the word '{x}' right after '{y}'"


RULES = [{"name": x, "description": broad(x), "kind": "token", "params": {"words": [x]}} for x, _ in PAIRS] + [
    {"name": f"{x}-after-{y}", "description": narrow(x, y), "kind": "bigram", "params": {"words": [x], "after": [y]}}
    for x, y in PAIRS]


def _explainer(users: list[str]) -> str:
    """The scripted explainer's reply, from the conversation's user messages."""
    last = users[-1]
    if "Test it on new text" in last:
        x = re.search(r"Your label: the word '(\w+)", last)
        texts = PROBES.get(x.group(1) if x else "", PROBES["the"])
        return "\n".join(("- " if i == len(texts) - 1 else "+ ") + t for i, t in enumerate(texts))
    if "what the feature really did" in last:
        x = re.search(r"Your label: the word '(\w+)", users[-2])
        return _revised(x.group(1) if x else "the", last)
    strongest = Counter(w.strip().lower() for w in re.findall(r'Strongest: "([^"]+)"', last))
    return broad(strongest.most_common(1)[0][0] if strongest else "the")


def _revised(target: str, results: str) -> str:
    fired, quiet = [], []
    for block in re.findall(r"<probe \d+>(.*?)</probe>", results):
        words = _marked_words(block)
        for i, (w, m) in enumerate(words):
            if w == target:
                (fired if m else quiet).append(words[i - 1][0] if i else "")
    if fired and len(set(fired)) == 1 and any(p != fired[0] for p in quiet):
        return narrow(target, fired[0])
    return broad(target)


def script(path: str, request: dict) -> Reply:
    if path.endswith("/chat/completions"):
        if '"answers"' in request["messages"][0]["content"]:
            return Reply(content=json.dumps({"answers": [1] * request["messages"][-1]["content"].count("</excerpt")}))
        return Reply(content=_explainer([m["content"] for m in request["messages"] if m["role"] == "user"]))
    label, tokens = _echo_target(request["prompt"])
    rule = {_key(r["description"]): r for r in RULES}.get(_key(label))
    return echo_reply(request["prompt"], planted.apply_to_strings(rule, tokens) if rule is not None else prior(tokens))


def build_planted(tmp: Path, tokens: int) -> tuple[Path, int, list[int]]:
    rules = tmp / "rules.json"
    rules.write_text(json.dumps(RULES))
    db = tmp / "planted.duckdb"
    out = planted_stage(db, CollectConfig(n_tokens=tokens, ctx_len=32, top_k=10, n_random=10), rules, builtin=False)
    with store.open_store(db, read_only=True) as con:
        firing = store.firing_features(con, out.dictionary_id)
    return db, out.dictionary_id, firing


def build_neurons(tmp: Path, tokens: int, n: int) -> tuple[Path, int, list[int]]:
    db = tmp / "neurons.duckdb"
    out = collect_stage(db, CollectConfig(n_tokens=tokens, ctx_len=32, features=(0, n), top_k=10, n_random=10))
    return db, out.dictionary_id, list(range(n))


def _ci(values: list[float]) -> list[float] | None:
    """Mean and bootstrap 95% CI (None for no values)."""
    if not values:
        return None
    v = np.asarray(values, float)
    low, high = scoring.bootstrap(lambda idx: float(np.mean(v[idx])), len(v), N_BOOT)
    return [float(v.mean()), low, high]


PLANTED_METRICS = ("correlation_gain",)
# Real features: detection / fuzzing (the judges) and behaviour as well; each from the labels view.
NEURON_METRICS = ("correlation_gain", "detection", "fuzzing", "behaviour")


def _rows(db: Path, did: int, metrics: tuple[str, ...]) -> list[tuple]:
    with store.open_store(db, read_only=True) as con:
        _, rows = store.query(con, f"SELECT feature, explainer, label, correlation_top_random, {', '.join(metrics)} "
                                   f"FROM labels WHERE dictionary_id = {did} AND status = 'ok'")
    return rows


def _usage(db: Path, did: int, n: int) -> dict[str, dict[str, float]]:
    with store.open_store(db, read_only=True) as con:
        return {u.role: {"requests_per_feature": u.calls / n, "tokens_per_feature": u.tokens / n,
                         "cost_usd_per_feature": u.cost_usd / n} for u in store.call_usage(con, did)}


def run_strategy(src: Path, did: int, features: list[int], strategy: str, llm_cfg: LLMConfig,
                 base: dict[str, Any], tmp: Path, metrics: tuple[str, ...]) -> dict[str, Any]:
    """Label `features` with `strategy` on a copy of `src`, then score (and behaviour-score where `metrics`
    ask for it); the cost of making the labels, and each label's scores, beside the null labels'."""
    db = tmp / f"{src.stem}-{strategy}.duckdb"
    shutil.copy(src, db)
    cfg = LabelConfig(strategy=strategy, **{**base, **STRATEGIES[strategy]})  # type: ignore[arg-type]
    t0 = time.time()
    with open_llm(llm_cfg) as session:  # a session per stage: its client belongs to the stage's event loop
        label_stage(db, did, features, cfg, session, score_stage=False, concurrency=llm_cfg.concurrency)
    seconds = time.time() - t0
    usage = _usage(db, did, len(features))
    with open_llm(llm_cfg) as session:
        label_stage(db, did, features, cfg, session, concurrency=llm_cfg.concurrency)
        model = session.explainer_model
    if "behaviour" in metrics:
        behaviour_stage(db, did, BehaviourConfig(n_boot=200, device="cpu"), None)  # type: ignore[call-arg]
    rows = _rows(db, did, metrics)
    mine = {r[0]: r for r in rows if r[1] == model}
    k = {m: 4 + i for i, m in enumerate(metrics)}
    return {"labels": {f: r[2] for f, r in mine.items()},
            "scores": {m: {f: r[k[m]] for f, r in mine.items() if r[k[m]] is not None} for m in metrics},
            "shuffled": {m: [r[k[m]] for r in rows if r[1].startswith("null:shuffled") and r[k[m]] is not None]
                         for m in metrics},
            "constant": {m: [r[k[m]] for r in rows if r[1] == "null:constant" and r[k[m]] is not None]
                         for m in metrics},
            "constant_correlation": [r[3] for r in rows if r[1] == "null:constant" and r[3] is not None],
            "making_the_label": usage, "seconds_making_labels": seconds}


def _metric_rows(r: dict[str, Any], one: dict[str, Any], features: list[int], first: bool) -> dict[str, Any]:
    """Per metric: the strategy's mean and CI, its paired difference from one-shot, and the nulls'."""
    out = {}
    for m, values in r["scores"].items():
        paired = [values[f] - one["scores"][m][f] for f in features if f in values and f in one["scores"][m]]
        out[m] = {"value": _ci(list(values.values())), "paired_over_one_shot": None if first else _ci(paired),
                  "shuffled_null": _ci(r["shuffled"][m]), "constant_null": _ci(r["constant"][m])}
    return out


def compare(src: Path, did: int, features: list[int], llm_cfg: LLMConfig, base: dict[str, Any], tmp: Path,
            truth: dict[int, str] | None, metrics: tuple[str, ...] = PLANTED_METRICS) -> dict[str, Any]:
    """Every strategy on the same features; scores paired with one-shot's on each feature."""
    runs = {s: run_strategy(src, did, features, s, llm_cfg, base, tmp, metrics) for s in STRATEGIES}
    out: dict[str, Any] = {"features": features, "strategies": {}}
    one = runs["one-shot"]
    for s, r in runs.items():
        row: dict[str, Any] = {
            "metrics": _metric_rows(r, one, features, s == "one-shot"),
            "constant_null_correlation": _ci(r["constant_correlation"]),
            "making_the_label": r["making_the_label"], "seconds_making_labels": r["seconds_making_labels"],
            "labels": r["labels"]}
        if truth is not None:
            hits = [float(_key(r["labels"].get(f) or "") == _key(truth[f])) for f in features]
            row["recovery"] = _ci(hits)
            base_hits = [float(_key(one["labels"].get(f) or "") == _key(truth[f])) for f in features]
            row["paired_recovery_over_one_shot"] = _ci([a - b for a, b in zip(hits, base_hits, strict=True)]) \
                if s != "one-shot" else None
        out["strategies"][s] = row
    return out


def _fmt(x: list[float] | None) -> str:
    return "n/a" if not x else f"{x[0]:+.3f} [{x[1]:+.3f}, {x[2]:+.3f}]"


def report(name: str, result: dict[str, Any]) -> None:
    print(f"\n{name}: {len(result['features'])} features")
    for s, r in result["strategies"].items():
        usage = "; ".join(f"{role} {u['requests_per_feature']:.1f} req {u['tokens_per_feature']:.0f} tok"
                          for role, u in r["making_the_label"].items())
        rec = f" recovery {_fmt(r['recovery'])} (paired {_fmt(r['paired_recovery_over_one_shot'])})" \
            if "recovery" in r else ""
        print(f"  {s:10}{rec}; per feature: {usage}")
        for m, v in r["metrics"].items():
            print(f"  {'':10} {m:17} {_fmt(v['value'])} paired {_fmt(v['paired_over_one_shot'])}; nulls: "
                  f"shuffled {_fmt(v['shuffled_null'])}, constant {_fmt(v['constant_null'])}")


def neurons_and_control(tmp: Path, args: argparse.Namespace, cfg: LLMConfig, base: dict[str, Any],
                        result: dict[str, Any]) -> None:
    """Real neurons (judges and behaviour on), then the same strategies on their random-init control (the
    `control` command's collect settings: same model, hook, tokens and sampling, initialisation weights);
    each written to --out as it finishes."""
    ndb, ndid, neurons = build_neurons(tmp, args.tokens, args.features)
    real = {**base, "judge": True, "n_judge": args.n_judge, "judge_quiet": 0.1}  # dense neurons: as the demo
    result["neurons"] = compare(ndb, ndid, neurons, cfg, real, tmp, None, NEURON_METRICS)
    result["loadavg_after_neurons"] = Path("/proc/loadavg").read_text().split()[:3]
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    control = collect_stage(ndb, control_config(ndb, ndid))
    result["random_init"] = compare(ndb, control.dictionary_id, neurons, cfg, real, tmp / "control", None,
                                    NEURON_METRICS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", choices=["scripted", "embedded"], default="scripted")
    ap.add_argument("--tokens", type=int, default=30_000)
    ap.add_argument("--features", type=int, default=2, help="real SmolLM2-135M neurons labelled (0: none), each "
                    "strategy also on their random-init control")
    ap.add_argument("--n-judge", type=int, default=5, help="detection / fuzzing excerpts per label (real neurons)")
    ap.add_argument("--planted-features", type=int, default=8,
                    help="planted features labelled: the last N that fire (the 'X right after Y' rules come last)")
    ap.add_argument("--out", default="bench/results/agent.json")
    ap.add_argument("--light", action="store_true", help="k=2, one round of 2 probes, 4+4 simulated contexts, 2 null "
                    "features: what fits in minutes on 2 CPU cores with the embedded model")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "control").mkdir()
    base = {"n_sim_top": 6, "n_sim_random": 6, "n_boot": 200, "judge": False, "null_samples": 4, "baseline": False}
    if args.light:
        STRATEGIES.update({"best-of-k": {"k": 2}, "agent": {"k": 2, "agent_rounds": 1, "agent_probes": 2}})
        base.update(n_sim_top=4, n_sim_random=4, null_samples=2)
    result: dict[str, Any] = {"endpoint": args.endpoint, "tokens": args.tokens, "strategy_settings": STRATEGIES,
                              "label_settings": base, "n_judge": args.n_judge}
    t0 = time.time()
    if args.endpoint == "scripted":
        with LoopbackLLM(script) as llm:
            cfg = LLMConfig(base_urls=(llm.base_url,), explainer_model="m-explain", simulator_model="m-sim")
            run_all(tmp, args, cfg, {**base, "n_sim_fewshot": 0}, result)
    else:
        run_all(tmp, args, LLMConfig(concurrency=2), base, result)  # type: ignore[call-arg]
    result["seconds"] = time.time() - t0
    result["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    for name in ("planted", "neurons", "random_init"):
        if name in result:
            report(name, result[name])
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(f"\n{result['seconds']:.0f}s, load {' '.join(result['loadavg'])} -> {args.out}")


def run_all(tmp: Path, args: argparse.Namespace, cfg: LLMConfig, base: dict[str, Any], result: dict[str, Any]
            ) -> None:
    """The planted comparison, then real neurons and their random-init control; each part is written to
    --out as it finishes, so a run cut short keeps what it measured."""
    if args.planted_features:
        pdb, pdid, firing = build_planted(tmp, args.tokens)
        firing = firing[-args.planted_features:]
        with store.open_store(pdb, read_only=True) as con:
            truth = {t.feature: t.description for t in store.planted_truth(con, pdid)}
        result["planted"] = compare(pdb, pdid, firing, cfg, base, tmp, truth)
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    if args.features:
        neurons_and_control(tmp, args, cfg, base, result)


if __name__ == "__main__":
    main()
