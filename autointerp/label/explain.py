"""Explainers: records + prompt + client -> a label. The LLM explainer and the token-lookup baseline."""

from __future__ import annotations

import re
import uuid
from collections import defaultdict

from pydantic import ValidationError

from autointerp.llm import prompts
from autointerp.llm.client import LLMClient, LLMFailure, ask_parsed
from autointerp.records import CallRow, Context, Explanation, FailureCode, FeatureContexts, Label

EXPLAIN_TEMPLATES = ("explain.system", "explain.user", "explain.reask")
BASELINE = "baseline:token-lookup"
BASELINE_HASH = "token-lookup-v1"


def scale(acts: list[float], max_act: float) -> list[int]:
    """Activations on the 0-9 scale shown to LLMs (9 = the feature's max)."""
    if max_act <= 0:
        return [0] * len(acts)
    return [min(9, max(0, round(9 * a / max_act))) for a in acts]


def format_excerpts_full(contexts: list[Context], max_act: float) -> str:
    """The first excerpt format ("full", kept for comparison): each whole context, every token at a
    nonzero 0-9 level marked on its own, then all of them listed with their levels."""
    blocks = []
    for i, c in enumerate(contexts, 1):
        levels = scale(c.acts, max_act)
        text = "".join(f"<<{prompts.escape_data(t)}>>" if s > 0 else prompts.escape_data(t)
                       for t, s in zip(c.tokens, levels, strict=True))
        active = ", ".join(f'"{prompts.escape_data(t).strip()}" {s}' for t, s in zip(c.tokens, levels, strict=True) if s > 0)
        blocks.append(f"<excerpt {i}>\n{text}\n</excerpt {i}>\nActive tokens: {active or 'none'}")
    return "\n\n".join(blocks)


MARK_FRACTION = 0.3  # Delphi's explainer threshold: marked tokens reach 30% of their excerpt's max
WINDOW_BEFORE = 16  # tokens shown before an excerpt's peak (what leads up to it matters most)
WINDOW_AFTER = 4  # and after it
MAX_LISTED = 4  # strongest marked tokens listed per excerpt


def window(acts: list[float]) -> range:
    """The token positions shown: WINDOW_BEFORE before the excerpt's peak (its first maximum) to
    WINDOW_AFTER after it, clipped to the context."""
    peak = max(range(len(acts)), key=lambda k: (acts[k], -k))
    return range(max(0, peak - WINDOW_BEFORE), min(len(acts), peak + WINDOW_AFTER + 1))


def format_excerpts_compact(contexts: list[Context], max_act: float) -> str:
    """The compact excerpt format: a window around each context's peak; runs of tokens at or above
    MARK_FRACTION of that context's max marked as one <<run>> (Delphi's highlighting); then the
    MAX_LISTED strongest marked tokens with their 0-9 level on the feature's scale. '…' stands for
    text cut off by the window. A context with no positive activation is shown whole, unmarked."""
    blocks = []
    for i, c in enumerate(contexts, 1):
        top = max(c.acts, default=0.0)
        shown = window(c.acts) if top > 0 and c.tokens else range(len(c.tokens))
        marked = {k for k in shown if top > 0 and c.acts[k] >= MARK_FRACTION * top}
        text = "…" if shown.start > 0 else ""
        for k in shown:
            opens, closes = k in marked and k - 1 not in marked, k in marked and k + 1 not in marked
            text += ("<<" if opens else "") + prompts.escape_data(c.tokens[k]) + (">>" if closes else "")
        text += "…" if shown.stop < len(c.tokens) else ""
        levels = scale(c.acts, max_act)
        strongest = sorted(marked, key=lambda k: (-c.acts[k], k))[:MAX_LISTED]
        listed = ", ".join(f'"{prompts.escape_data(c.tokens[k]).strip()}" {levels[k]}' for k in strongest)
        blocks.append(f"<excerpt {i}>{text}</excerpt>\nStrongest: {listed or 'none'}")
    return "\n".join(blocks)


# The excerpt formats by name; the format's version goes into the explanation's prompt hash, since the
# format lives in code, not in the template files.
EXCERPT_FORMATS = {"compact": format_excerpts_compact, "full": format_excerpts_full}
FORMAT_VERSIONS = {"compact": "excerpts-compact-v1", "full": ""}
EXCERPT_FORMAT = "compact"


def format_excerpts(contexts: list[Context], max_act: float, fmt: str = EXCERPT_FORMAT) -> str:
    return EXCERPT_FORMATS[fmt](contexts, max_act)


def explain_hash(fmt: str = EXCERPT_FORMAT) -> str:
    """The hash stored with every LLM explanation: the templates and the excerpt format's version."""
    return prompts.templates_hash(*EXPLAIN_TEMPLATES, version=FORMAT_VERSIONS[fmt])


