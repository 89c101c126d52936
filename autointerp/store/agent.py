"""The labelling agent's steps (`agent_steps`, migration 007): written one step at a time with the LLM
calls it cost, so a killed run resumes from what is stored; read back for resuming and for `show`."""

from __future__ import annotations

import json

from autointerp.records import AgentStep, CallRow
from autointerp.store.db import Connection, insert_rows, transaction

_COLUMNS = ("dictionary_id", "feature", "explainer", "strategy", "settings_hash", "step", "round", "kind", "status",
            "text", "prompt", "activations", "calibration_score", "prompt_tokens", "completion_tokens", "code",
            "error", "explanation_id", "temperature")


def add_agent_step(con: Connection, step: AgentStep, calls: list[CallRow], replace_stopped: bool = False) -> None:
    """Store one step and its calls together (a step stored again, by a second process, is dropped). With
    `replace_stopped`, the step replaces the row of the same step that the budget stopped (code
    'budget_stopped'): the finished step keeps what the stopped one got and counts its tokens."""
    with transaction(con):
        if replace_stopped:
            con.execute("DELETE FROM agent_steps WHERE dictionary_id = ? AND feature = ? AND explainer = ? "
                        "AND settings_hash = ? AND step = ? AND code = 'budget_stopped'",
                        [step.dictionary_id, step.feature, step.explainer, step.settings_hash, step.step])
        if con.execute("SELECT 1 FROM agent_steps WHERE dictionary_id = ? AND feature = ? AND explainer = ? "
                       "AND settings_hash = ? AND step = ?",
                       [step.dictionary_id, step.feature, step.explainer, step.settings_hash, step.step]).fetchone():
            return
        row = step.model_dump()
        row["activations"] = None if step.activations is None else json.dumps(step.activations)
        insert_rows(con, "agent_steps", [row])
        insert_rows(con, "llm_calls", [c.model_dump() for c in calls])


def _step(r: tuple) -> AgentStep:
    values = dict(zip(_COLUMNS, r, strict=True))
    values["activations"] = None if values["activations"] is None else json.loads(values["activations"])
    return AgentStep(**values)


def agent_steps(con: Connection, dictionary_id: int, feature: int, explainer: str | None = None,
                settings_hash: str | None = None) -> list[AgentStep]:
    """A feature's steps, in order (of one explainer and settings when given; else every run's, newest
    run last)."""
    rows = con.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM agent_steps WHERE dictionary_id = ? AND feature = ? "
        "AND (? IS NULL OR explainer = ?) AND (? IS NULL OR settings_hash = ?) "
        "ORDER BY explainer, settings_hash, step",
        [dictionary_id, feature, explainer, explainer, settings_hash, settings_hash]).fetchall()
    return [_step(r) for r in rows]


def add_output_tokens(con: Connection, dictionary_id: int, rows: list[tuple[int, str, int, int, str, float]]) -> None:
    """Store a dictionary's output tokens (feature, direction, rank, token_id, token, value) unless another
    process already did."""
    with transaction(con):
        if has_output_tokens(con, dictionary_id):
            return
        insert_rows(con, "output_tokens", [
            {"dictionary_id": dictionary_id, "feature": f, "direction": d, "rank": r, "token_id": t, "token": s,
             "value": v} for f, d, r, t, s, v in rows])


def has_output_tokens(con: Connection, dictionary_id: int) -> bool:
    return con.execute("SELECT 1 FROM output_tokens WHERE dictionary_id = ? LIMIT 1", [dictionary_id]).fetchone() \
        is not None


def output_tokens(con: Connection, dictionary_id: int, feature: int) -> dict[str, list[tuple[str, float]]]:
    """A feature's promoted and suppressed tokens, strongest first: {'promotes': [...], 'suppresses': [...]}."""
    rows = con.execute("SELECT direction, token, value FROM output_tokens WHERE dictionary_id = ? AND feature = ? "
                       "ORDER BY direction, rank", [dictionary_id, feature]).fetchall()
    out: dict[str, list[tuple[str, float]]] = {"promotes": [], "suppresses": []}
    for d, t, v in rows:
        out[d].append((t, v))
    return out
