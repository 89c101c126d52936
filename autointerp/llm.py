"""LLM access: the `LLMClient` protocol, the OpenAI-compatible client (async `openai`, tenacity retries,
usage and cost), and the budget. The only module that imports openai and tenacity.

Every attempt leaves an `LLMCall` record (ok or error, with its reason); callers collect them and the
pipeline writes them to `llm_calls`. The API key is never put in a record or an error message.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import openai
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from autointerp import prompts
from autointerp.errors import AutointerpError
from autointerp.types import FailureCode

T = TypeVar("T")

# USD per million tokens (input, output). Unknown models cost 0 and say so in the summary; pass
# --prices FILE (JSON {"model": [input, output]}) for others.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo-instruct": (1.50, 2.00),
    "davinci-002": (2.00, 2.00),
    "babbage-002": (0.40, 0.40),
}


@dataclass(frozen=True)
class LLMCall:
    """One attempt at one request: a row of llm_calls."""

    call_id: str
    role: str
    model: str
    endpoint: str
    prompt_hash: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cost_usd: float
    status: str  # 'ok' | 'error'
    error: str | None
    created_at: datetime


@dataclass
class LLMReply:
    text: str
    logprobs: Any  # completions: {tokens, text_offset, top_logprobs}; chat: choice.logprobs as dict
    calls: list[LLMCall]


class LLMFailure(Exception):
    """LLM work that failed: a request after its retries, or a reply still unusable after its re-asks.
    Carries every attempt's record and a machine-readable `code` (a `FailureCode`)."""

    def __init__(self, message: str, calls: list[LLMCall], code: str = FailureCode.UNUSABLE_REPLY):
        super().__init__(message)
        self.calls = calls
        self.code = str(code)


class BudgetExhausted(Exception):
    """--max-cost or --max-tokens reached: the batch stops cleanly, no new request is sent."""


@dataclass
class Budget:
    max_cost_usd: float | None = None
    max_tokens: int | None = None
    spent_usd: float = 0.0
    tokens: int = 0

    def check(self) -> None:
        if self.max_cost_usd is not None and self.spent_usd >= self.max_cost_usd:
            raise BudgetExhausted(f"--max-cost {self.max_cost_usd} reached (${self.spent_usd:.4f} spent)")
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            raise BudgetExhausted(f"--max-tokens {self.max_tokens} reached ({self.tokens} used)")

    def add(self, call: LLMCall) -> None:
        self.spent_usd += call.cost_usd
        self.tokens += call.prompt_tokens + call.completion_tokens


class LLMClient(Protocol):
    """What explainers and simulators need from a model server."""

    async def chat(self, *, role: str, model: str, messages: list[dict[str, str]], max_tokens: int,
                   temperature: float = 0.0, top_logprobs: int | None = None) -> LLMReply: ...

    async def complete(self, *, role: str, model: str, prompt: str, max_tokens: int, echo: bool = False,
                       logprobs: int | None = None) -> LLMReply: ...


def prompt_hash(payload: Any) -> str:
    return hashlib.sha256(repr(payload).encode()).hexdigest()[:16]


class MalformedResponse(Exception):
    """The server answered 200 with a body that is not a usable completion."""


def _retryable(exc: BaseException) -> bool:
    """Only what may pass on its own: 429, 408, 5xx, timeouts, dropped connections, malformed bodies.
    A 400/401/403/404 fails the same way every time, and an exception of ours is a bug: not retried."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 429) or exc.status_code >= 500
    return isinstance(exc, openai.APITimeoutError | openai.APIConnectionError | openai.APIResponseValidationError
                      | MalformedResponse)


def public_url(url: str) -> str:
    """The endpoint as it may be recorded: no user or password, query or fragment (where keys hide)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _url_secrets(url: str) -> list[str]:
    """The parts of an endpoint URL that may be credentials, to blank out of error messages."""
    parts = urlsplit(url)
    found = [parts.password or "", parts.username or "", parts.query, parts.fragment]
    found += [v for _, v in parse_qsl(parts.query, keep_blank_values=False)]
    return sorted({x for x in found if len(x) >= 3}, key=len, reverse=True)


