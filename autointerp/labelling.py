"""Explain and score a dictionary's features with LLMs, as async workers over a queue derived from
the store: a feature is pending until its explanation (and score run) rows exist, so a killed batch
resumes where it stopped and finished work is never redone.

The batch holds the database only while it writes (once a second, in one transaction per flush),
so `autointerp sql` from another terminal reads what has been written so far."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autointerp import __version__, detect, explain, scoring, simulate, store
from autointerp.config import LabelConfig
from autointerp.llm import BudgetExhausted, LLMCall, LLMClient
from autointerp.types import Context, Explanation, FeatureContexts

FLUSH_S = 1.0
CHUNK = 128


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
    score_values: dict[str, list[float]] = field(default_factory=dict)


def _call_rows(calls: list[LLMCall], dictionary_id: int, feature: int, explanation_id: str | None) -> list[dict]:
    return [{"call_id": c.call_id, "role": c.role, "model": c.model, "endpoint": c.endpoint,
             "prompt_hash": c.prompt_hash, "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
             "latency_s": c.latency_s, "cost_usd": c.cost_usd, "status": c.status, "error": c.error,
             "dictionary_id": dictionary_id, "feature": feature, "explanation_id": explanation_id,
             "created_at": c.created_at.replace(tzinfo=None)} for c in calls]


def _explanation_row(e: Explanation, cfg: LabelConfig) -> dict:
    return {"explanation_id": e.explanation_id, "dictionary_id": e.dictionary_id, "feature": e.feature,
            "label": e.label, "explainer": e.explainer, "prompt_hash": e.prompt_hash, "status": e.status,
            "error": e.error, "config": cfg.model_dump_json(), "autointerp_version": __version__}


def scoring_contexts(fc: FeatureContexts, cfg: LabelConfig) -> list[tuple[Context, str]]:
    """Held-out contexts to simulate, each with its purpose: odd ranks calibrate, even ranks are scored."""
    top = sorted(fc.select("holdout", "top"), key=lambda c: c.rank)[: cfg.n_sim_top]
    rnd = sorted(fc.select("holdout", "random"), key=lambda c: c.rank)[: cfg.n_sim_random]
    return [(c, "calibration" if c.rank % 2 else "scoring") for c in top + rnd]


def score_rows(fc: FeatureContexts, explanation_id: str, simulator: str, contexts: list[tuple[Context, str]],
               predicted: list[list[float]], n_boot: int) -> tuple[list[dict], list[dict]]:
    """Simulation rows and score rows for one explanation."""
    sims = [{"explanation_id": explanation_id, "simulator": simulator, "dictionary_id": fc.dictionary_id,
             "feature": fc.feature, "seq": c.seq, "split": c.split, "kind": c.kind, "rank": c.rank,
             "purpose": purpose, "predicted": [float(v) for v in p]}
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
    rows = [s.row(explanation_id=explanation_id, dictionary_id=fc.dictionary_id, feature=fc.feature,
                  simulator=simulator) for s in results]
    return sims, rows


@dataclass
class _Job:
    feature: int
    baseline: bool
    explain_llm: bool
    to_score: list[tuple[str, str, str]]  # (explanation_id, label, explainer) already stored, not yet scored


class LabelBatch:
    """One `explain` / `score` / `run` over a selection of features."""

    def __init__(self, db: str | Path, dictionary_id: int, cfg: LabelConfig, client: LLMClient | None,
                 features: list[int], explain_stage: bool, score_stage: bool,
                 on_progress: Callable[[Progress], None] | None = None):
        self.db = db
        self.dictionary_id = dictionary_id
        self.cfg = cfg
        self.client = client
        self.features = features
        self.explain_stage = explain_stage
        self.score_stage = score_stage
        self.on_progress = on_progress
        self.progress = Progress()
        self._pending: list[store.Bundle] = []
        self.explain_hash = explain.prompts.templates_hash(*explain.EXPLAIN_TEMPLATES)
        templates = simulate.SIM_TEMPLATES if cfg.simulator_mode == "echo" else simulate.CHAT_TEMPLATES
        if cfg.judge:
            templates = (*templates, *detect.DETECT_TEMPLATES, *detect.FUZZ_TEMPLATES)
        self.sim_hash = explain.prompts.templates_hash(*templates) + f"-{cfg.simulator_mode}"

    # ------------------------------------------------------------ the queue

    def _jobs(self) -> list[_Job]:
        cfg = self.cfg
        # Read-write like the flushes: DuckDB refuses two configurations of one file in one process.
        with store.open_store(self.db, wait_s=600) as con:
            have_llm = store.explained_features(con, self.dictionary_id, cfg.explainer_model, self.explain_hash)
            have_base = store.explained_features(con, self.dictionary_id, explain.BASELINE, explain.BASELINE_HASH)
            unscored: dict[int, list[tuple[str, str, str]]] = {}
            if self.score_stage:
                for sim, phash, explainers in ((cfg.simulator_model, self.sim_hash, [cfg.explainer_model]),
                                               (explain.BASELINE, explain.BASELINE_HASH, [explain.BASELINE])):
                    for eid, feature, label, explainer in store.unscored_explanations(
                            con, self.dictionary_id, sim, phash, explainers):
                        unscored.setdefault(feature, []).append((eid, label, explainer))
        jobs = []
        for f in self.features:
            job = _Job(f, baseline=self.explain_stage and cfg.baseline and f not in have_base,
                       explain_llm=self.explain_stage and self.client is not None and f not in have_llm,
                       to_score=[t for t in unscored.get(f, []) if t[2] != explain.BASELINE or cfg.baseline])
            if job.baseline or job.explain_llm or job.to_score:
                jobs.append(job)
        return jobs

    # ------------------------------------------------------------ work

    async def _simulate(self, fc: FeatureContexts, label: str) -> tuple[list[tuple[Context, str]], list[list[float]],
                                                                         list[LLMCall]]:
        assert self.client is not None
        contexts = scoring_contexts(fc, self.cfg)
        fn = simulate.simulate_echo if self.cfg.simulator_mode == "echo" else simulate.simulate_chat
        predicted, calls = await fn(self.client, self.cfg.simulator_model, label, [c for c, _ in contexts])
        return contexts, predicted, calls

    async def _score_llm(self, fc: FeatureContexts, eid: str, label: str) -> tuple[dict[str, list[dict]], bool]:
        rows: dict[str, list[dict]] = {"simulations": [], "scores": [], "llm_calls": [], "score_runs": []}
        run = {"explanation_id": eid, "simulator": self.cfg.simulator_model, "prompt_hash": self.sim_hash}
        try:
            contexts, predicted, calls = await self._simulate(fc, label)
        except simulate.SimulationError as exc:
            rows["llm_calls"] = _call_rows(exc.calls, fc.dictionary_id, fc.feature, eid)
            rows["score_runs"] = [{**run, "status": "failed", "error": str(exc)[:1000]}]
            self.progress.failed[f"simulation: {_reason_class(str(exc))}"] += 1
            return rows, False
        sims, scores = score_rows(fc, eid, self.cfg.simulator_model, contexts, predicted, self.cfg.n_boot)
        judge_errors: list[str] = []
        if self.cfg.judge:
            judged, judge_calls, judge_errors = await self._judge(fc, eid, label)
            scores += judged
            calls = calls + judge_calls
        rows.update(simulations=sims, scores=scores, llm_calls=_call_rows(calls, fc.dictionary_id, fc.feature, eid),
                    score_runs=[{**run, "status": "ok", "error": "; ".join(judge_errors) or None}])
        for s in scores:
            if s["value"] is not None:
                self.progress.score_values.setdefault(s["method"], []).append(s["value"])
        return rows, True

    async def _judge(self, fc: FeatureContexts, eid: str, label: str) -> tuple[list[dict], list[LLMCall], list[str]]:
        """Detection and fuzzing rows (balanced accuracy, and AUC where P(1) is known)."""
        assert self.client is not None
        rows: list[dict] = []
        calls: list[LLMCall] = []
        errors: list[str] = []
        for name, fn in (("detection", detect.detection), ("fuzzing", detect.fuzzing)):
            try:
                labels, answers, probs, c = await fn(self.client, self.cfg.simulator_model, fc, label,
                                                     self.cfg.n_judge, 0)
            except detect.JudgeError as exc:
                calls += exc.calls
                errors.append(f"{name}: {exc}")
                self.progress.failed[f"{name}: {_reason_class(str(exc))}"] += 1
                continue
            calls += c
            y = np.asarray(labels, bool)
            results = [scoring.accuracy_score(name, y, np.asarray(answers, bool), self.cfg.n_boot)]
            if probs is not None:
                results.append(scoring.auc_score(f"{name}_auc", y, np.asarray(probs), self.cfg.n_boot))
            for sc in results:
                rows.append(sc.row(explanation_id=eid, dictionary_id=fc.dictionary_id, feature=fc.feature,
                                   simulator=self.cfg.simulator_model))
                if np.isfinite(sc.value):
                    self.progress.score_values.setdefault(sc.method, []).append(sc.value)
        return rows, calls, errors

    def _score_baseline(self, fc: FeatureContexts, eid: str) -> dict[str, list[dict]]:
        contexts = scoring_contexts(fc, self.cfg)
        predicted = explain.simulate_baseline(fc, [c for c, _ in contexts])
        sims, scores = score_rows(fc, eid, explain.BASELINE, contexts, predicted, self.cfg.n_boot)
        return {"simulations": sims, "scores": scores, "score_runs": [
            {"explanation_id": eid, "simulator": explain.BASELINE, "prompt_hash": explain.BASELINE_HASH,
             "status": "ok", "error": None}]}

    async def _do(self, job: _Job, fc: FeatureContexts) -> None:
        cfg = self.cfg
        if job.baseline:
            e = explain.explain_baseline(fc)
            rows: dict[str, list[dict]] = {"explanations": [_explanation_row(e, cfg)]}
            keys = None
            if self.score_stage and e.status == "ok":
                for t, r in self._score_baseline(fc, e.explanation_id).items():
                    rows.setdefault(t, []).extend(r)
                keys = [(e.explanation_id, explain.BASELINE, explain.BASELINE_HASH)]
            self._pending.append(store.Bundle(rows, explains=(fc.dictionary_id, fc.feature, explain.BASELINE,
                                                              explain.BASELINE_HASH), scores=keys))
        if job.explain_llm:
            assert self.client is not None
            e, calls = await explain.explain_with_llm(fc, self.client, cfg.explainer_model, n_top=cfg.n_explain_top,
                                                      n_quantile=cfg.n_explain_quantile, max_reasks=cfg.max_reasks)
            rows = {"explanations": [_explanation_row(e, cfg)],
                    "llm_calls": _call_rows(calls, fc.dictionary_id, fc.feature, e.explanation_id)}
            keys = None
            if e.status == "ok":
                self.progress.explained += 1
                if self.score_stage:
                    extra, ok = await self._score_llm(fc, e.explanation_id, e.label or "")
                    for t, r in extra.items():
                        rows.setdefault(t, []).extend(r)
                    keys = [(e.explanation_id, cfg.simulator_model, self.sim_hash)]
                    self.progress.scored += ok
            else:
                self.progress.failed[f"explanation: {_reason_class(e.error or '')}"] += 1
            self._pending.append(store.Bundle(rows, explains=(fc.dictionary_id, fc.feature, cfg.explainer_model,
                                                              self.explain_hash), scores=keys))
        for eid, label, explainer in job.to_score:
            if explainer == explain.BASELINE:
                self._pending.append(store.Bundle(self._score_baseline(fc, eid),
                                                  scores=[(eid, explain.BASELINE, explain.BASELINE_HASH)]))
            elif self.client is not None:
                extra, ok = await self._score_llm(fc, eid, label)
                self.progress.scored += ok
                self._pending.append(store.Bundle(extra, scores=[(eid, cfg.simulator_model, self.sim_hash)]))
        self.progress.features_done += 1

    # ------------------------------------------------------------ driving

    def _flush(self) -> None:
        if not self._pending:
            return
        bundles, self._pending = self._pending, []
        with store.open_store(self.db, wait_s=600) as con:
            store.write_bundles(con, bundles)

    async def run(self) -> Progress:
        jobs = self._jobs()
        self.progress.features_total = len(jobs)
        if not jobs:
            return self.progress
        queue: asyncio.Queue[tuple[_Job, FeatureContexts] | None] = asyncio.Queue(maxsize=2 * CHUNK)
        stop = asyncio.Event()

        async def loader() -> None:
            for i in range(0, len(jobs), CHUNK):
                chunk = jobs[i : i + CHUNK]
                records = await asyncio.to_thread(self._load, [j.feature for j in chunk])
                for j in chunk:
                    if stop.is_set():
                        break
                    await queue.put((j, records[j.feature]))
            for _ in range(self.cfg.concurrency):
                await queue.put(None)

        async def worker() -> None:
            while not stop.is_set():
                item = await queue.get()
                if item is None:
                    return
                try:
                    await self._do(*item)
                except BudgetExhausted as exc:
                    self.progress.stopped = str(exc)
                    stop.set()
                    return

        async def writer() -> None:
            while True:
                await asyncio.sleep(FLUSH_S)
                await asyncio.to_thread(self._flush)
                self._report()

        load_task = asyncio.create_task(loader())
        write_task = asyncio.create_task(writer())
        workers = [asyncio.create_task(worker()) for _ in range(self.cfg.concurrency)]
        try:
            done, _ = await asyncio.wait([*workers], return_when=asyncio.ALL_COMPLETED)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            stop.set()
            for t in (*workers, load_task, write_task):
                t.cancel()
            await asyncio.gather(*workers, load_task, write_task, return_exceptions=True)
            # What finished is written even when the batch stops on a budget, an error or Ctrl-C.
            self._flush()
            self._report()
        return self.progress

    def _load(self, features: list[int]) -> dict[int, FeatureContexts]:
        with store.open_store(self.db, wait_s=600) as con:
            return store.read_feature_contexts(con, self.dictionary_id, features)

    def _report(self) -> None:
        budget = getattr(self.client, "budget", None)
        if budget is not None:
            self.progress.tokens, self.progress.cost_usd = budget.tokens, budget.spent_usd
        if self.on_progress is not None:
            self.on_progress(self.progress)


def _reason_class(error: str) -> str:
    """A short failure class for the summary (the full reason is in the database)."""
    for key in ("HTTP 429", "HTTP 5", "timeout", "connection error", "unusable reply", "unusable simulation",
                "never activated", "no digit", "echo unsupported", "MalformedResponse"):
        if key in error:
            return key
    return error[:60]
