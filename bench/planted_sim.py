"""Does the simulator follow labels at all? Planted features, scored like real ones.

A planted feature is a token rule (the word 'the', digits, commas, ...) on real contexts of the default
corpus: activation 1 on the tokens the rule matches, 0 elsewhere. Each is simulated by the echo
simulator (the endpoint of $OPENAI_BASE_URL with --simulator-model, else the embedded default:
SmolLM2-135M-Instruct in-process) with four labels: the rule's own
description (the ceiling), the label stage's reference label "nothing in particular" (the zero),
an unrelated placebo (fruit), and another rule's description (a wrong label). Half the contexts hold a
match, half are random. Reported per few-shot setting (`--sim-fewshot`): each label kind's mean
pooled correlation over the rules with a bootstrap 95% CI, and the paired difference true - reference.
A simulator whose true labels score no better than the reference measures its own prior, not labels.

    python bench/planted_sim.py --fewshot 0,2 --contexts 8
    OPENAI_BASE_URL=http://host:8000/v1 python bench/planted_sim.py --simulator-model my-model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autointerp import store
from autointerp.collect.stage import collect_stage  # noqa: E402
from autointerp.config import CollectConfig, LLMConfig  # noqa: E402
from autointerp.label import scoring, simulate
from autointerp.label.fewshot import fewshot_for  # noqa: E402
from autointerp.label.stage import open_llm  # noqa: E402
from autointerp.llm import prompts  # noqa: E402
from autointerp.llm.client import LLMClient  # noqa: E402
from autointerp.records import Context  # noqa: E402

RULES: dict[str, Callable[[str], bool]] = {
    "the word 'the'": lambda t: t.strip().lower() == "the",
    "the word 'and'": lambda t: t.strip().lower() == "and",
    "digits and numbers": lambda t: re.fullmatch(r"\s*\d+", t) is not None,
    "commas": lambda t: t.strip() == ",",
    "periods at the end of a sentence": lambda t: t.strip() == ".",
    "words starting with a capital letter": lambda t: re.fullmatch(r"\s?[A-Z][a-z]+", t) is not None,
    "the word 'of'": lambda t: t.strip().lower() == "of",
    "the word 'to'": lambda t: t.strip().lower() == "to",
}
PLACEBO = "mentions of fruit such as apples and bananas"
N_BOOT = 2000


def planted(pool: list[Context], rule: Callable[[str], bool], n: int, rng: np.random.Generator) -> list[Context]:
    hits = [c for c in pool if any(rule(t) for t in c.tokens)]
    chosen = [hits[i] for i in rng.permutation(len(hits))[:n]] + [pool[i] for i in rng.permutation(len(pool))[:n]]
    return [Context(seq=c.seq, split="holdout", kind="top" if i < n else "random", rank=i, tokens=c.tokens,
                    acts=[1.0 if rule(t) else 0.0 for t in c.tokens]) for i, c in enumerate(chosen)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fewshot", default="0,2", help="few-shot settings to compare, comma-separated")
    ap.add_argument("--contexts", type=int, default=8, help="contexts with a match per rule (as many random ones)")
    ap.add_argument("--tokens", type=int, default=30_000)
    ap.add_argument("--simulator-model", default=None, help="default: the endpoint's default model")
    ap.add_argument("--out", default="bench/results/planted_sim.json")
    args = ap.parse_args()
    t0 = time.time()
    db = Path(tempfile.mkdtemp()) / "planted.duckdb"
    out = collect_stage(db, CollectConfig(n_tokens=args.tokens, ctx_len=32, features=(0, 16), top_k=8, n_random=16))
    with store.open_store(db, read_only=True) as con:
        records = store.read_feature_contexts(con, out.dictionary_id, list(range(16)))
    pool = list({c.seq: c for fc in records.values() for c in fc.contexts}.values())
    rules = list(RULES)
    reference = prompts.render("null_constant")
    result: dict = {"rules": rules, "contexts_per_rule": 2 * args.contexts, "settings": {}}

    async def run(client: LLMClient, model: str, n_fewshot: int) -> dict[str, list[float]]:
        rng = np.random.default_rng(0)
        corr: dict[str, list[float]] = {"true label": [], "reference": [], "placebo (fruit)": [], "wrong rule": []}
        # a donor feature that is none of the planted ones; its examples are real activations
        fewshot = fewshot_for(db, out.dictionary_id, -1, n_fewshot)
        for i, name in enumerate(rules):
            contexts = planted(pool, RULES[name], args.contexts, rng)
            labels = {"true label": name, "reference": reference, "placebo (fruit)": PLACEBO,
                      "wrong rule": rules[(i + 1) % len(rules)]}
            for kind, label in labels.items():
                predicted, _ = await simulate.simulate_echo(client, model, label, contexts, fewshot=fewshot)
                examples = [(np.asarray(c.acts), np.asarray(p)) for c, p in zip(contexts, predicted, strict=True)]
                corr[kind].append(scoring.correlation_score("correlation_top_random", examples).value)
            print(f"  fewshot {n_fewshot} {name:40}" + "  ".join(f"{k} {v[-1]:+.3f}" for k, v in corr.items()), flush=True)
        return corr

    def ci(values: np.ndarray) -> list[float]:
        low, high = scoring.bootstrap(lambda idx: float(np.mean(values[idx])), len(values), N_BOOT)
        return [float(values.mean()), low, high]

    settings = [int(x) for x in args.fewshot.split(",")]
    with open_llm(LLMConfig(simulator_model=args.simulator_model)) as session:
        result["simulator"] = session.simulator_model

        async def every_setting() -> list[dict[str, list[float]]]:  # one event loop: the client's connections
            return [await run(session.client, session.simulator_model, n) for n in settings]

        for n, corr in zip(settings, asyncio.run(every_setting()), strict=True):
            true, ref = np.asarray(corr["true label"]), np.asarray(corr["reference"])
            result["settings"][f"fewshot={n}"] = {**{k: ci(np.asarray(v)) for k, v in corr.items()},
                                                  "true - reference": ci(true - ref), "per_rule": corr}
    result["wall_s"] = time.time() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\nmean pooled correlation over {len(rules)} planted rules, {2 * args.contexts} contexts each (95% CI):")
    for setting, r in result["settings"].items():
        print(f"  {setting}: " + "; ".join(f"{k} {m:+.3f} [{lo:+.3f}, {hi:+.3f}]" for k, (m, lo, hi) in
                                          ((k, v) for k, v in r.items() if k != "per_rule")))
    print(f"\n{result['wall_s']:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