def _retry_after(exc: BaseException | None) -> float | None:
    if isinstance(exc, openai.APIStatusError):
        value = exc.response.headers.get("retry-after")
        try:
            return max(0.0, float(value)) if value is not None else None
        except ValueError:
            return None
    return None


class _Wait:
    """Retry-After when the server gives one (capped), else exponential backoff with jitter."""

    def __init__(self, cap_s: float):
        self.cap_s = cap_s
        self.backoff = wait_random_exponential(multiplier=0.5, max=cap_s)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        ra = _retry_after(exc)
        return min(ra, self.cap_s) if ra is not None else self.backoff(state)


def _code(exc: BaseException) -> FailureCode:
    if isinstance(exc, openai.APIStatusError):
        return FailureCode.RATE_LIMITED if exc.status_code == 429 else FailureCode.HTTP_ERROR
    if isinstance(exc, openai.APITimeoutError):
        return FailureCode.TIMEOUT
    if isinstance(exc, openai.APIConnectionError):
        return FailureCode.CONNECTION
    return FailureCode.MALFORMED_RESPONSE


def _reason(exc: BaseException, secret: str | list[str] | None) -> str:
    if isinstance(exc, openai.APIStatusError):
        text = f"HTTP {exc.status_code}: {exc.message}"
    elif isinstance(exc, openai.APITimeoutError):
        text = "timeout"
    elif isinstance(exc, openai.APIConnectionError):
        text = f"connection error: {exc.__cause__ or exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    for hidden in [secret] if isinstance(secret, str) else (secret or []):
        if hidden:
            text = text.replace(hidden, "***")
    return text[:500]


class OpenAICompatibleClient:
    """`LLMClient` over one or more OpenAI-compatible endpoints, requests spread round-robin."""

    def __init__(self, base_urls: list[str], api_key: str | None = None, *, timeout_s: float = 60.0,
                 max_attempts: int = 6, max_wait_s: float = 60.0, prices: dict[str, tuple[float, float]] | None = None,
                 budget: Budget | None = None):
        if not base_urls:
            raise AutointerpError("no LLM endpoint: pass --base-url or set OPENAI_BASE_URL")
        # Never recorded or shown: the key, and whatever credentials the endpoint URLs carry.
        self._secret = [x for x in [api_key or ""] + [x for u in base_urls for x in _url_secrets(u)] if x]
        self._clients = [
            (public_url(url),
             openai.AsyncOpenAI(base_url=url, api_key=api_key or "not-needed", timeout=timeout_s, max_retries=0))
            for url in base_urls
        ]
        self._turn = itertools.count()
        self.max_attempts = max_attempts
        self.max_wait_s = max_wait_s
        self.prices = {**DEFAULT_PRICES, **(prices or {})}
        self.budget = budget or Budget()

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        p_in, p_out = self.prices.get(model, (0.0, 0.0))
        return (prompt_tokens * p_in + completion_tokens * p_out) / 1e6

    async def close(self) -> None:
        for _, c in self._clients:
            await c.close()

    async def _request(self, role: str, model: str, payload: dict[str, Any], send: Any, parse: Any) -> LLMReply:
        calls: list[LLMCall] = []
        phash = prompt_hash(payload)

        async def attempt() -> LLMReply:
            self.budget.check()
            url, client = self._clients[next(self._turn) % len(self._clients)]
            start = time.monotonic()
            try:
                try:
                    response = await send(client)
                except json.JSONDecodeError as exc:  # the SDK decoding a body that is not JSON
                    raise MalformedResponse(f"invalid JSON body ({exc})") from None
                text, logprobs, usage = parse(response)
            except Exception as exc:
                calls.append(LLMCall(str(uuid.uuid4()), role, model, url, phash, 0, 0, time.monotonic() - start, 0.0,
                                     "error", _reason(exc, self._secret), datetime.now(UTC)))
                raise
            p_tok, c_tok = usage
            call = LLMCall(str(uuid.uuid4()), role, model, url, phash, p_tok, c_tok, time.monotonic() - start,
                           self.cost(model, p_tok, c_tok), "ok", None, datetime.now(UTC))
            calls.append(call)
            self.budget.add(call)
            return LLMReply(text, logprobs, calls)

        try:
            async for try_ in AsyncRetrying(retry=retry_if_exception(_retryable), wait=_Wait(self.max_wait_s),
                                            stop=stop_after_attempt(self.max_attempts), reraise=True):
                with try_:
                    return await attempt()
        except BudgetExhausted:
            raise
        except Exception as exc:
            raise LLMFailure(f"{role} request failed after {len(calls)} attempt(s): {_reason(exc, self._secret)}",
                             calls, _code(exc)) from None
        raise AssertionError("unreachable")

    async def chat(self, *, role: str, model: str, messages: list[dict[str, str]], max_tokens: int,
                   temperature: float = 0.0, top_logprobs: int | None = None) -> LLMReply:
        kwargs: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens,
                                  "temperature": temperature}
        if top_logprobs:
            kwargs.update(logprobs=True, top_logprobs=top_logprobs)

        def parse(r: Any) -> tuple[str, Any, tuple[int, int]]:
            choices = getattr(r, "choices", None)
            if not choices or getattr(choices[0], "message", None) is None:
                raise MalformedResponse("no choices[0].message in the response")
            text = choices[0].message.content
            if text is None:
                raise MalformedResponse("empty message content")
            lp = choices[0].logprobs
            return text, (lp.model_dump() if lp is not None else None), _usage(r)

        return await self._request(role, model, kwargs, lambda c: c.chat.completions.create(**kwargs), parse)

    async def complete(self, *, role: str, model: str, prompt: str, max_tokens: int, echo: bool = False,
                       logprobs: int | None = None) -> LLMReply:
        kwargs: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                                  "echo": echo}
        if logprobs is not None:
            kwargs["logprobs"] = logprobs

        def parse(raw: Any) -> tuple[str, Any, tuple[int, int]]:
            # Parsed by hand: the openai models' construction of a long prompt's logprobs costs ~50 ms per
            # thousand tokens, the pipeline's largest overhead.
            try:
                body = json.loads(raw.http_response.content)
            except ValueError as exc:
                raise MalformedResponse(f"invalid JSON body ({exc})") from None
            choices = body.get("choices") if isinstance(body, dict) else None
            if not choices or not isinstance(choices[0], dict) or not isinstance(choices[0].get("text"), str):
                raise MalformedResponse("no choices[0].text in the response")
            usage = body.get("usage") or {}
            try:
                tokens = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            except (TypeError, ValueError, AttributeError):
                raise MalformedResponse(f"unusable usage in the response: {usage!r:.100}") from None
            return choices[0]["text"], choices[0].get("logprobs"), tokens

        return await self._request(role, model, kwargs,
                                   lambda c: c.completions.with_raw_response.create(**kwargs), parse)


