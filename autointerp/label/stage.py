"""The label stage: explain and score a dictionary's features with LLMs, as async workers over a queue
derived from the store. A feature is pending until its explanation (and score run) rows exist, so a
killed batch resumes where it stopped and finished work is never redone; failed work is redone only
with `retry_failed` (the failure stays as history).

The batch holds the database only while it writes (once a second, in one transaction per flush),
so `autointerp sql` from another terminal reads what has been written so far. Any task's failure (a
loader or a writer error) stops the batch with that error, after what finished has been written."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autointerp import store
from autointerp.config import LabelConfig, LLMConfig, settings_hash
from autointerp.errors import AutointerpError
from autointerp.label import detect, explain, scoring, simulate
from autointerp.label.fewshot import fewshot_for
from autointerp.label.nulls import CONSTANT, SHUFFLED, null_features, reference_gains
from autointerp.llm import client as llm
from autointerp.llm import local, prompts
from autointerp.llm.client import BudgetExhausted, LLMCall, LLMClient, LLMFailure
from autointerp.records import (
    CallRow,
    Context,
    Explanation,
    FeatureContexts,
    ProgressEvent,
    ProgressFn,
    ScoreRow,
    ScoreRun,
    Simulation,
)

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
    nulls: Progress | None = None  # the pass that scored the null labels


@dataclass(frozen=True)
class LLMSession:
    """A client and the model names it serves."""

    client: LLMClient
    explainer_model: str
    simulator_model: str


@contextmanager
def open_llm(cfg: LLMConfig) -> Iterator[LLMSession]:
    """The endpoints of `cfg` (else $OPENAI_BASE_URL, else the embedded llama.cpp default, stopped on exit)."""
    urls = list(cfg.base_urls) or [u for u in [os.environ.get("OPENAI_BASE_URL")] if u]
    embedded = None
    if not urls:
        embedded = local.EmbeddedLLM.start()
        urls = [embedded.base_url]
    try:
        default_model = local.MODEL_NAME if embedded else "gpt-4o-mini"
        prices = cfg.price_table()
        budget = llm.Budget(cfg.max_cost_usd, cfg.max_tokens)
        client: LLMClient = llm.OpenAICompatibleClient(
            urls, os.environ.get("OPENAI_API_KEY"), timeout_s=cfg.timeout_s, max_attempts=cfg.max_attempts,
            max_wait_s=cfg.max_wait_s, prices=prices, budget=budget)
        if embedded is not None:
            client = embedded.client(client)
        yield LLMSession(client, cfg.explainer_model or default_model, cfg.simulator_model or default_model)
    finally:
        if embedded is not None:
            embedded.stop()


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


def call_rows(calls: list[LLMCall], dictionary_id: int, feature: int, explanation_id: str | None,
              run_id: str | None = None) -> list[CallRow]:
    return [CallRow(call_id=c.call_id, role=c.role, model=c.model, endpoint=c.endpoint, prompt_hash=c.prompt_hash,
                    prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens, latency_s=c.latency_s,
                    cost_usd=c.cost_usd, status=c.status, error=c.error, created_at=c.created_at,
                    dictionary_id=dictionary_id, feature=feature, explanation_id=explanation_id, run_id=run_id,
                    batch_id=c.batch_id, cached_tokens=c.cached_tokens)
            for c in calls]


def llm_explainers(cfg: LabelConfig, session: LLMSession | None) -> list[str]:
    """Whose labels the simulator scores: `cfg.explainers` (imported labels, say), else the explainer model's."""
    if cfg.explainers:
        return list(cfg.explainers)
    return [session.explainer_model] if session is not None else []


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


def failed_run_bundle(progress: Progress, run: ScoreRun, exc: LLMFailure, calls: list[LLMCall]) -> store.Bundle:
    """A simulation run that failed: stored with its reason, code and every call it cost."""
    progress.failed[f"simulation: {exc.code}"] += 1
    failed = run.model_copy(update={"status": "failed", "error": str(exc)[:1000], "code": exc.code})
    return store.Bundle(runs=[failed], calls=call_rows(calls, run.dictionary_id, run.feature, run.explanation_id,
                                                       run.run_id))


