"""Detection and fuzzing (Delphi's judges): which excerpts are built, and what the real judge functions
score, through the loopback OpenAI server, for judges that know the truth, invert it, or say 1 to all.
Also the explainer's spread over quantile bins."""

from __future__ import annotations

import asyncio
import json
import random
import re

import numpy as np
import pytest

from autointerp.label import detect, explain, scoring
from autointerp.llm import client as llm
from autointerp.llm.client import LLMFailure
from autointerp.records import Context, FeatureContexts
from tests.llm_server import LoopbackLLM, Reply

MAX = 10.0
N_BINS, PER_BIN, L = 10, 5, 24


def _context(seq: int, split: str, kind: str, rank: int, acts: list[float], quantile: int | None = None) -> Context:
    # Every context's text is unique (its first word), so a judge can find the context an excerpt shows.
    tokens = [f" c{seq}"] + [f" w{(seq * 7 + j) % 13}" for j in range(1, len(acts))]
    return Context(seq=seq, split=split, kind=kind, rank=rank, tokens=tokens, acts=acts, quantile=quantile)


def _firing(rng: random.Random, peak: float) -> list[float]:
    """A context that peaks at `peak`, with many weakly active tokens (above 0, below 30% of the peak)
    and a few inactive ones: random marks over the whole context would hit active tokens."""
    acts = [rng.uniform(0.01, 0.25) * peak if rng.random() < 0.7 else -rng.uniform(0, 0.1) for _ in range(L)]
    for j in rng.sample(range(1, L), 3):
        acts[j] = rng.uniform(0.4, 1.0) * peak
    acts[rng.randrange(1, L)] = peak
    return acts


def make_fc(threshold: float = 0.0, dense: bool = False, **overrides) -> FeatureContexts:
    """A feature with top, 10 x 5 quantile and 20 random contexts per split. Its random contexts alternate
    between never firing (all <= threshold) and firing weakly (10% of max); a dense feature always fires."""
    rng = random.Random(0)
    contexts, seq = [], 0
    for split in ("explain", "holdout"):
        for rank in range(20):
            contexts.append(_context(seq, split, "top", rank, _firing(rng, MAX * (1 - rank / 100))))
            seq += 1
        for q in range(N_BINS):
            for rank in range(PER_BIN):
                peak = MAX * (0.05 + 0.08 * q + 0.01 * rank)  # bin q's range, above the bins below it
                contexts.append(_context(seq, split, "quantile", rank, _firing(rng, peak), quantile=q))
                seq += 1
        for rank in range(20):
            if rank % 2 == 0 and not dense:
                acts = [threshold - rng.uniform(0, 0.5) for _ in range(L)]
            else:
                acts = _firing(rng, 0.1 * MAX)
            contexts.append(_context(seq, split, "random", rank, acts))
            seq += 1
    fields = {"dictionary_id": 1, "feature": 3, "max_act": MAX, "contexts": contexts, "threshold": threshold}
    return FeatureContexts(**{**fields, **overrides})


# ---------------------------------------------------------------- example construction


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_detection_positives_span_the_bins_and_negatives_never_fire(threshold):
    fc = make_fc(threshold)
    examples = detect.detection_examples(fc, 5, seed=0)
    positives = [c for c, y in examples if y]
    negatives = [c for c, y in examples if not y]
    assert len(positives) == 5 and len(negatives) == 5
    # Positives: holdout quantile samples, one from each of 5 evenly spaced bins, highest first.
    assert all(c.split == "holdout" and c.kind == "quantile" and c.max_act > threshold for c in positives)
    assert sorted(c.quantile for c in positives) == [1, 3, 5, 7, 9]
    # Negatives: holdout random contexts with no activation above the threshold. The weakly firing
    # random contexts (10% of the max, under the old 20%-of-max rule) are not negatives.
    assert all(c.split == "holdout" and c.kind == "random" for c in negatives)
    assert all(a <= threshold for c in negatives for a in c.acts)
    assert detect.detection_examples(fc, 5, seed=0) == examples  # deterministic


def test_detection_of_a_rare_feature_uses_its_top_contexts():
    fc = make_fc()
    rare = fc.model_copy(update={"contexts": [c for c in fc.contexts if c.kind != "quantile"]})
    positives = [c for c, y in detect.detection_examples(rare, 5, seed=0) if y]
    assert sorted(c.rank for c in positives) == [0, 1, 2, 3, 4] and all(c.kind == "top" for c in positives)


def test_detection_of_a_dense_feature_is_not_scored_and_says_why():
    fc = make_fc(dense=True)
    with LoopbackLLM(lambda path, request: Reply(content='{"answers": []}')) as server:
        with pytest.raises(LLMFailure, match="too few holdout random contexts where the feature is inactive"):
            asyncio.run(_judge(server.base_url, detect.detection, fc))
        assert server.requests == []  # nothing sent


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_fuzzing_marks(threshold):
    fc = make_fc(threshold)
    examples = detect.fuzzing_examples(fc, 5, seed=0)
    positives = [(c, m) for c, m, y in examples if y]
    negatives = [(c, m) for c, m, y in examples if not y]
    assert len(positives) == 5 and len(negatives) == 5
    assert len({c.seq for c, _, _ in examples}) == 10  # no context shown twice
    assert sorted(c.quantile for c, _ in positives) == [1, 3, 5, 7, 9]
    assert sorted(c.quantile for c, _ in negatives) == [0, 2, 4, 6, 8]
    for c, marks in positives:  # Delphi: tokens at or above 30% of the excerpt's own max
        assert marks == {j for j, a in enumerate(c.acts) if a >= 0.3 * c.max_act and a > threshold}
    for c, marks in negatives:  # as many marks, every one on a token below that threshold
        assert len(marks) == len(detect.true_marks(c, threshold))
        assert all(c.acts[j] < 0.3 * c.max_act for j in marks)
    assert detect.fuzzing_examples(fc, 5, seed=0) == examples


