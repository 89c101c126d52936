"""Units of work: scoring one label (simulate -> score -> judge) as requests plus a function that turns
their answers into a typed bundle for the store. The live runner (label.stage) sends a unit's asks with
retries and re-asks; the batch runner (label.batch) puts the same asks in Batch API files and reads
the results back through the same `finish`. Neither runner knows what a simulation or a judge is."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autointerp import store
from autointerp.config import LabelConfig, settings_hash
from autointerp.label import detect, evidence, explain, scoring
from autointerp.label.roles import RoleGate
from autointerp.label.simulate import FewShot
from autointerp.label.simulators import SIMULATORS, Ask
from autointerp.llm import bodies, prompts
from autointerp.llm import client as llm
from autointerp.llm.client import LLMClient, LLMFailure, LLMReply
from autointerp.records import (
    CallRow,
    Context,
    Explanation,
    FailureCode,
    FeatureContexts,
    ScoreRow,
    ScoreRun,
    Simulation,
)

JUDGES = ("detection", "fuzzing")


@dataclass
class Progress:
    features_total: int = 0
    features_done: int = 0
    explained: int = 0
    scored: int = 0
    failed: Counter = field(default_factory=Counter)
    tokens: int = 0
    cost_usd: float = 0.0
    stopped: str | None = None
    notes: list[str] = field(default_factory=list)  # said once in the summary: stopped roles, endpoints
    score_values: dict[str, list[float]] = field(default_factory=dict)
    nulls: Progress | None = None  # the pass that scored the null labels


class Settings:
    """What a label pass's rows are keyed by: prompt hashes and the settings of its simulation runs."""

    def __init__(self, cfg: LabelConfig):
        self.cfg = cfg
        self.simulator = SIMULATORS[cfg.simulator_mode]
        self.explain_hash = explain.explain_hash() if cfg.strategy == "one-shot" else evidence.strategy_hash(cfg)
        templates = self.simulator.templates
        if cfg.judge:
            templates = (*templates, *detect.DETECT_TEMPLATES, *detect.FUZZ_TEMPLATES)
        self.sim_hash = prompts.templates_hash(*templates) + f"-{cfg.simulator_mode}"
        self.sim_settings = cfg.simulation_settings(self.sim_hash)
        self.sim_settings_hash = settings_hash(self.sim_settings)
        self.base_settings = {"prompt_hash": explain.BASELINE_HASH,
                              **cfg.model_dump(include={"n_sim_top", "n_sim_random", "n_boot"})}
        self.base_settings_hash = settings_hash(self.base_settings)

    def with_config(self, e: Explanation) -> Explanation:
        return e.model_copy(update={"config": self.cfg.model_dump_json()})

    def new_run(self, explanation_id: str, fc: FeatureContexts, simulator: str, baseline: bool = False) -> ScoreRun:
        phash, settings, key = ((explain.BASELINE_HASH, self.base_settings, self.base_settings_hash) if baseline
                                else (self.sim_hash, self.sim_settings, self.sim_settings_hash))
        return ScoreRun(run_id=str(uuid.uuid4()), explanation_id=explanation_id, dictionary_id=fc.dictionary_id,
                        feature=fc.feature, stage="simulation", simulator=simulator, prompt_hash=phash,
                        settings_hash=key, config=json.dumps(settings, sort_keys=True))


def scoring_contexts(fc: FeatureContexts, cfg: LabelConfig) -> list[tuple[Context, str]]:
    """Held-out contexts to simulate, each with its purpose: odd ranks calibrate, even ranks are scored."""
    top = sorted(fc.select("holdout", "top"), key=lambda c: c.rank)[: cfg.n_sim_top]
    rnd = sorted(fc.select("holdout", "random"), key=lambda c: c.rank)[: cfg.n_sim_random]
    return [(c, "calibration" if c.rank % 2 else "scoring") for c in top + rnd]


