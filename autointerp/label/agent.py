"""The labelling agent: best-of-k (k candidate labels from varied evidence, each simulated on the
calibration contexts only, the best kept) and agent (best-of-k, then rounds in which the explainer writes
probe texts, sees the subject's real activations on them, and revises). Every step is stored in
`agent_steps` as it finishes, with its calls, so a killed run resumes from the stored steps and asks
nothing twice. The chosen label is then scored like any other, on the untouched scoring contexts."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from autointerp import store
from autointerp.config import LabelConfig, LLMConfig, settings_hash
from autointerp.errors import BadInput
from autointerp.label import evidence, explain, negatives, probes, scoring
from autointerp.label.fewshot import fewshot_for
from autointerp.label.simulators import Ask
from autointerp.label.units import Settings, scoring_contexts, send
from autointerp.llm import bodies
from autointerp.llm.client import BudgetExhausted, LLMClient, LLMFailure, LLMReply
from autointerp.records import AgentStep, CallRow, Explanation, FailureCode, FeatureContexts

BUDGET_STOPPED = "budget_stopped"  # the code of a step the budget stopped inside: finished on resume


class StepStopped(Exception):
    """The budget ran out inside a step: what the step got so far, to store before stopping."""

    def __init__(self, values: dict[str, Any], calls: list[CallRow], cause: BudgetExhausted):
        super().__init__(str(cause))
        self.values, self.calls, self.cause = values, calls, cause


def refuse_batch_api(cfg: LabelConfig, llm_cfg: LLMConfig) -> None:
    """The agent's rounds depend on each other's answers: it runs live only."""
    if llm_cfg.batch_api and cfg.strategy != "one-shot":
        raise BadInput(f"--strategy {cfg.strategy} runs live only (each round needs the last one's answers): "
                       "drop --batch-api, or use --strategy one-shot with it")


def _label_of(reply: LLMReply) -> str:
    return explain.parse_label(reply.text).label


def _tokens(calls: list[CallRow]) -> dict[str, int]:
    return {"prompt_tokens": sum(c.prompt_tokens for c in calls),
            "completion_tokens": sum(c.completion_tokens for c in calls)}


@dataclass
class Agent:
    """What every feature's run shares: the store, the pass's settings, the client and model names, and
    the subjects that probe texts run on."""

    db: str | Path
    settings: Settings
    client: LLMClient
    explainer_model: str
    simulator_model: str
    subjects: probes.Subjects
    _evidence_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _evidence_ready: set[tuple[str, int]] = field(default_factory=set)

    async def _once(self, kind: str, dictionary_id: int, done: Callable[[Any], bool],
                    make: Callable[[probes.Loaded], None]) -> None:
        """Compute and store a dictionary's `kind` of evidence on first need, unless it is stored already."""
        async with self._evidence_lock:
            if (kind, dictionary_id) not in self._evidence_ready:
                with store.open_store(self.db, wait_s=600) as con:
                    stored = done(con)
                if not stored:
                    await asyncio.to_thread(make, await self.subjects.loaded(dictionary_id))
                self._evidence_ready.add((kind, dictionary_id))

    async def outputs(self, dictionary_id: int, feature: int) -> dict[str, list[tuple[str, float]]]:
        """The feature's output-side evidence, computed and stored once per dictionary on first need."""
        await self._once("outputs", dictionary_id, partial(store.has_output_tokens, dictionary_id=dictionary_id),
                         partial(self._store_outputs, dictionary_id))
        with store.open_store(self.db, wait_s=600) as con:
            return store.output_tokens(con, dictionary_id, feature)

    def _store_outputs(self, dictionary_id: int, loaded: probes.Loaded) -> None:
        rows = evidence.output_rows(loaded)
        if rows:
            with store.open_store(self.db, wait_s=600) as con:
                store.add_output_tokens(con, dictionary_id, rows)

    async def hard_negatives(self, dictionary_id: int, feature: int) -> list[store.HardNegative]:
        """The feature's hard negatives, the dictionary's computed and stored once on first need."""
        await self._once("negatives", dictionary_id, partial(store.has_neighbours, dictionary_id=dictionary_id),
                         partial(negatives.compute, self.db))
        with store.open_store(self.db, wait_s=600) as con:
            return store.hard_negatives(con, dictionary_id, feature)

    @property
    def cfg(self) -> LabelConfig:
        return self.settings.cfg

    def steps_key(self) -> str:
        return settings_hash({**self.cfg.strategy_settings(), "prompt_hash": evidence.strategy_hash(self.cfg),
                              "simulator": self.simulator_model, "simulation": self.settings.sim_settings_hash})

    async def explain(self, fc: FeatureContexts) -> tuple[Explanation, list[CallRow]]:
        """The feature's explanation by the configured strategy (its calls are stored with its steps)."""
        return await FeatureRun(self, fc).run(), []


