"""Detection and fuzzing, as Delphi defines them: an LLM reads the label and judges held-out excerpts.

Detection: is the feature active anywhere in this excerpt? Positives are the holdout's top
contexts, negatives its random contexts where the feature stays below 20% of its max.
Fuzzing: are the marked tokens the ones the label describes? Positives are top contexts with the
truly active tokens marked; negatives are other top contexts with as many marks on random tokens.
Each is one chat request per feature (JSON answers, one re-ask); scored by balanced accuracy,
and by AUC where the endpoint returns top_logprobs for the answer digits.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from autointerp import prompts
from autointerp.llm import LLMCall, LLMClient, LLMFailure, LLMReply, ask_parsed
from autointerp.types import Context, FailureCode, FeatureContexts

DETECT_TEMPLATES = ("detect.system", "detect.user", "reask_json")
FUZZ_TEMPLATES = ("fuzz.system", "fuzz.user", "reask_json")
ACTIVE_FRACTION = 0.2


def _excerpt(i: int, tokens: list[str], marked: set[int]) -> str:
    text = "".join(f"<<{prompts.escape_data(t)}>>" if j in marked else prompts.escape_data(t)
                   for j, t in enumerate(tokens))
    return f"<excerpt {i}>\n{text}\n</excerpt {i}>"


def detection_examples(fc: FeatureContexts, n: int, seed: int) -> list[tuple[Context, bool]]:
    top = sorted(fc.select("holdout", "top"), key=lambda c: c.rank)[:n]
    quiet = [c for c in sorted(fc.select("holdout", "random"), key=lambda c: c.rank)
             if c.max_act < ACTIVE_FRACTION * fc.max_act][:n]
    examples = [(c, True) for c in top] + [(c, False) for c in quiet]
    random.Random(seed * 7919 + fc.feature).shuffle(examples)
    return examples


def fuzzing_examples(fc: FeatureContexts, n: int, seed: int) -> list[tuple[Context, set[int], bool]]:
    top = sorted(fc.select("holdout", "top"), key=lambda c: c.rank)
    rng = random.Random(seed * 104729 + fc.feature)
    out: list[tuple[Context, set[int], bool]] = []
    for k, c in enumerate(top[: 2 * n]):
        true_marks = {j for j, a in enumerate(c.acts) if a >= ACTIVE_FRACTION * fc.max_act and a > 0}
        if not true_marks:
            continue
        if k % 2 == 0:
            out.append((c, true_marks, True))
        else:
            out.append((c, set(rng.sample(range(len(c.tokens)), len(true_marks))), False))
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
                ) -> tuple[list[int], list[float] | None, list[LLMCall]]:
    """One chat request for all excerpts; returns the 0/1 answers, P(1) if available, and the calls."""
    (answers, probs), calls = await ask_parsed(
        client, judge_parser(len(excerpts)), role="judge", model=model,
        messages=judge_messages(templates, label, excerpts), max_tokens=judge_max_tokens(len(excerpts)),
        reask="reask_json", max_reasks=max_reasks, top_logprobs=top_logprobs)
    return answers, probs, calls


def _need_both(examples: list[Any], name: str, what: str) -> None:
    classes = {e[-1] for e in examples}
    if classes != {True, False}:
        raise LLMFailure(f"not scored: too few {what} for both classes", [], FailureCode.ONE_CLASS)


def request(name: str, fc: FeatureContexts, label: str, n: int, seed: int
            ) -> tuple[list[bool], tuple[str, ...], list[str]]:
    """What judge `name` ('detection' | 'fuzzing') asks about a feature: the true classes, its templates and
    the excerpts. LLMFailure (code one_class) when both classes cannot be shown."""
    if name == "detection":
        d_examples = detection_examples(fc, n, seed)
        _need_both(d_examples, name, "holdout contexts where the feature stays quiet")
        return ([y for _, y in d_examples], DETECT_TEMPLATES,
                [_excerpt(i, c.tokens, set()) for i, (c, _) in enumerate(d_examples, 1)])
    f_examples = fuzzing_examples(fc, n, seed)
    _need_both(f_examples, name, "holdout top contexts with active tokens")
    return ([y for *_, y in f_examples], FUZZ_TEMPLATES,
            [_excerpt(i, c.tokens, marks) for i, (c, marks, _) in enumerate(f_examples, 1)])


async def detection(client: LLMClient, model: str, fc: FeatureContexts, label: str, n: int, seed: int
                    ) -> tuple[list[bool], list[int], list[float] | None, list[LLMCall]]:
    ys, templates, excerpts = request("detection", fc, label, n, seed)
    answers, probs, calls = await judge(client, model, templates, label, excerpts)
    return ys, answers, probs, calls


async def fuzzing(client: LLMClient, model: str, fc: FeatureContexts, label: str, n: int, seed: int
                  ) -> tuple[list[bool], list[int], list[float] | None, list[LLMCall]]:
    ys, templates, excerpts = request("fuzzing", fc, label, n, seed)
    answers, probs, calls = await judge(client, model, templates, label, excerpts)
    return ys, answers, probs, calls
