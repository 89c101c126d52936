"""Simulators behind one interface: each turns a label and held-out contexts into the requests that
simulate them (`plan`) and reads the answers back into predicted activations (`SimPlan.read`). Echo
(completions with echoed logprobs) and chat (JSON activations) are the two members; `SIMULATORS` is the
one place that picks one by `LabelConfig.simulator_mode`. The live and batch runners send a plan's
asks without knowing which simulator made them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from autointerp.label import simulate
from autointerp.label.simulate import FewShot
from autointerp.llm import bodies
from autointerp.llm.client import LLMFailure, LLMReply
from autointerp.records import Context, FailureCode


@dataclass(frozen=True)
class Ask:
    """One request of a unit of work: its part name (unique in the unit), endpoint path, role, body,
    and how its reply is read (`parse` raises ValueError for an unusable reply, re-asked with the
    `reask` template up to `max_reasks` times on chat endpoints)."""

    part: str
    url: str
    role: str
    body: dict[str, Any]
    parse: Callable[[LLMReply], Any]
    max_reasks: int = 0
    reask: str = "reask_json"  # the template that says what was wrong with a reply


@dataclass(frozen=True)
class SimPlan:
    """A simulation's asks, and `read`: their parsed answers by part -> predictions for every context
    (LLMFailure with no calls when the answers are unusable)."""

    asks: list[Ask]
    read: Callable[[dict[str, Any]], list[list[float]]]


class Simulator(ABC):
    """A label + contexts -> requests -> predicted activations per token (0-9 scale)."""

    templates: tuple[str, ...]

    @abstractmethod
    def plan(self, model: str, label: str, contexts: list[Context],
             fewshot: Sequence[FewShot] | None = None, list_prompts: bool = False) -> SimPlan:
        """`list_prompts`: the contexts may go in one request as a list of prompts (the live client
        sends them one by one where the endpoint refuses lists); a simulator that cannot ignores it."""


def _logprobs(reply: LLMReply) -> Any:
    return reply.logprobs


def _as_list(logprobs: Any, n: int) -> list[Any]:
    """A list-of-prompts reply's logprobs, one per prompt (LLMFailure, an unusable simulation, otherwise)."""
    if not isinstance(logprobs, list) or len(logprobs) != n:
        raise LLMFailure(f"unusable simulation: {n} prompts answered without one logprobs object each", [],
                         FailureCode.UNUSABLE_SIMULATION)
    return logprobs


class EchoSimulator(Simulator):
    """Completions requests with placeholders, echo on, one prompt per context (all of them in one request
    with `list_prompts`); predictions are the expected digit at each placeholder, read from the echoed
    prompt's top logprobs."""

    templates = simulate.SIM_TEMPLATES

    def plan(self, model: str, label: str, contexts: list[Context],
             fewshot: Sequence[FewShot] | None = None, list_prompts: bool = False) -> SimPlan:
        built = simulate.echo_prompts(label, [c.tokens for c in contexts], fewshot)
        if list_prompts:
            prompts = [prompt for prompt, offsets in built if offsets]
            if not prompts:
                return SimPlan([], lambda answers: simulate.echo_values(built, [], []))
            ask = Ask("s", bodies.COMPLETIONS_URL, "simulator",
                      bodies.completion_body(model, prompts, 1, echo=True, logprobs=simulate.ECHO_TOP_LOGPROBS),
                      _logprobs)
            return SimPlan([ask], lambda answers: simulate.echo_values(built, _as_list(answers["s"], len(prompts)), []))
        asks = [Ask(f"s{i}", bodies.COMPLETIONS_URL, "simulator",
                    bodies.completion_body(model, prompt, 1, echo=True, logprobs=simulate.ECHO_TOP_LOGPROBS), _logprobs)
                for i, (prompt, offsets) in enumerate(built) if offsets]

        def read(answers: dict[str, Any]) -> list[list[float]]:
            return simulate.echo_values(built, [answers[a.part] for a in asks], [])

        return SimPlan(asks, read)


class ChatSimulator(Simulator):
    """One chat request per context answering {"activations": [...]}, re-asked once when unusable; the
    expected digit replaces each generated one where the endpoint returns top logprobs."""

    templates = simulate.CHAT_TEMPLATES

    def plan(self, model: str, label: str, contexts: list[Context],
             fewshot: Sequence[FewShot] | None = None, list_prompts: bool = False) -> SimPlan:
        asks = [Ask(f"s{i}", bodies.CHAT_URL, "simulator",
                    bodies.chat_body(model, simulate.chat_messages(label, c), simulate.chat_max_tokens(len(c.tokens)),
                                  top_logprobs=simulate.CHAT_TOP_LOGPROBS),
                    simulate.chat_parser(len(c.tokens)), max_reasks=1)
                for i, c in enumerate(contexts)]

        def read(answers: dict[str, Any]) -> list[list[float]]:
            return [answers[a.part] for a in asks]

        return SimPlan(asks, read)


SIMULATORS: dict[str, Simulator] = {"echo": EchoSimulator(), "chat": ChatSimulator()}
