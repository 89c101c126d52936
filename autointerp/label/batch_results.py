"""Reading a batch group's results back into bundles: each unit's results are parsed by the same asks
the live path sends (unusable chat replies re-asked live once), failed requests are redone live, left
for the next batch, or (out of attempts) stored as failures; a group is written in one transaction with
its batches marked ingested. `BatchRun` (label.batch) supplies the settings, requests and contexts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from autointerp import store
from autointerp.config import LLMConfig
from autointerp.label.batchio import MISSING, Request, Result, result_key
from autointerp.label.stage import LabelBatch, LLMSession
from autointerp.label.units import ExplainUnit, Progress, ScoreUnit, call_rows, explain_live, score_live, send
from autointerp.llm import bodies, costs
from autointerp.llm import client as llm
from autointerp.llm.batch_api import batch_call
from autointerp.llm.client import LLMFailure, LLMReply
from autointerp.llm.costs import BudgetExhausted
from autointerp.records import CallRow, FailureCode, FeatureContexts


def _endpoint(row: store.BatchRow) -> str:
    """llm_calls.endpoint of a batch result: the provider and the batch's URL, or 'batch file'."""
    return f"{row.provider}{row.url.removeprefix('/v1')}" if row.provider != "file" else "batch file"


class BatchResults:
    """The ingestion half of `BatchRun`: what it needs from the run is declared here."""

    db: str | Path
    session: LLMSession | None
    llm_cfg: LLMConfig
    progress: Progress
    prices: dict[str, tuple[float, ...]]
    budget: costs.Budget

    def _labeler(self, config: str, score_explainers: list[str] | None = None) -> LabelBatch:
        raise NotImplementedError

    def group_requests(self, row: store.BatchRow) -> list[Request]:
        raise NotImplementedError

    def _load(self, features: Iterable[int]) -> dict[int, FeatureContexts]:
        raise NotImplementedError

    def _live(self) -> bool:
        return self.session is not None and self.llm_cfg.batch_retry == "live"

    def ingest(self, rows: list[store.BatchRow], results: dict[str, Result]) -> int:
        """Parse, score and store a group's results (in one transaction with its batches marked ingested)."""
        row = rows[0]
        lb = self._labeler(row.config, None)
        requests = self.group_requests(row)
        by_url = {x.url: x for x in rows}
        units = json.loads(row.units)
        fcs = self._load(u["f"] for u in units)
        by_unit: dict[tuple[int, str], dict[str, tuple[Request, Result]]] = {}
        for r in requests:
            k = result_key(r.custom_id)
            _, _, f, e, part = k.split(":")
            by_unit.setdefault((int(f[1:]), e[1:]), {})[part] = (r, results.get(k, MISSING))
        costs = dict.fromkeys((x.batch_key for x in rows), 0.0)
        gate = asyncio.Semaphore(self.llm_cfg.concurrency)
        made: dict[str, CallRow] = {}

        def call(req: Request, res: Result) -> CallRow:
            """A result's llm_calls record, made once (its cost counted once, against the budget too)."""
            if req.custom_id in made:
                return made[req.custom_id]
            usage = (0, 0, 0)
            error = res.error
            if res.body is not None:
                try:
                    usage = bodies.parse_body(req.url, res.body)[2]
                except bodies.MalformedResponse as exc:
                    error = f"malformed result: {exc}"
            mine = by_url.get(req.url, row)
            c = batch_call(self.prices, role=req.role, model=req.body["model"], endpoint=_endpoint(mine),
                               body=req.body, batch_id=mine.batch_id or mine.batch_key, custom_id=req.custom_id,
                               usage=usage, error=error)
            costs[mine.batch_key] += c.cost_usd
            self.budget.add(c)
            made[req.custom_id] = c
            return c

        async def one(u: dict[str, Any]) -> store.Bundle:
            async with gate:
                parts = by_unit.get((u["f"], u.get("e", "-")), {})
                try:
                    if row.stage == "explain":
                        return await self._explain_unit(lb, u, fcs[u["f"]], parts, call)
                    return await self._score_unit(lb, u, fcs[u["f"]], parts, call)
                except BudgetExhausted as exc:
                    # A live retry or re-ask the budget refused: the batch results are kept as calls (they
                    # are paid for) and the unit stays pending for the next run.
                    self.progress.stopped = str(exc)
                    fc = fcs[u["f"]]
                    return store.Bundle(calls=call_rows([call(*p) for p in parts.values()], fc.dictionary_id,
                                                        fc.feature, u.get("e")))

        async def all_units() -> list[store.Bundle]:
            return list(await asyncio.gather(*(one(u) for u in units)))

        bundles = asyncio.run(all_units())
        with store.open_store(self.db, wait_s=600) as con:
            return store.finish_group(con, bundles, costs)

    def _exhausted(self, attempt: int) -> bool:
        return attempt >= self.llm_cfg.batch_attempts

    async def _explain_unit(self, lb: LabelBatch, u: dict[str, Any], fc: FeatureContexts,
                            parts: dict[str, tuple[Request, Result]], call: Any) -> store.Bundle:
        assert lb.session is not None
        unit = ExplainUnit(lb.settings, fc, lb.session.explainer_model)
        self.progress.features_done += 1
        if unit.ask is None:  # nothing to ask: the feature has no explain contexts
            return store.Bundle(explanations=[unit.finish(None)])
        req, res = parts["explain"]
        c = call(req, res)
        if c.status == "error":
            if self._live():
                e, calls = await explain_live(unit, lb.session.client)
                return self._explained(fc, e, [c, *calls])
            if not self._exhausted(u["a"]):
                self.progress.failed[f"explanation: {res.code or FailureCode.MALFORMED_RESPONSE} (to retry)"] += 1
                return store.Bundle(calls=call_rows([c], fc.dictionary_id, fc.feature, None))
            code = res.code if res.body is None else FailureCode.MALFORMED_RESPONSE
            failed = LLMFailure(f"{c.error} (after {u['a']} batch attempt(s))", [], str(code))
            return self._explained(fc, unit.finish(failed), [c])
        text = bodies.parse_body(req.url, res.body)[0]
        try:
            return self._explained(fc, unit.finish(unit.ask.parse(LLMReply(text, None, []))), [c])
        except ValueError as exc:
            if self.session is None or unit.ask.max_reasks == 0:
                unusable = LLMFailure(f"unusable reply: {exc}; reply began {text[:80]!r}", [],
                                      FailureCode.UNUSABLE_REPLY)
                return self._explained(fc, unit.finish(unusable), [c])
            messages = bodies.reask_messages(req.body["messages"], text, str(exc), unit.ask.reask)
            again = replace(unit.ask, body={**unit.ask.body, "messages": messages}, max_reasks=unit.ask.max_reasks - 1)
            try:
                label, calls = await send(self.session.client, again)
            except LLMFailure as failure:
                return self._explained(fc, unit.finish(failure), [c, *failure.calls])
            return self._explained(fc, unit.finish(label), [c, *calls])

    def _explained(self, fc: FeatureContexts, e: Any, calls: list[CallRow]) -> store.Bundle:
        if e.status == "ok":
            self.progress.explained += 1
        else:
            self.progress.failed[f"explanation: {e.code}"] += 1
        return store.Bundle(explanations=[e], calls=call_rows(calls, fc.dictionary_id, fc.feature, e.explanation_id))

    async def _reasked(self, parse: Any, req: Request, text: str, problem: str, role: str) -> tuple[Any, list[CallRow]]:
        """A batch reply that did not parse, re-asked once live (LLMFailure when there is no live client)."""
        if self.session is None:
            raise LLMFailure(f"unusable reply (no live endpoint to re-ask): {problem}", [], FailureCode.UNUSABLE_REPLY)
        messages = bodies.reask_messages(req.body["messages"], text, problem, "reask_json")
        return await llm.ask_parsed(self.session.client, parse, role=role, model=req.body["model"],
                                    messages=messages, max_tokens=req.body["max_tokens"], reask="reask_json",
                                    max_reasks=0, top_logprobs=req.body.get("top_logprobs"))

    async def _parsed(self, parse: Any, req: Request, res: Result, role: str) -> tuple[Any, list[CallRow]]:
        text, logprobs, _ = bodies.parse_body(req.url, res.body)
        try:
            return parse(LLMReply(text, logprobs, [])), []
        except ValueError as exc:
            return await self._reasked(parse, req, text, f"{exc}; reply began {text[:80]!r}", role)

    async def _answers(self, asks: list[Any], parts: dict[str, tuple[Request, Result]], answers: dict[str, Any],
                       more: list[CallRow]) -> bool:
        """Parse the batch results of `asks` into `answers` (unusable chat replies re-asked live once);
        True when every one gave a usable answer."""
        ok = True
        for ask in asks:
            try:
                answers[ask.part], extra = await self._parsed(ask.parse, *parts[ask.part], ask.role)
                more += extra
            except LLMFailure as exc:
                answers[ask.part], ok = exc, False
                more += exc.calls
        return ok

    async def _score_unit(self, lb: LabelBatch, u: dict[str, Any], fc: FeatureContexts,
                          parts: dict[str, tuple[Request, Result]], call: Any) -> store.Bundle:
        eid = u["e"]
        self.progress.features_done += 1
        calls = {p: call(req, res) for p, (req, res) in parts.items()}
        unit = lb.score_unit(fc, eid, u["l"], list_prompts=False)
        bad = [p for p, c in calls.items() if c.status == "error"]
        if bad:
            return await self._score_failed(lb, u, fc, unit, parts, calls, bad)
        answers: dict[str, Any] = {}
        more: list[CallRow] = []
        if await self._answers(unit.simulation_asks(), parts, answers, more):
            await self._answers(unit.judge_asks(), parts, answers, more)
        return unit.finish(self.progress, answers, [*calls.values(), *more])

    async def _score_failed(self, lb: LabelBatch, u: dict[str, Any], fc: FeatureContexts, unit: ScoreUnit,
                            parts: dict[str, tuple[Request, Result]], calls: dict[str, CallRow], bad: list[str]
                            ) -> store.Bundle:
        """A score unit some of whose requests failed in the batch: redone live, left for the next batch,
        or (out of attempts) a failed run."""
        eid, first = u["e"], parts[bad[0]][1]
        code = first.code if first.body is None else FailureCode.MALFORMED_RESPONSE
        if self._live():
            assert self.session is not None
            bundle = await score_live(unit, self.session.client, self.progress)
            bundle.calls[:0] = call_rows(list(calls.values()), fc.dictionary_id, fc.feature, eid, unit.run.run_id)
            return bundle
        if not self._exhausted(u["a"]):
            self.progress.failed[f"simulation: {code} (to retry)"] += 1
            return store.Bundle(calls=call_rows([calls[p] for p in bad], fc.dictionary_id, fc.feature, eid))
        self.progress.failed[f"simulation: {code}"] += 1
        failed = unit.run.model_copy(update={"status": "failed", "code": str(code),
                                             "error": f"{calls[bad[0]].error} (after {u['a']} batch attempt(s))"})
        return store.Bundle(runs=[failed], calls=call_rows(list(calls.values()), fc.dictionary_id, fc.feature,
                                                           eid, unit.run.run_id))