def _usage(response: Any) -> tuple[int, int]:
    u = getattr(response, "usage", None)
    if u is None:
        return 0, 0
    return int(getattr(u, "prompt_tokens", 0) or 0), int(getattr(u, "completion_tokens", 0) or 0)


async def ask_parsed(client: LLMClient, parse: Callable[[LLMReply], T], *, role: str, model: str,
                     messages: list[dict[str, str]], max_tokens: int, reask: str, max_reasks: int,
                     top_logprobs: int | None = None) -> tuple[T, list[LLMCall]]:
    """One chat request whose reply must parse: `parse` raises ValueError saying what is wrong, and the
    model is re-asked with prompts/REASK.txt ($problem) at most `max_reasks` times. Returns the parsed
    value and every attempt's record; raises LLMFailure (with the calls and a code) otherwise."""
    calls: list[LLMCall] = []
    problem = ""
    for _ in range(1 + max_reasks):
        try:
            reply = await client.chat(role=role, model=model, messages=messages, max_tokens=max_tokens,
                                      top_logprobs=top_logprobs)
        except LLMFailure as exc:
            raise LLMFailure(str(exc), calls + exc.calls, exc.code) from None
        calls += reply.calls
        try:
            return parse(reply), calls
        except ValueError as exc:
            problem = f"{exc}; reply began {reply.text[:80]!r}"
            messages = [*messages, {"role": "assistant", "content": reply.text[:2000]},
                        {"role": "user", "content": prompts.render(reask, problem=str(exc))}]
    raise LLMFailure(f"unusable reply after {1 + max_reasks} attempts: {problem}", calls, FailureCode.UNUSABLE_REPLY)