def scored_run_bundle(progress: Progress, run: ScoreRun, sims: list[Simulation], scores: list[ScoreRow],
                      calls: list[LLMCall], judge_errors: list[str]) -> store.Bundle:
    """A finished simulation run with its simulations, scores and calls (judges that could not run named)."""
    for sc in scores:
        if sc.value is not None:
            progress.score_values.setdefault(sc.method, []).append(sc.value)
    progress.scored += 1
    run = run.model_copy(update={"error": "; ".join(judge_errors) or None})
    return store.Bundle(runs=[run], simulations=sims, scores=scores,
                        calls=call_rows(calls, run.dictionary_id, run.feature, run.explanation_id, run.run_id))


@dataclass
class Job:
    feature: int
    baseline: bool
    explain_llm: bool
    to_score: list[store.PendingScore]


class LabelBatch:
    """One explain and/or score pass over a selection of features."""

    def __init__(self, db: str | Path, dictionary_id: int, cfg: LabelConfig, session: LLMSession | None,
                 features: list[int], *, explain_stage: bool, score_stage: bool, concurrency: int = 8,
                 score_explainers: list[str] | None = None, on_progress: ProgressFn | None = None):
        self.db = db
        self.dictionary_id = dictionary_id
        self.cfg = cfg
        self.session = session
        self.features = features
        self.explain_stage = explain_stage
        self.score_stage = score_stage
        self.concurrency = concurrency
        self.on_progress = on_progress
        self.progress = Progress()
        self._pending: list[store.Bundle] = []
        # Cancelling the writer task does not stop a flush already running in its thread: the final
        # flush waits for it, else both write the same bundles (a duplicate explanation_id).
        self._flush_lock = threading.Lock()
        self.explain_hash = explain.prompt_hash()
        templates = simulate.SIM_TEMPLATES if cfg.simulator_mode == "echo" else simulate.CHAT_TEMPLATES
        if cfg.judge:
            templates = (*templates, *detect.DETECT_TEMPLATES, *detect.FUZZ_TEMPLATES)
        self.sim_hash = prompts.templates_hash(*templates) + f"-{cfg.simulator_mode}"
        self.sim_settings = cfg.simulation_settings(self.sim_hash)
        self.sim_settings_hash = settings_hash(self.sim_settings)
        self.base_settings = {"prompt_hash": explain.BASELINE_HASH,
                              **cfg.model_dump(include={"n_sim_top", "n_sim_random", "n_boot"})}
        self.base_settings_hash = settings_hash(self.base_settings)
        self.score_explainers = llm_explainers(cfg, session) if score_explainers is None else score_explainers

    # ------------------------------------------------------------ the queue

    def jobs(self) -> list[Job]:
        cfg, s = self.cfg, self.session
        retry = cfg.retry_failed
        # Read-write like the flushes: DuckDB refuses two configurations of one file in one process.
        with store.open_store(self.db, wait_s=600) as con:
            have_llm = (store.explained_features(con, self.dictionary_id, s.explainer_model, self.explain_hash, retry)
                        if s is not None else set())
            have_base = store.explained_features(con, self.dictionary_id, explain.BASELINE, explain.BASELINE_HASH,
                                                 retry)
            unscored: dict[int, list[store.PendingScore]] = {}
            if self.score_stage:
                queues = [(explain.BASELINE, self.base_settings_hash, [explain.BASELINE] if cfg.baseline else [])]
                if s is not None:
                    queues.append((s.simulator_model, self.sim_settings_hash, self.score_explainers))
                for simulator, key, explainers in queues:
                    for p in store.unscored_explanations(con, self.dictionary_id, simulator, key, explainers, retry):
                        unscored.setdefault(p.feature, []).append(p)
        jobs = []
        for f in self.features:
            job = Job(f, baseline=self.explain_stage and cfg.baseline and f not in have_base,
                       explain_llm=self.explain_stage and s is not None and f not in have_llm,
                       to_score=unscored.get(f, []))
            if job.baseline or job.explain_llm or job.to_score:
                jobs.append(job)
        return jobs

    # ------------------------------------------------------------ work

    def new_run(self, explanation_id: str, fc: FeatureContexts, simulator: str, phash: str, settings: dict,
             key: str) -> ScoreRun:
        return ScoreRun(run_id=str(uuid.uuid4()), explanation_id=explanation_id, dictionary_id=fc.dictionary_id,
                        feature=fc.feature, stage="simulation", simulator=simulator, prompt_hash=phash,
                        settings_hash=key, config=json.dumps(settings, sort_keys=True))

    async def _score_llm(self, fc: FeatureContexts, eid: str, label: str) -> store.Bundle:
        assert self.session is not None
        client, model = self.session.client, self.session.simulator_model
        run = self.new_run(eid, fc, model, self.sim_hash, self.sim_settings, self.sim_settings_hash)
        contexts = scoring_contexts(fc, self.cfg)
        try:
            if self.cfg.simulator_mode == "echo":
                fewshot = fewshot_for(self.db, fc.dictionary_id, fc.feature, self.cfg.fewshot)
                predicted, calls = await simulate.simulate_echo(client, model, label, [c for c, _ in contexts],
                                                                fewshot=fewshot)
            else:
                predicted, calls = await simulate.simulate_chat(client, model, label, [c for c, _ in contexts])
        except LLMFailure as exc:
            return failed_run_bundle(self.progress, run, exc, exc.calls)
        sims, scores = score_records(fc, run, contexts, predicted, self.cfg.n_boot)
        judge_errors: list[str] = []
        if self.cfg.judge:
            judged, judge_calls, judge_errors = await self._judge(fc, run, label)
            scores += judged
            calls = calls + judge_calls
        return scored_run_bundle(self.progress, run, sims, scores, calls, judge_errors)

    async def _judge(self, fc: FeatureContexts, run: ScoreRun, label: str
                     ) -> tuple[list[ScoreRow], list[LLMCall], list[str]]:
        """Detection and fuzzing scores (balanced accuracy, and AUC where P(1) is known)."""
        assert self.session is not None
        rows: list[ScoreRow] = []
        calls: list[LLMCall] = []
        errors: list[str] = []
        fc = judged_view(fc, self.cfg)
        for name, fn in (("detection", detect.detection), ("fuzzing", detect.fuzzing)):
            try:
                labels, answers, probs, c = await fn(self.session.client, self.session.simulator_model, fc, label,
                                                     self.cfg.n_judge, 0)
            except LLMFailure as exc:
                calls += exc.calls
                errors.append(f"{name}: {exc}")
                self.progress.failed[f"{name}: {exc.code}"] += 1
                continue
            calls += c
            rows += judge_rows(name, labels, answers, probs, run, self.cfg.n_boot)
        return rows, calls, errors

    def _score_baseline(self, fc: FeatureContexts, eid: str) -> store.Bundle:
        run = self.new_run(eid, fc, explain.BASELINE, explain.BASELINE_HASH, self.base_settings, self.base_settings_hash)
        contexts = scoring_contexts(fc, self.cfg)
        predicted = explain.simulate_baseline(fc, [c for c, _ in contexts])
        sims, scores = score_records(fc, run, contexts, predicted, self.cfg.n_boot)
        return store.Bundle(runs=[run], simulations=sims, scores=scores)

    def _with_config(self, e: Explanation) -> Explanation:
        return e.model_copy(update={"config": self.cfg.model_dump_json()})

    async def _do(self, job: Job, fc: FeatureContexts) -> None:
        if job.baseline:
            e = self._with_config(explain.explain_baseline(fc))
            bundle = store.Bundle(explanations=[e])
            if self.score_stage and e.status == "ok":
                bundle.extend(self._score_baseline(fc, e.explanation_id))
            self._pending.append(bundle)
        if job.explain_llm:
            assert self.session is not None
            e, calls = await explain.explain_with_llm(
                fc, self.session.client, self.session.explainer_model, n_top=self.cfg.n_explain_top,
                n_quantile=self.cfg.n_explain_quantile, max_reasks=self.cfg.max_reasks)
            e = self._with_config(e)
            bundle = store.Bundle(explanations=[e],
                                  calls=call_rows(calls, fc.dictionary_id, fc.feature, e.explanation_id))
            if e.status == "ok":
                self.progress.explained += 1
                if self.score_stage:
                    try:
                        bundle.extend(await self._score_llm(fc, e.explanation_id, e.label or ""))
                    except BudgetExhausted:
                        # The explanation is paid for: keep it; its score stays pending for the next run.
                        self._pending.append(bundle)
                        raise
            else:
                self.progress.failed[f"explanation: {e.code}"] += 1
            self._pending.append(bundle)
        for p in job.to_score:
            if p.explainer == explain.BASELINE:
                self._pending.append(self._score_baseline(fc, p.explanation_id))
            elif self.session is not None:
                self._pending.append(await self._score_llm(fc, p.explanation_id, p.label))
        self.progress.features_done += 1

    # ------------------------------------------------------------ driving

    def _flush(self) -> None:
        # Bundles leave the pending list only once written: a failed write loses nothing.
        with self._flush_lock:
            n = len(self._pending)
            if n == 0:
                return
            with store.open_store(self.db, wait_s=600) as con:
                store.write_bundles(con, self._pending[:n])
            del self._pending[:n]

    async def run(self) -> Progress:
        jobs = await asyncio.to_thread(self.jobs)
        self.progress.features_total = len(jobs)
        if not jobs:
            return self.progress
        queue: asyncio.Queue[tuple[Job, FeatureContexts] | None] = asyncio.Queue(maxsize=2 * CHUNK)
        stop = asyncio.Event()

        async def loader() -> None:
            for i in range(0, len(jobs), CHUNK):
                chunk = jobs[i : i + CHUNK]
                records = await asyncio.to_thread(self._load, [j.feature for j in chunk])
                for j in chunk:
                    if stop.is_set():
                        return
                    await queue.put((j, records[j.feature]))
            for _ in range(self.concurrency):
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

        workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
        helpers = [asyncio.create_task(loader()), asyncio.create_task(writer())]
        error: BaseException | None = None
        try:
            waiting = {*workers, *helpers}
            while not all(w.done() for w in workers) and error is None:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                error = next((t.exception() for t in done if not t.cancelled() and t.exception()), None)
        finally:
            stop.set()
            for t in (*workers, *helpers):
                t.cancel()
            await asyncio.gather(*workers, *helpers, return_exceptions=True)
            # What finished is written even when the batch stops on a budget, an error or Ctrl-C.
            try:
                self._flush()
            except Exception as exc:
                raise AutointerpError(f"could not write {len(self._pending)} finished feature(s) to {self.db}: "
                                      f"{exc}") from exc
            self._report()
        if error is not None:
            raise error
        return self.progress

    def _load(self, features: list[int]) -> dict[int, FeatureContexts]:
        with store.open_store(self.db, wait_s=600) as con:
            try:
                return store.read_feature_contexts(con, self.dictionary_id, features)
            except Exception as exc:
                raise AutointerpError(f"could not read the contexts of features {features[0]}..{features[-1]} "
                                      f"of dictionary {self.dictionary_id} from {self.db}: {exc}") from exc

    def _report(self) -> None:
        budget = getattr(self.session.client, "budget", None) if self.session else None
        if budget is not None:
            self.progress.tokens, self.progress.cost_usd = budget.tokens, budget.spent_usd
        if self.on_progress is not None:
            p = self.progress
            self.on_progress(ProgressEvent(
                stage="label", done=p.features_done, total=p.features_total, unit="feat",
                detail=f"tok {p.tokens:,} ${p.cost_usd:.4f} failed {sum(p.failed.values())}"))