def score_records(fc: FeatureContexts, run: ScoreRun, contexts: list[tuple[Context, str]],
                  predicted: list[list[float]], n_boot: int) -> tuple[list[Simulation], list[ScoreRow]]:
    """Simulation and score records of one simulation run."""
    sims = [Simulation(run_id=run.run_id, explanation_id=run.explanation_id, simulator=run.simulator,
                       dictionary_id=fc.dictionary_id, feature=fc.feature, seq=c.seq, split=c.split, kind=c.kind,
                       rank=c.rank, purpose=purpose, predicted=[float(v) for v in p])
            for (c, purpose), p in zip(contexts, predicted, strict=True)]
    pairs = [(np.asarray(c.acts), np.asarray(p), c.kind, purpose)
             for (c, purpose), p in zip(contexts, predicted, strict=True)]
    scored = [(t, p) for t, p, _, purpose in pairs if purpose == "scoring"]
    scored_random = [(t, p) for t, p, kind, purpose in pairs if purpose == "scoring" and kind == "random"]
    calibration = [(t, p) for t, p, _, purpose in pairs if purpose == "calibration"]
    results = [
        scoring.correlation_score("correlation_top_random", scored, n_boot),
        scoring.correlation_score("correlation_random", scored_random, n_boot),
        scoring.explained_variance_score(calibration, scored, n_boot),
    ]
    return sims, [s.record(run) for s in results]


def call_rows(calls: list[CallRow], dictionary_id: int, feature: int, explanation_id: str | None,
              run_id: str | None = None) -> list[CallRow]:
    """The calls tied to the work they were for."""
    work = {"dictionary_id": dictionary_id, "feature": feature, "explanation_id": explanation_id, "run_id": run_id}
    return [c.model_copy(update=work) for c in calls]


def judged_view(fc: FeatureContexts, cfg: LabelConfig) -> FeatureContexts:
    """The feature as the judges see it: with --judge-quiet, tokens at or below that share of the max are
    inactive too (dense MLP neurons are rarely exactly 0)."""
    if cfg.judge_quiet <= 0:
        return fc
    return fc.model_copy(update={"threshold": max(fc.threshold, cfg.judge_quiet * fc.max_act)})


def judge_rows(name: str, ys: list[bool], answers: list[int], probs: list[float] | None, run: ScoreRun,
               n_boot: int) -> list[ScoreRow]:
    """A judge's scores: balanced accuracy, and AUC where P(1) is known."""
    y = np.asarray(ys, bool)
    rows = [scoring.accuracy_score(name, y, np.asarray(answers, bool), n_boot).record(run)]
    if probs is not None:
        rows.append(scoring.auc_score(f"{name}_auc", y, np.asarray(probs), n_boot).record(run))
    return rows


def failed_run_bundle(progress: Progress, run: ScoreRun, exc: LLMFailure, calls: list[CallRow]) -> store.Bundle:
    """A simulation run that failed: stored with its reason, code and every call it cost."""
    progress.failed[f"simulation: {exc.code}"] += 1
    failed = run.model_copy(update={"status": "failed", "error": str(exc)[:1000], "code": exc.code})
    return store.Bundle(runs=[failed], calls=call_rows(calls, run.dictionary_id, run.feature, run.explanation_id,
                                                       run.run_id))


def scored_run_bundle(progress: Progress, run: ScoreRun, sims: list[Simulation], scores: list[ScoreRow],
                      calls: list[CallRow], judge_errors: list[str]) -> store.Bundle:
    """A finished simulation run with its simulations, scores and calls (judges that could not run named)."""
    for sc in scores:
        if sc.value is not None:
            progress.score_values.setdefault(sc.method, []).append(sc.value)
    progress.scored += 1
    run = run.model_copy(update={"error": "; ".join(judge_errors) or None})
    return store.Bundle(runs=[run], simulations=sims, scores=scores,
                        calls=call_rows(calls, run.dictionary_id, run.feature, run.explanation_id, run.run_id))