def test_fuzzing_skips_a_context_without_enough_quiet_tokens():
    fc = make_fc()
    # Bin 8 (a negative's bin in the test above) now fires strongly on every token: no quiet token to mark.
    loud = [c.model_copy(update={"acts": [c.max_act] * L}) if c.split == "holdout" and c.quantile == 8 else c
            for c in fc.contexts]
    examples = detect.fuzzing_examples(fc.model_copy(update={"contexts": loud}), 5, seed=0)
    negatives = [c for c, _, y in examples if not y]
    assert len(negatives) == 5 and 8 not in {c.quantile for c in negatives}
    assert all(c.acts[j] < 0.3 * c.max_act for c, m, y in examples if not y for j in m)


# ---------------------------------------------------------------- judged through the loopback server


def _excerpts(request: dict) -> list[str]:
    return re.findall(r"<excerpt \d+>\n(.*?)\n</excerpt \d+>", request["messages"][-1]["content"], re.DOTALL)


def _read(text: str, by_text: dict[str, Context]) -> tuple[Context, set[int]]:
    """The context an excerpt shows, and which of its tokens are marked."""
    c = by_text[text.replace("<<", "").replace(">>", "")]
    marks, pos = set(), 0
    for j, t in enumerate(c.tokens):
        if text.startswith("<<", pos):
            marks.add(j)
            pos += 2
        assert text.startswith(t, pos)
        pos += len(t)
        if text.startswith(">>", pos):
            pos += 2
    return c, marks


def _truth(fc: FeatureContexts, kind: str):
    """What a judge who knows the feature answers: from the stored activations, not from the examples."""
    by_text = {"".join(c.tokens): c for c in fc.contexts}

    def truth(text: str) -> int:
        c, marks = _read(text, by_text)
        if kind == "detection":
            return int(c.max_act > fc.threshold)
        return int(marks == {j for j, a in enumerate(c.acts) if a >= 0.3 * c.max_act and a > fc.threshold})

    return truth


def _judge_script(fc: FeatureContexts, kind: str, policy: str):
    truth = _truth(fc, kind)
    answer = {"perfect": truth, "inverted": lambda t: 1 - truth(t), "constant": lambda t: 1,
              "constant-0": lambda t: 0}[policy]

    def script(path: str, request: dict) -> Reply:
        return Reply(content=json.dumps({"answers": [answer(t) for t in _excerpts(request)]}))

    return script


async def _judge(base_url: str, fn, fc: FeatureContexts):
    c = llm.OpenAICompatibleClient([base_url], None, timeout_s=5, max_attempts=2, max_wait_s=1)
    try:
        return await fn(c, "judge-model", fc, "digits", 5, 0)
    finally:
        await c.close()


@pytest.mark.parametrize("threshold", [0.0, 0.5])
@pytest.mark.parametrize("kind", ["detection", "fuzzing"])
@pytest.mark.parametrize(("policy", "expected"),
                         [("perfect", 1.0), ("inverted", 0.0), ("constant", 0.5), ("constant-0", 0.5)])
def test_balanced_accuracy_of_scripted_judges(kind, policy, expected, threshold):
    fc = make_fc(threshold)
    with LoopbackLLM(_judge_script(fc, kind, policy)) as server:
        labels, answers, _, calls = asyncio.run(_judge(server.base_url, getattr(detect, kind), fc))
        assert len(server.requests) == 1 and len(_excerpts(server.requests[0][1])) == 10
    assert len(calls) == 1 and sum(labels) == 5 and len(labels) == 10
    assert scoring.balanced_accuracy(np.asarray(labels), np.asarray(answers)) == expected


# ---------------------------------------------------------------- what the explainer sees


def test_explainer_sees_quantile_samples_from_every_bin():
    fc = make_fc()
    shown = explain.explain_contexts(fc, 10, 10)
    assert [c.kind for c in shown] == ["top"] * 10 + ["quantile"] * 10
    quant = shown[10:]
    assert [c.quantile for c in quant] == list(range(9, -1, -1))  # round-robin from the highest bin down
    assert all(c.split == "explain" and c.rank == 0 for c in quant)
    assert [c.quantile for c in explain.explain_contexts(fc, 0, 20)] == list(range(9, -1, -1)) * 2
    # Fewer picks than bins: evenly spaced bins, not the top half.
    assert [c.quantile for c in explain.explain_contexts(fc, 0, 5)] == [9, 7, 5, 3, 1]
    # A bin with fewer samples is used up and skipped.
    thin = [c for c in fc.contexts if not (c.kind == "quantile" and c.quantile == 9 and c.rank > 0)]
    spread = explain.explain_contexts(fc.model_copy(update={"contexts": thin}), 0, 12)
    assert [c.quantile for c in spread] == [*range(9, -1, -1), 8, 4]  # then 2 of the 9 bins left, spaced
