"""Placebo labels on the real simulator: SmolLM2-135M-Instruct in-process (llama.cpp) simulating held-out
contexts of SmolLM2-135M's layer-6 MLP neurons, collected by autointerp's own collect stage, with the
label stage's default worked examples (two other features' top contexts). A label that says nothing about
a feature must score 0 within its CI, and no prediction may drift with a context's position.
Also: hostile tokens through the real tokenizer, and the in-process path against llama-cpp-python's own
echo logprobs served over HTTP. A few minutes on 2 cores; run with -s to see the numbers."""

from __future__ import annotations

import asyncio
import json
import math
import time

import numpy as np
import pytest

from autointerp import store
from autointerp.collect.stage import collect_stage
from autointerp.config import CollectConfig, LabelConfig
from autointerp.label import echo_read, scoring, simulate
from autointerp.label.fewshot import fewshot_for
from autointerp.label.units import scoring_contexts
from autointerp.llm import local, prompts
from autointerp.llm.client import LLMFailure, OpenAICompatibleClient
from autointerp.models import smollm2_gguf_path
from tests.llm_server import LoopbackLLM, Reply
from tests.unit.test_simulate import HOSTILE, contexts_of

pytestmark = pytest.mark.slow

PLACEBOS = ["nothing", "mentions of fruit such as apples and bananas", "the digit 7"]
REFERENCE = prompts.render("null_constant")  # the label stage's reference label, "nothing in particular"
N_FEATURES = 12
N_TOP = N_RANDOM = 5
N_BOOT = 2000
TINY_SLOPE = 0.005  # predicted activation (0-9 scale) per context position; main drifted ~0.02 per position


@pytest.fixture(scope="module")
def inproc():
    lp = local.InProcessLogprobs(str(smollm2_gguf_path()), n_ctx=4096)
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> tuple:
    db = tmp_path_factory.mktemp("placebo") / "placebo.duckdb"
    out = collect_stage(db, CollectConfig(hook="blocks.6.mlp.hook_post", n_tokens=40_000, ctx_len=32,
                                          features=(0, N_FEATURES), top_k=N_TOP, n_random=N_RANDOM, n_quantiles=2,
                                          per_quantile=2))
    with store.open_store(db, read_only=True) as con:
        records = store.read_feature_contexts(con, out.dictionary_id, list(range(N_FEATURES)))
    return db, [records[f] for f in sorted(records)]


@pytest.fixture(scope="module")
def features(collected) -> list:
    return collected[1]


def embedded_client(inproc: local.InProcessLogprobs) -> local.EmbeddedClient:
    # Echo requests never reach the HTTP client: they run in-process, as in the label stage.
    return local.EmbeddedClient(OpenAICompatibleClient(["http://127.0.0.1:9/v1"]), inproc)


def ci_of_mean(values: np.ndarray) -> tuple[float, float, float]:
    low, high = scoring.bootstrap(lambda idx: float(np.mean(values[idx])), len(values), N_BOOT)
    return float(np.mean(values)), low, high


def slope(means: np.ndarray) -> float:
    """Least-squares slope of mean prediction against context position."""
    x = np.arange(means.shape[-1], dtype=np.float64)
    x -= x.mean()
    return float((means - means.mean(axis=-1, keepdims=True)) @ x / (x @ x))