class FeatureRun:
    """One feature's steps, replayed from the store where they exist, asked and stored where they do not."""

    def __init__(self, agent: Agent, fc: FeatureContexts):
        self.agent, self.fc, self.cfg = agent, fc, agent.cfg
        self.key = agent.steps_key()
        self.stored: list[AgentStep] = []
        self.n = 0
        self.best: AgentStep | None = None
        self.outputs: dict[str, list[tuple[str, float]]] = {}
        self.negatives: list[store.HardNegative] = []

    def _step(self, kind: str, rnd: int, **values: Any) -> AgentStep:
        return AgentStep(dictionary_id=self.fc.dictionary_id, feature=self.fc.feature,
                         explainer=self.agent.explainer_model, strategy=self.cfg.strategy, settings_hash=self.key,
                         step=self.n, round=rnd, kind=kind, **values)

    async def step(self, kind: str, rnd: int, make: Callable[[], Awaitable[tuple[dict[str, Any], list[CallRow]]]]
                   ) -> AgentStep:
        """The next step: the stored one, else made, stored with its calls, and returned. A step the budget
        stopped inside is stored with what it got (its label) and finished on resume without asking it again."""
        before: AgentStep | None = None
        if self.n < len(self.stored):
            before = self.stored[self.n]
            if before.code != BUDGET_STOPPED:
                self.n += 1
                return before
            make = partial(self._finish_stopped, before)
        try:
            values, calls = await make()
        except StepStopped as stop:
            await self._store(kind, rnd, stop.values, stop.calls, before)
            raise stop.cause from None
        s = await self._store(kind, rnd, values, calls, before)
        self.n += 1
        return s

    async def _store(self, kind: str, rnd: int, values: dict[str, Any], calls: list[CallRow],
                     before: AgentStep | None) -> AgentStep:
        tokens = _tokens(calls)
        if before is not None:  # the stopped step's own tokens count too
            tokens = {k: v + getattr(before, k) for k, v in tokens.items()}
        s = self._step(kind, rnd, **values, **tokens)
        calls = [c.model_copy(update={"dictionary_id": s.dictionary_id, "feature": s.feature}) for c in calls]
        await asyncio.to_thread(self._write, s, calls, before is not None)
        return s

    def _write(self, s: AgentStep, calls: list[CallRow], replace: bool) -> None:
        with store.open_store(self.agent.db, wait_s=600) as con:
            store.add_agent_step(con, s, calls, replace_stopped=replace)

    def _consider(self, s: AgentStep) -> None:
        """Keep the label with the best calibration score; an undefined score (the calibration contexts never
        fire, or the simulation is flat) ranks last, so the first usable candidate stands when none has one."""
        def rank(x: AgentStep) -> float:
            return -math.inf if x.calibration_score is None else x.calibration_score

        if s.status == "ok" and (self.best is None or rank(s) > rank(self.best)):
            self.best = s

    async def run(self) -> Explanation:
        phash = self.agent.settings.explain_hash
        contexts = explain.explain_contexts(self.fc, self.cfg.n_explain_top, self.cfg.n_explain_quantile)
        if not contexts:
            return self.agent.settings.with_config(explain.explanation(
                self.fc, self.agent.explainer_model, phash, None, explain.NO_CONTEXTS, FailureCode.NO_CONTEXTS))
        self.stored = await asyncio.to_thread(self._read)
        self.outputs = await self.agent.outputs(self.fc.dictionary_id, self.fc.feature)
        self.negatives = await self.agent.hard_negatives(self.fc.dictionary_id, self.fc.feature)
        for i in range(self.cfg.k):
            self._consider(await self.step("candidate", 0, partial(self._candidate, i)))
        if self.cfg.strategy == "agent" and self.best is not None:
            await self._rounds(evidence.explain_messages(self.fc, contexts, self.outputs, self.negatives), self.best.text or "")
        choice = await self.step("choice", self.cfg.agent_rounds if self.cfg.strategy == "agent" else 0,
                                 self._choice)
        if choice.status != "ok":
            e = explain.explanation(self.fc, self.agent.explainer_model, phash, None, choice.error, choice.code)
        else:
            e = explain.explanation(self.fc, self.agent.explainer_model, phash, choice.text, None)
            e = e.model_copy(update={"explanation_id": choice.explanation_id})
        return self.agent.settings.with_config(e)

    def _read(self) -> list[AgentStep]:
        with store.open_store(self.agent.db, wait_s=600) as con:
            return store.agent_steps(con, self.fc.dictionary_id, self.fc.feature, self.agent.explainer_model,
                                     self.key)

    async def _rounds(self, base: list[dict[str, str]], label: str) -> None:
        """Probe and revise: each round's probes are written under the latest label; the best label by
        calibration score is kept whatever a later round does. A round without usable probes ends them."""
        for rnd in range(1, self.cfg.agent_rounds + 1):
            request = evidence.probe_messages(base, label, self.cfg.agent_probes)
            probe = await self.step("probe", rnd, partial(self._probe, request))
            if probe.status != "ok":
                return
            revision = await self.step("revision", rnd, partial(self._revise, request, probe))
            self._consider(revision)
            if revision.status == "ok" and revision.text:
                label = revision.text

    # ------------------------------------------------------------ the steps

    async def _ask(self, part: str, messages: list[dict[str, str]], parse: Callable[[LLMReply], Any],
                   reask: str, max_tokens: int, temperature: float = 0.0) -> tuple[Any, list[CallRow]]:
        ask = Ask(part, bodies.CHAT_URL, "explainer", bodies.chat_body(self.agent.explainer_model, messages,
                                                                       max_tokens, temperature), parse,
                  max_reasks=self.cfg.max_reasks, reask=reask)
        return await send(self.agent.client, ask)

    async def _labelled(self, label_asked: Awaitable[tuple[Any, list[CallRow]]], prompt: str
                        ) -> tuple[dict[str, Any], list[CallRow]]:
        """A candidate or revision step: the label the explainer gave, with its calibration score."""
        try:
            label, calls = await label_asked
        except LLMFailure as exc:
            return {"status": "failed", "prompt": prompt, "code": exc.code, "error": str(exc)[:1000]}, exc.calls
        return await self._calibrated(label, prompt, calls)

    async def _finish_stopped(self, before: AgentStep) -> tuple[dict[str, Any], list[CallRow]]:
        """A step the budget stopped inside, finished from its stored label (its temperature kept)."""
        try:
            values, calls = await self._calibrated(before.text or "", before.prompt or "", [])
        except StepStopped as stop:
            stop.values["temperature"] = before.temperature
            raise
        return {**values, "temperature": before.temperature}, calls

    async def _calibrated(self, label: str, prompt: str, calls: list[CallRow]) -> tuple[dict[str, Any], list[CallRow]]:
        """The step's values once `label` is simulated on the calibration contexts (StepStopped: the budget ran
        out on the way)."""
        score, sim_calls, failure, stopped = await self._calibrate(label)
        if stopped is not None:
            raise StepStopped({"status": "failed", "text": label, "prompt": prompt, "code": BUDGET_STOPPED,
                               "error": str(stopped)}, calls + sim_calls, stopped)
        values: dict[str, Any] = {"text": label, "prompt": prompt, "calibration_score": score}
        if failure is not None:
            values.update(status="failed", code=failure.code, error=str(failure)[:1000])
        return values, calls + sim_calls

    async def _candidate(self, i: int) -> tuple[dict[str, Any], list[CallRow]]:
        messages = evidence.explain_messages(self.fc, evidence.candidate_contexts(self.fc, self.cfg, i), self.outputs,
                                             self.negatives)
        t = evidence.candidate_temperature(i)
        try:
            values, calls = await self._labelled(
                self._ask("explain", messages, _label_of, "explain.reask", explain.MAX_TOKENS, t),
                json.dumps(messages))
        except StepStopped as stop:
            stop.values["temperature"] = t
            raise
        return {**values, "temperature": t}, calls

    async def _probe(self, request: list[dict[str, str]]) -> tuple[dict[str, Any], list[CallRow]]:
        try:
            parsed, calls = await self._ask("probe", request, probes.probe_parser(self.cfg.agent_probes),
                                            "agent.probe_reask", 60 * self.cfg.agent_probes)
        except LLMFailure as exc:
            code = FailureCode.NO_PROBES if exc.code == FailureCode.UNUSABLE_REPLY else exc.code
            return {"status": "failed", "prompt": json.dumps(request), "code": str(code),
                    "error": str(exc)[:1000]}, exc.calls
        subject = await self.agent.subjects.get(self.fc.dictionary_id, self.fc.feature)
        results = await asyncio.to_thread(subject.run, parsed)
        text = "\n".join(("+ " if p.expect else "- ") + p.text for p in parsed)
        return {"text": text, "prompt": json.dumps(request), "activations": results}, calls

    async def _revise(self, request: list[dict[str, str]], probe: AgentStep) -> tuple[dict[str, Any], list[CallRow]]:
        shown, summary = probes.format_results(probe.activations or [], self.fc.max_act)
        messages = evidence.revise_messages(request, probe.text or "", shown, summary)
        return await self._labelled(self._ask("revise", messages, _label_of, "explain.reask", explain.MAX_TOKENS),
                                    json.dumps(messages))

    async def _choice(self) -> tuple[dict[str, Any], list[CallRow]]:
        if self.best is None:
            return {"status": "failed", "code": FailureCode.UNUSABLE_REPLY,
                    "error": "no candidate label could be made"}, []
        return {"text": self.best.text, "calibration_score": self.best.calibration_score,
                "explanation_id": str(uuid.uuid4())}, []

    async def _calibrate(self, label: str
                         ) -> tuple[float | None, list[CallRow], LLMFailure | None, BudgetExhausted | None]:
        """`label` simulated on the calibration contexts only: its pooled correlation (None when undefined),
        the calls, and the failure or budget stop that left it unscored."""
        contexts = [c for c, purpose in scoring_contexts(self.fc, self.cfg) if purpose == "calibration"]
        fewshot = (await asyncio.to_thread(fewshot_for, self.agent.db, self.fc.dictionary_id, self.fc.feature,
                                           self.cfg.fewshot)) if self.cfg.fewshot else []
        plan = self.agent.settings.simulator.plan(self.agent.simulator_model, label, contexts, fewshot)
        answers, calls = await self._send(plan.asks)
        stopped = next((a for a in answers.values() if isinstance(a, BudgetExhausted)), None)
        try:
            failure = next((a for a in answers.values() if isinstance(a, LLMFailure)), None)
            if failure is not None or stopped is not None:
                raise failure or LLMFailure("stopped by the budget", [])
            predicted = plan.read(answers)
        except LLMFailure as exc:
            return None, calls, exc, stopped
        value = scoring.pooled_correlation([(np.asarray(c.acts), np.asarray(p))
                                            for c, p in zip(contexts, predicted, strict=True)])
        return (None if value is None or not math.isfinite(value) else float(value)), calls, None, None

    async def _send(self, asks: list[Ask]) -> tuple[dict[str, Any], list[CallRow]]:
        """Send `asks` live, four at a time; each answer is its value, its LLMFailure or the budget stop, so
        the calls already made are kept when the budget runs out."""
        gate = asyncio.Semaphore(4)

        async def one(ask: Ask) -> tuple[Any, list[CallRow]]:
            async with gate:
                try:
                    return await send(self.agent.client, ask)
                except LLMFailure as exc:
                    return exc, exc.calls
                except BudgetExhausted as exc:
                    return exc, []

        results = await asyncio.gather(*(one(a) for a in asks))
        return ({a.part: r for a, (r, _) in zip(asks, results, strict=True)},
                [c for _, made in results for c in made])