# ---------------------------------------------------------------- null labels


# ---------------------------------------------------------------- the entry point


def label_stage(db: str | Path, dictionary_id: int, features: list[int], cfg: LabelConfig,
                session: LLMSession | None, *, explain_stage: bool = True, score_stage: bool = True,
                concurrency: int = 8, on_progress: ProgressFn | None = None) -> Progress:
    """Explain and/or score `features`; then, when scoring with an LLM, make and score the null labels
    (`cfg.null_samples` features). Resumable: re-running does only what is missing."""
    batch = LabelBatch(db, dictionary_id, cfg, session, features, explain_stage=explain_stage,
                       score_stage=score_stage, concurrency=concurrency, on_progress=on_progress)

    async def both() -> Progress:
        # One event loop for the labels and their nulls: the client's pooled connections belong to it.
        progress = await batch.run()
        if score_stage and session is not None and progress.stopped is None:
            explainers = llm_explainers(cfg, session)
            extra = null_features(db, dictionary_id, explainers, features, cfg.null_samples, cfg.reference)
            if extra:
                nulls = LabelBatch(db, dictionary_id, cfg.model_copy(update={"baseline": False}), session, extra,
                                   explain_stage=False, score_stage=True, concurrency=concurrency,
                                   score_explainers=[*(SHUFFLED + e for e in explainers), CONSTANT],
                                   on_progress=on_progress)
                progress.nulls = await nulls.run()
                progress.stopped = progress.nulls.stopped
        return progress

    progress = asyncio.run(both())
    if score_stage and session is not None:
        reference_gains(db, dictionary_id, cfg.n_boot)
    return progress