@pytest.fixture(scope="module")
def placebo(collected, inproc) -> dict:
    """Every placebo label simulated on every feature's held-out top + random contexts with the label
    stage's worked examples: per label the failures, each feature's pooled correlation, and the mean
    prediction at each position in the order the contexts were sent.

    The order is a seeded shuffle per feature (the same for every label), so a position is not a kind of
    context: sent top first, as the label stage sends them, the slope measured which contexts were last
    (the 5 random ones, the same texts for every feature; one of them got 1.66 where the others got ~1.45)
    rather than where they were."""
    db, features = collected
    cfg = LabelConfig(n_sim_top=N_TOP, n_sim_random=N_RANDOM)
    assert cfg.fewshot == 2  # the default the label stage uses
    client = embedded_client(inproc)
    results: dict[str, dict] = {}
    start = time.monotonic()

    reference: dict[int, list] = {}

    async def run() -> None:
        for label in [REFERENCE, *PLACEBOS]:
            r: dict = results.setdefault(label, {"failures": [], "corr": [], "gain": [], "by_position": []})
            for fc in features:
                pairs = scoring_contexts(fc, cfg)
                order = np.random.default_rng(fc.feature).permutation(len(pairs))
                contexts = [pairs[i][0] for i in order]
                fewshot = fewshot_for(db, fc.dictionary_id, fc.feature, cfg.fewshot)
                try:
                    sent, _ = await simulate.simulate_echo(client, local.MODEL_NAME, label, contexts, fewshot=fewshot)
                except LLMFailure as exc:
                    r["failures"].append(f"feature {fc.feature}: {exc}")
                    continue
                predicted: list = [None] * len(pairs)
                for position, i in enumerate(order):
                    predicted[i] = sent[position]
                # scored as the label stage scores: the scoring contexts (the calibration ones set aside)
                examples = [(np.asarray(c.acts), np.asarray(p))
                            for (c, purpose), p in zip(pairs, predicted, strict=True) if purpose == "scoring"]
                reference.setdefault(fc.feature, examples)
                r["corr"].append(scoring.correlation_score("correlation_top_random", examples).value)
                r["gain"].append(scoring.correlation_gain_score("correlation_gain", examples,
                                                                reference[fc.feature]).value)
                r["by_position"].append([float(np.mean(p)) for p in sent])

    asyncio.run(run())
    report: dict = {"seconds": round(time.monotonic() - start, 1)}
    for label, r in results.items():
        c = np.asarray(r["corr"])
        pos = np.asarray(r["by_position"])  # [features, positions]
        boot = np.random.default_rng(0).integers(0, len(pos), (N_BOOT, len(pos)))
        slopes = np.array([slope(pos[idx].mean(axis=0)) for idx in boot])
        r["correlation_top_random"] = ci_of_mean(c[np.isfinite(c)])
        g = np.asarray(r["gain"])
        r["correlation_gain"] = ci_of_mean(g[np.isfinite(g)])
        r["slope_per_position"] = (slope(pos.mean(axis=0)), *np.percentile(slopes, [2.5, 97.5]).tolist())
        report[label] = {"correlation_top_random": r["correlation_top_random"], "features": int(np.isfinite(c).sum()),
                         "correlation_gain": r["correlation_gain"],
                         "slope_per_position": r["slope_per_position"],
                         "mean_prediction_by_position": pos.mean(axis=0).round(3).tolist(), "failures": r["failures"]}
    print(json.dumps(report, indent=1))
    return results


def test_no_simulation_fails(placebo):
    for label, r in placebo.items():  # the reference included
        assert not r["failures"], (label, r["failures"])
        assert len(r["corr"]) == N_FEATURES


def test_predictions_do_not_drift_with_context_position(placebo):
    for label, r in placebo.items():
        s, s_low, s_high = r["slope_per_position"]
        assert s_low <= 0.0 <= s_high or abs(s) < TINY_SLOPE, f"{label!r}: drift {s:.4f} [{s_low:.4f}, {s_high:.4f}]"


def test_placebo_labels_raw_correlation_is_zero(placebo):
    """The raw score of a label that says nothing is the simulator's own prior (which tokens it rates high
    whatever the label) correlated with the feature, so it moves with the features and the prompt: without
    examples the reference scored 0.038 [0.000, 0.081] here (bench/placebo.py). The gain (next test) is the
    zero that does not depend on them."""
    for label in [REFERENCE, *PLACEBOS]:
        mean, low, high = placebo[label]["correlation_top_random"]
        assert low <= 0.0 <= high, f"{label!r}: mean correlation {mean:.3f} [{low:.3f}, {high:.3f}] excludes 0"


def test_placebo_labels_gain_nothing_over_the_reference(placebo):
    """correlation_gain (the label's correlation minus the reference label's on the same contexts): 0 exactly
    for the reference, and 0 within its CI for labels that say nothing about the feature. Without worked
    examples the fruit label gained 0.019 [0.008, 0.031] here: it raised predictions on content words."""
    mean, low, high = placebo[REFERENCE]["correlation_gain"]
    assert (mean, low, high) == (0.0, 0.0, 0.0)
    for label in PLACEBOS:
        mean, low, high = placebo[label]["correlation_gain"]
        assert low <= 0.0 <= high, f"{label!r}: mean gain {mean:.3f} [{low:.3f}, {high:.3f}]"


