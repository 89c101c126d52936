"""Detection and fuzzing as Delphi defines them (EleutherAI/delphi, scorers/classifier): an LLM reads
the label and judges held-out excerpts. "Active" is the dictionary's own definition, the collect
threshold τ (default 0): a token is active when its activation is above τ, as for frac_active,
the top contexts and the quantile reservoir.

Detection: is the feature active anywhere in this excerpt? Positives are holdout contexts where
it is active, spread evenly over the quantile bins (Delphi's test set is stratified over 10
activation quantiles); the holdout top contexts stand in when a rare feature has no quantile
sample. Negatives are holdout random contexts where it is never active (Delphi's random
non-activating windows: no activation above τ).
Fuzzing: are the marked tokens the ones the label describes? Drawn from the same active contexts
(Delphi's "active" fuzzing, with disjoint contexts since all excerpts go in one request):
positives mark the tokens at or above 30% of that excerpt's max (Delphi's per-example
threshold); negatives mark as many tokens, drawn at random from those below it. A context with
fewer such tokens than marks cannot be a negative and is skipped.
Each is one chat request per feature (JSON answers, one re-ask); scored by balanced accuracy,
and by AUC where the endpoint returns top_logprobs for the answer digits.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from autointerp.label.explain import spread_over_bins
from autointerp.llm import prompts
from autointerp.llm.client import LLMClient, LLMFailure, LLMReply, ask_parsed
from autointerp.records import CallRow, Context, FailureCode, FeatureContexts

DETECT_TEMPLATES = ("detect.system", "detect.user", "reask_json")
FUZZ_TEMPLATES = ("fuzz.system", "fuzz.user", "reask_json")
MARK_FRACTION = 0.3  # Delphi's per-example threshold: marked tokens reach 30% of their excerpt's max


def _excerpt(i: int, tokens: list[str], marked: set[int]) -> str:
    text = "".join(f"<<{prompts.escape_data(t)}>>" if j in marked else prompts.escape_data(t)
                   for j, t in enumerate(tokens))
    return f"<excerpt {i}>\n{text}\n</excerpt {i}>"


def active_contexts(fc: FeatureContexts) -> list[Context]:
    """Holdout contexts where the feature is active: its quantile samples, else (rare features) its top contexts."""
    for kind in ("quantile", "top"):
        found = [c for c in fc.select("holdout", kind) if c.max_act > fc.threshold]
        if found:
            return found
    return []


def true_marks(c: Context, threshold: float) -> set[int]:
    """Tokens at or above MARK_FRACTION of the context's max (and active)."""
    cut = MARK_FRACTION * c.max_act
    return {j for j, a in enumerate(c.acts) if a >= cut and a > threshold}


def detection_examples(fc: FeatureContexts, n: int, seed: int) -> list[tuple[Context, bool]]:
    positives = spread_over_bins(active_contexts(fc), n)
    negatives = [c for c in sorted(fc.select("holdout", "random"), key=lambda c: c.rank)
                 if c.max_act <= fc.threshold][:n]
    examples = [(c, True) for c in positives] + [(c, False) for c in negatives]
    random.Random(seed * 7919 + fc.feature).shuffle(examples)
    return examples


def fuzzing_examples(fc: FeatureContexts, n: int, seed: int) -> list[tuple[Context, set[int], bool]]:
    rng = random.Random(seed * 104729 + fc.feature)
    pool = active_contexts(fc)
    out: list[tuple[Context, set[int], bool]] = []
    n_pos = n_neg = 0
    for k, c in enumerate(spread_over_bins(pool, len(pool))):  # alternate, so both classes span the bins
        if n_pos >= n and n_neg >= n:
            break
        marks = true_marks(c, fc.threshold)
        if k % 2 == 0 and n_pos < n:
            out.append((c, marks, True))
            n_pos += 1
        elif k % 2 == 1 and n_neg < n:
            cut = MARK_FRACTION * c.max_act
            quiet = [j for j, a in enumerate(c.acts) if a < cut]
            if len(quiet) < len(marks):
                continue  # as many wrong marks as true ones would have to mark active tokens: not a negative
            out.append((c, set(rng.sample(quiet, len(marks))), False))
            n_neg += 1
    rng.shuffle(out)
    return out


def parse_answers(text: str, n: int) -> list[int]:
    answers = prompts.reply_json_field(text, "answers")
    if not isinstance(answers, list) or any(a not in (0, 1) for a in answers):
        raise ValueError("no 'answers' list of 0 and 1")
    if len(answers) != n:
        raise ValueError(f"{len(answers)} answers for {n} excerpts")
    return [int(a) for a in answers]