class ExplainUnit:
    """Explain one feature: one chat ask (none when the feature has no explain contexts), re-asked with
    prompts/explain.reask while the reply is no usable label, and `finish`, which makes the explanation."""

    def __init__(self, settings: Settings, fc: FeatureContexts, model: str):
        cfg = settings.cfg
        self.settings, self.fc, self.model = settings, fc, model
        messages = explain.explain_messages(fc, cfg.n_explain_top, cfg.n_explain_quantile)
        self.ask = None if messages is None else Ask(
            "explain", bodies.CHAT_URL, "explainer", bodies.chat_body(model, messages, explain.MAX_TOKENS),
            _label_of, max_reasks=cfg.max_reasks, reask="explain.reask")

    def asks(self) -> list[Ask]:
        return [self.ask] if self.ask is not None else []

    def finish(self, answer: str | LLMFailure | None) -> Explanation:
        """The explanation from the label (or the failure; None: there was nothing to ask)."""
        fc, model, phash = self.fc, self.model, self.settings.explain_hash
        if answer is None:
            e = explain.explanation(fc, model, phash, None, explain.NO_CONTEXTS, FailureCode.NO_CONTEXTS)
        elif isinstance(answer, LLMFailure):
            e = explain.explanation(fc, model, phash, None, str(answer), answer.code)
        else:
            e = explain.explanation(fc, model, phash, answer, None)
        return self.settings.with_config(e)


def _label_of(reply: LLMReply) -> str:
    return explain.parse_label(reply.text).label


async def explain_live(unit: ExplainUnit, client: LLMClient) -> tuple[Explanation, list[CallRow]]:
    """An explain unit run live: its explanation and every call it cost."""
    if unit.ask is None:
        return unit.finish(None), []
    try:
        label, calls = await send(client, unit.ask)
    except LLMFailure as exc:
        return unit.finish(exc), exc.calls
    return unit.finish(label), calls


class ScoreUnit:
    """Score one label: its simulation asks, then its judge asks, and `finish`, which turns their answers
    (parsed values, or LLMFailure) and calls into the run's bundle. `list_prompts`: the simulator may put
    all contexts in one request (the live client falls back to one per context where refused); Batch API
    files keep one request per context."""

    def __init__(self, settings: Settings, fc: FeatureContexts, explanation_id: str, label: str, model: str,
                 fewshot: list[FewShot], list_prompts: bool = True):
        cfg = settings.cfg
        self.cfg, self.fc, self.label = cfg, fc, label
        self.run = settings.new_run(explanation_id, fc, model)
        self.contexts = scoring_contexts(fc, cfg)
        self.plan = settings.simulator.plan(model, label, [c for c, _ in self.contexts], fewshot,
                                            list_prompts=list_prompts)
        self.judges: dict[str, tuple[list[bool], Ask]] = {}
        self.unjudged: dict[str, LLMFailure] = {}
        for name in JUDGES if cfg.judge else ():
            try:
                ys, templates, excerpts = detect.request(name, judged_view(fc, cfg), label, cfg.n_judge, 0)
            except LLMFailure as exc:
                self.unjudged[name] = exc
                continue
            body = bodies.chat_body(model, detect.judge_messages(templates, label, excerpts),
                                 detect.judge_max_tokens(len(excerpts)), top_logprobs=detect.TOP_LOGPROBS)
            self.judges[name] = (ys, Ask(name, bodies.CHAT_URL, "judge", body, detect.judge_parser(len(excerpts)), 1))

    def simulation_asks(self) -> list[Ask]:
        return self.plan.asks

    def judge_asks(self) -> list[Ask]:
        return [ask for _, ask in self.judges.values()]

    def skip_judges(self, reason: str) -> None:
        """The judges not asked in this run (their role was stopped): named in the run's error."""
        for name in list(self.judges):
            self.unjudged[name] = LLMFailure(f"skipped ({FailureCode.ROLE_STOPPED}): {reason}", [], FailureCode.ROLE_STOPPED)
        self.judges.clear()

    def finish(self, progress: Progress, answers: dict[str, Any], calls: list[CallRow]) -> store.Bundle:
        """The run's bundle from its answers by part (a failed simulation fails the run; a failed judge is
        named in the run's error and its score left out)."""
        failure = next((answers[a.part] for a in self.plan.asks if isinstance(answers.get(a.part), LLMFailure)), None)
        try:
            if failure is not None:
                raise failure
            predicted = self.plan.read(answers)
        except LLMFailure as exc:
            return failed_run_bundle(progress, self.run, exc, calls)
        sims, scores = score_records(self.fc, self.run, self.contexts, predicted, self.cfg.n_boot)
        errors: list[str] = []
        for name in JUDGES if self.cfg.judge else ():
            answer = self.unjudged.get(name) or answers.get(name)
            if isinstance(answer, LLMFailure):
                errors.append(f"{name}: {answer}")
                if answer.code != FailureCode.ROLE_STOPPED:  # said once in the summary, not per feature
                    progress.failed[f"{name}: {answer.code}"] += 1
            elif answer is not None:
                judged, probs = answer
                scores += judge_rows(name, self.judges[name][0], judged, probs, self.run, self.cfg.n_boot)
        return scored_run_bundle(progress, self.run, sims, scores, calls, errors)