def test_a_context_gets_the_same_predictions_wherever_it_is_put(features, inproc):
    client = embedded_client(inproc)
    contexts = [c for c, _ in scoring_contexts(features[0], LabelConfig(n_sim_top=3, n_sim_random=3))]
    forward, _ = asyncio.run(simulate.simulate_echo(client, local.MODEL_NAME, "nothing", contexts))
    backward, _ = asyncio.run(simulate.simulate_echo(client, local.MODEL_NAME, "nothing", contexts[::-1]))
    for a, b in zip(forward, backward[::-1], strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_hostile_tokens_through_the_real_tokenizer(inproc):
    """Every placeholder starts a token of SmolLM2's tokenizer (the tab is never merged with it), and every
    hostile context gets a prediction in [0, 9] at each token; tokens longer than 32 bytes (llama-cpp-python's
    detokenize buffer) keep their text."""
    client = embedded_client(inproc)
    token_lists = [HOSTILE[i: i + 6] for i in range(0, len(HOSTILE), 6)] + [["\t"] * 5, ["7", "\t", "0", "\n"] * 3,
                                                                       ["-" * 42, "+", "=" * 60, " " * 40, "x"]]
    predicted, calls = asyncio.run(simulate.simulate_echo(client, local.MODEL_NAME, "tabs\tand <end> 7\n",
                                                          contexts_of(token_lists)))
    assert len(calls) == len(token_lists)
    for toks, pred in zip(token_lists, predicted, strict=True):
        assert len(pred) == len(toks) and all(0.0 <= v <= 9.0 for v in pred)
    for toks in token_lists:
        prompt, offsets = simulate.echo_prompt("nothing", toks)
        obj, _ = inproc.echo(prompt)
        assert "".join(obj["tokens"]) == prompt.encode("utf-8", "replace").decode()
        assert set(offsets) <= set(obj["text_offset"])
        values, missing = echo_read.read_echo(obj, prompt, offsets)
        assert missing == 0 and all(math.isfinite(v) for v in values)


def test_in_process_agrees_with_llama_cpp_echo_over_http(inproc):
    """The same prompt through llama-cpp-python's own echo (what its server returns: the next token's
    distribution at each token, top 100 of the vocabulary) over real HTTP, and through the in-process path."""
    prompt, offsets = simulate.echo_prompt("the digit 7", [" The", " year", " 1999", "\t", "é", "‹end›", "7"])
    inproc.llm.reset()
    reply = inproc.llm.create_completion(prompt, max_tokens=1, echo=True, logprobs=100, temperature=0.0)
    served = reply["choices"][0]["logprobs"]
    served = {**served, "token_logprobs": [None if v is None else float(v) for v in served["token_logprobs"]],
              "top_logprobs": [None if t is None else {k: float(v) for k, v in t.items()} for t in served["top_logprobs"]]}
    with LoopbackLLM(lambda path, request: Reply(content="", logprobs=served)) as llm:
        http = OpenAICompatibleClient([llm.base_url], timeout_s=30.0)
        got = asyncio.run(http.complete(role="simulator", model="m", prompt=prompt, max_tokens=1, echo=True,
                                        logprobs=100))
    via_http, _ = echo_read.read_echo(got.logprobs, prompt, offsets)
    obj, _ = inproc.echo(prompt)
    in_process, missing = echo_read.read_echo(obj, prompt, offsets)
    assert missing == 0
    starts = obj["text_offset"]
    assert served["text_offset"][: len(starts)] == starts
    for off, v_http, v_in in zip(offsets, via_http, in_process, strict=True):
        i = starts.index(off)
        mine = obj["top_logprobs"][i]
        theirs = {k: v for k, v in served["top_logprobs"][i - 1].items() if k in mine}  # llama: token i - 1 holds it
        for k, v in theirs.items():
            assert v == pytest.approx(mine[k], abs=2e-3)
        # equal over the digits the server listed; with all ten listed, equal to the in-process value
        assert v_http == pytest.approx(echo_read.expected_digit({k: mine[k] for k in theirs}), abs=2e-3)
        if len(theirs) == 10:
            assert v_http == pytest.approx(v_in, abs=2e-3)