def answer_probabilities(logprobs: dict[str, Any] | None, n: int) -> list[float] | None:
    """P(answer = 1) for each generated 0/1 digit, when the endpoint returned top_logprobs."""
    content = (logprobs or {}).get("content") or []
    probs = []
    for entry in content:
        if entry.get("token", "").strip() in ("0", "1"):
            top = {t["token"].strip(): math.exp(t["logprob"]) for t in entry.get("top_logprobs") or []}
            p0, p1 = top.get("0", 0.0), top.get("1", 0.0)
            if p0 + p1 == 0:
                return None
            probs.append(p1 / (p0 + p1))
    return probs if len(probs) == n else None


TOP_LOGPROBS = 5


def judge_messages(templates: tuple[str, ...], label: str, excerpts: list[str]) -> list[dict[str, str]]:
    return [{"role": "system", "content": prompts.render(templates[0])},
            {"role": "user", "content": prompts.render(templates[1], label=prompts.escape_data(label),
                                                       excerpts="\n\n".join(excerpts))}]


def judge_max_tokens(n: int) -> int:
    return 8 * n + 32


def judge_parser(n: int) -> Callable[[LLMReply], tuple[list[int], list[float] | None]]:
    """A judge reply -> (0/1 answers, P(1) where logprobs were returned); ValueError when unusable."""
    def parse(reply: LLMReply) -> tuple[list[int], list[float] | None]:
        return parse_answers(reply.text, n), answer_probabilities(reply.logprobs, n)
    return parse


async def judge(client: LLMClient, model: str, templates: tuple[str, ...], label: str, excerpts: list[str],
                max_reasks: int = 1, top_logprobs: int | None = TOP_LOGPROBS
                ) -> tuple[list[int], list[float] | None, list[CallRow]]:
    """One chat request for all excerpts; returns the 0/1 answers, P(1) if available, and the calls."""
    (answers, probs), calls = await ask_parsed(
        client, judge_parser(len(excerpts)), role="judge", model=model,
        messages=judge_messages(templates, label, excerpts), max_tokens=judge_max_tokens(len(excerpts)),
        reask="reask_json", max_reasks=max_reasks, top_logprobs=top_logprobs)
    return answers, probs, calls


def _need_both(examples: list[Any], missing: dict[bool, str]) -> None:
    classes = {e[-1] for e in examples}
    for cls in (True, False):
        if cls not in classes:
            raise LLMFailure(f"not scored: {missing[cls]}", [], FailureCode.ONE_CLASS)


def request(name: str, fc: FeatureContexts, label: str, n: int, seed: int
            ) -> tuple[list[bool], tuple[str, ...], list[str]]:
    """What judge `name` ('detection' | 'fuzzing') asks about a feature: the true classes, its templates and
    the excerpts. LLMFailure (code one_class) when both classes cannot be shown."""
    active = f"too few holdout contexts where the feature is active (above {fc.threshold:g})"
    if name == "detection":
        d_examples = detection_examples(fc, n, seed)
        _need_both(d_examples, {
            True: active,
            False: f"too few holdout random contexts where the feature is inactive (never above {fc.threshold:g}; "
                   "a dense feature is active in all of them: collect with a higher --threshold or score with "
                   "--judge-quiet)"})
        return ([y for _, y in d_examples], DETECT_TEMPLATES,
                [_excerpt(i, c.tokens, set()) for i, (c, _) in enumerate(d_examples, 1)])
    f_examples = fuzzing_examples(fc, n, seed)
    _need_both(f_examples, {
        True: active,
        False: "too few active holdout contexts with enough tokens below 30% of their max to mark wrongly"})
    return ([y for *_, y in f_examples], FUZZ_TEMPLATES,
            [_excerpt(i, c.tokens, marks) for i, (c, marks, _) in enumerate(f_examples, 1)])


async def detection(client: LLMClient, model: str, fc: FeatureContexts, label: str, n: int, seed: int
                    ) -> tuple[list[bool], list[int], list[float] | None, list[CallRow]]:
    ys, templates, excerpts = request("detection", fc, label, n, seed)
    answers, probs, calls = await judge(client, model, templates, label, excerpts)
    return ys, answers, probs, calls


async def fuzzing(client: LLMClient, model: str, fc: FeatureContexts, label: str, n: int, seed: int
                  ) -> tuple[list[bool], list[int], list[float] | None, list[CallRow]]:
    ys, templates, excerpts = request("fuzzing", fc, label, n, seed)
    answers, probs, calls = await judge(client, model, templates, label, excerpts)
    return ys, answers, probs, calls