async def send(client: LLMClient, ask: Ask) -> tuple[Any, list[CallRow]]:
    """An ask sent live (retries in the client; unusable chat replies re-asked): its parsed answer and
    calls, or LLMFailure carrying the calls."""
    b = ask.body
    if ask.url == bodies.COMPLETIONS_URL:
        reply = await client.complete(role=ask.role, model=b["model"], prompt=b["prompt"], max_tokens=b["max_tokens"],
                                      echo=b.get("echo", False), logprobs=b.get("logprobs"))
        return ask.parse(reply), reply.calls
    return await llm.ask_parsed(client, ask.parse, role=ask.role, model=b["model"], messages=b["messages"],
                                max_tokens=b["max_tokens"], reask=ask.reask, max_reasks=ask.max_reasks,
                                top_logprobs=b.get("top_logprobs"), temperature=b.get("temperature", 0.0))


async def send_all(client: LLMClient, asks: list[Ask], answers: dict[str, Any], calls: list[CallRow],
                   parallel: int = 4) -> bool:
    """Send `asks` live, at most `parallel` at once, filling `answers` (a value or the LLMFailure) and
    `calls`; True when every ask got a usable answer."""
    gate = asyncio.Semaphore(max(1, parallel))

    async def one(ask: Ask) -> tuple[Any, list[CallRow]]:
        async with gate:
            try:
                return await send(client, ask)
            except LLMFailure as exc:
                return exc, exc.calls

    results = await asyncio.gather(*(one(a) for a in asks))
    for ask, (answer, made) in zip(asks, results, strict=True):
        answers[ask.part] = answer
        calls += made
    return not any(isinstance(a, LLMFailure) for a, _ in results)


def _record(gate: RoleGate, asks: list[Ask], answers: dict[str, Any], model: str) -> None:
    for ask in asks:
        answer = answers.get(ask.part)
        gate.record(ask.role, model, answer.code if isinstance(answer, LLMFailure) else None)


async def score_live(unit: ScoreUnit, client: LLMClient, progress: Progress,
                     gate: RoleGate | None = None) -> store.Bundle:
    """A score unit run live: the simulation first, the judges only once it succeeded. With a `gate`,
    a role stopped for this run is not asked: its part is recorded as skipped with the gate's line."""
    gate = gate or RoleGate()
    answers: dict[str, Any] = {}
    calls: list[CallRow] = []
    asks = unit.simulation_asks()
    if (line := gate.stopped("simulator")) is not None and asks:
        return failed_run_bundle(progress, unit.run, LLMFailure(line, [], FailureCode.ROLE_STOPPED), [])
    ok = await send_all(client, asks, answers, calls)
    _record(gate, asks, answers, unit.run.simulator)
    if ok:
        if (line := gate.stopped("judge")) is not None:
            unit.skip_judges(line)
        judges = unit.judge_asks()
        await send_all(client, judges, answers, calls, parallel=1)
        _record(gate, judges, answers, unit.run.simulator)
    return unit.finish(progress, answers, calls)