def spread_over_bins(contexts: list[Context], n: int) -> list[Context]:
    """n contexts spread evenly over their quantile bins, deterministically.

    Round-robin over the bins from the highest down, each bin's contexts in rank order; when a round
    has fewer picks left than bins with contexts, the picks go to evenly spaced bins (5 of 10 bins:
    9, 7, 5, 3, 1) rather than to the highest ones. Contexts without a bin count as one bin.
    """
    bins: dict[int, list[Context]] = {}
    for c in contexts:
        bins.setdefault(-1 if c.quantile is None else c.quantile, []).append(c)
    queues = [sorted(bins[q], key=lambda c: c.rank) for q in sorted(bins, reverse=True)]
    picked: list[Context] = []
    while len(picked) < n:
        live = [i for i, q in enumerate(queues) if q]
        if not live:
            break
        k = min(n - len(picked), len(live))
        picked += [queues[live[j * len(live) // k]].pop(0) for j in range(k)]
    return picked


def explain_contexts(fc: FeatureContexts, n_top: int, n_quantile: int) -> list[Context]:
    """What the explainer sees: the explain split's top contexts, then quantile samples spread evenly over
    the bins (round-robin from the highest bin down; see spread_over_bins)."""
    top = sorted(fc.select("explain", "top"), key=lambda c: c.rank)[:n_top]
    return top + spread_over_bins(fc.select("explain", "quantile"), n_quantile)


_PREFIX = re.compile(r"^\s*(label|answer|explanation|phrase|feature)\s*[:\-]\s*", re.IGNORECASE)


def parse_label(text: str) -> Label:
    """The first non-empty line, without a 'Label:' prefix, quotes or markdown; ValueError says why not."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        raise ValueError("the reply was empty")
    # The first sentence: small models run on after the phrase.
    first = re.split(r"(?<=[.!?;])\s", _PREFIX.sub("", lines[0]).strip(), maxsplit=1)[0]
    line = first.strip().strip("*_`\"' .")
    try:
        return Label(label=line)
    except ValidationError as exc:
        raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None


def explanation(fc: FeatureContexts, explainer: str, phash: str, label: str | None, error: str | None,
                code: str | None = None) -> Explanation:
    """A new explanation row: the label, or (label None) a failure with its reason and code."""
    return Explanation(explanation_id=str(uuid.uuid4()), dictionary_id=fc.dictionary_id, feature=fc.feature,
                       label=label, explainer=explainer, prompt_hash=phash,
                       status="ok" if label is not None else "failed", error=error, code=code)


MAX_TOKENS = 60


def explain_messages(fc: FeatureContexts, n_top: int, n_quantile: int,
                     fmt: str = EXCERPT_FORMAT) -> list[dict[str, str]] | None:
    """The explainer's request (system + user message), or None when the feature has nothing to show."""
    contexts = explain_contexts(fc, n_top, n_quantile)
    if not contexts:
        return None
    return [
        {"role": "system", "content": prompts.render("explain.system")},
        {"role": "user", "content": prompts.render("explain.user",
                                                   excerpts=format_excerpts(contexts, fc.max_act, fmt))},
    ]


NO_CONTEXTS = "no explain-split contexts: the feature never activated"


async def explain_with_llm(fc: FeatureContexts, client: LLMClient, model: str, *, n_top: int = 10,
                           n_quantile: int = 10, max_reasks: int = 2, max_tokens: int = MAX_TOKENS,
                           messages: list[dict[str, str]] | None = None,
                           fmt: str = EXCERPT_FORMAT) -> tuple[Explanation, list[CallRow]]:
    """Ask for a label; re-ask a bounded number of times on unusable output; then a failed row with the reason.
    `messages` continues a conversation begun elsewhere (a batch reply being re-asked); `fmt` names the
    excerpt format (EXCERPT_FORMATS)."""
    phash = explain_hash(fmt)
    messages = messages or explain_messages(fc, n_top, n_quantile, fmt)
    if messages is None:
        return explanation(fc, model, phash, None, NO_CONTEXTS, FailureCode.NO_CONTEXTS), []
    try:
        label, calls = await ask_parsed(client, lambda r: parse_label(r.text), role="explainer", model=model,
                                        messages=messages, max_tokens=max_tokens, reask="explain.reask",
                                        max_reasks=max_reasks)
    except LLMFailure as exc:
        return explanation(fc, model, phash, None, str(exc), exc.code), exc.calls
    return explanation(fc, model, phash, label.label, None), calls


def token_table(fc: FeatureContexts) -> dict[str, float]:
    """Mean activation of each token string over the explain split (all kinds)."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for c in fc.contexts:
        if c.split != "explain":
            continue
        for t, a in zip(c.tokens, c.acts, strict=True):
            sums[t] += a
            counts[t] += 1
    return {t: sums[t] / counts[t] for t in sums}


def explain_baseline(fc: FeatureContexts, n_tokens: int = 5) -> Explanation:
    """Token lookup: the label lists the tokens with the highest mean activation in the explain split."""
    table = token_table(fc)
    if not table or max(table.values()) <= 0:
        return explanation(fc, BASELINE, BASELINE_HASH, None, "no token with a positive mean activation",
                            FailureCode.NO_CONTEXTS)
    best = sorted(table, key=lambda t: (-table[t], t))[:n_tokens]
    label = "tokens " + ", ".join(repr(t) for t in best if table[t] > 0)
    return explanation(fc, BASELINE, BASELINE_HASH, label, None)


def simulate_baseline(fc: FeatureContexts, contexts: list[Context]) -> list[list[float]]:
    """Each token's mean activation in the explain split; tokens never seen there get the overall mean."""
    table = token_table(fc)
    overall = sum(table.values()) / len(table) if table else 0.0
    return [[table.get(t, overall) for t in c.tokens] for c in contexts]
