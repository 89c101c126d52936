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

from autointerp.errors import AutointerpError
from autointerp.llm import prompts
from autointerp.llm.redact import redact, refuse_url_credentials
from autointerp.records import FailureCode

T = TypeVar("T")

# USD per million tokens: (input, output[, batch input, batch output[, cached input, batch cached input]]).
# Unknown models cost 0 and say so in the summary; pass --prices FILE (JSON {"model": [...]}, 2, 4 or 6
# numbers) for others. Batch prices default to half the live ones, as OpenAI's Batch API; cached prompt
# tokens (usage.prompt_tokens_details.cached_tokens) cost the input price where no cached price is given.
DEFAULT_PRICES: dict[str, tuple[float, ...]] = {
    "gpt-4o-mini": (0.15, 0.60, 0.075, 0.30, 0.075, 0.0375),
    "gpt-4o": (2.50, 10.00, 1.25, 5.00, 1.25, 0.625),
    "gpt-4.1-mini": (0.40, 1.60, 0.20, 0.80, 0.10, 0.05),
    "gpt-4.1-nano": (0.10, 0.40, 0.05, 0.20, 0.025, 0.0125),
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
    batch_id: str | None = None  # the provider batch (or batch file) the result came from
    cached_tokens: int = 0  # prompt tokens the provider served from its prompt cache (of prompt_tokens)


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
    """--max-cost / --max-tokens for one invocation. Live calls are checked before each request; batches
    reserve their estimated cost before they are submitted (`fits`, `reserve`), and their results'
    real costs are added as they are ingested."""

    max_cost_usd: float | None = None
    max_tokens: int | None = None
    spent_usd: float = 0.0
    tokens: int = 0
    reserved_usd: float = 0.0  # submitted batches not ingested yet: their estimates
    reserved_tokens: int = 0

    def check(self) -> None:
        if self.max_cost_usd is not None and self.spent_usd >= self.max_cost_usd:
            raise BudgetExhausted(f"--max-cost {self.max_cost_usd} reached (${self.spent_usd:.4f} spent)")
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            raise BudgetExhausted(f"--max-tokens {self.max_tokens} reached ({self.tokens} used)")

    def add(self, call: LLMCall) -> None:
        self.spent_usd += call.cost_usd
        self.tokens += call.prompt_tokens + call.completion_tokens

    def fits(self, usd: float, tokens: int) -> bool:
        """Whether work estimated at `usd` and `tokens` fits beside what is spent and reserved."""
        return ((self.max_cost_usd is None or self.spent_usd + self.reserved_usd + usd <= self.max_cost_usd)
                and (self.max_tokens is None or self.tokens + self.reserved_tokens + tokens <= self.max_tokens))

    def reserve(self, usd: float, tokens: int) -> None:
        self.reserved_usd += usd
        self.reserved_tokens += tokens

    def release(self) -> None:
        """The reserved batches are ingested: their real costs are in `spent_usd` now."""
        self.reserved_usd, self.reserved_tokens = 0.0, 0

    def left(self) -> str:
        """What is left, for messages."""
        parts = []
        if self.max_cost_usd is not None:
            parts.append(f"${max(0.0, self.max_cost_usd - self.spent_usd - self.reserved_usd):.4f} of --max-cost "
                         f"{self.max_cost_usd}")
        if self.max_tokens is not None:
            parts.append(f"{max(0, self.max_tokens - self.tokens - self.reserved_tokens):,} of --max-tokens "
                         f"{self.max_tokens}")
        return " and ".join(parts) or "no limit"


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
    return (redact(text, [secret] if isinstance(secret, str) else (secret or [])) or "")[:500]


class OpenAICompatibleClient:
    """`LLMClient` over one or more OpenAI-compatible endpoints, requests spread round-robin."""

    def __init__(self, base_urls: list[str], api_key: str | None = None, *, timeout_s: float = 60.0,
                 max_attempts: int = 6, max_wait_s: float = 60.0, prices: dict[str, tuple[float, ...]] | None = None,
                 budget: Budget | None = None):
        if not base_urls:
            raise AutointerpError("no LLM endpoint: pass --base-url or set OPENAI_BASE_URL")
        for url in base_urls:
            refuse_url_credentials(url, "the endpoint URL (--base-url or $OPENAI_BASE_URL)")
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

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, batch: bool = False,
             cached_tokens: int = 0) -> float:
        return cost(self.prices, model, prompt_tokens, completion_tokens, batch, cached_tokens)

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
            p_tok, c_tok, cached = usage
            call = LLMCall(str(uuid.uuid4()), role, model, url, phash, p_tok, c_tok, time.monotonic() - start,
                           self.cost(model, p_tok, c_tok, cached_tokens=cached), "ok", None, datetime.now(UTC),
                           cached_tokens=cached)
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
        kwargs = chat_body(model, messages, max_tokens, temperature, top_logprobs)
        return await self._request(role, model, kwargs,
                                   lambda c: c.chat.completions.with_raw_response.create(**kwargs),
                                   lambda raw: parse_chat_json(_json_body(raw)))

    async def complete(self, *, role: str, model: str, prompt: str, max_tokens: int, echo: bool = False,
                       logprobs: int | None = None) -> LLMReply:
        kwargs = completion_body(model, prompt, max_tokens, echo, logprobs)
        # Parsed by hand (as chat): the openai models' construction of a long prompt's logprobs costs ~50 ms
        # per thousand tokens, the pipeline's largest overhead.
        return await self._request(role, model, kwargs,
                                   lambda c: c.completions.with_raw_response.create(**kwargs),
                                   lambda raw: parse_completion_json(_json_body(raw)))


# ---------------------------------------------------------------- request bodies and replies
# Shared by live calls and batch files, so a reply read from a batch result is parsed exactly like one
# received over HTTP.

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"


def chat_body(model: str, messages: list[dict[str, str]], max_tokens: int, temperature: float = 0.0,
              top_logprobs: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens,
                            "temperature": temperature}
    if top_logprobs:
        body.update(logprobs=True, top_logprobs=top_logprobs)
    return body


def completion_body(model: str, prompt: str, max_tokens: int, echo: bool = False,
                    logprobs: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                            "echo": echo}
    if logprobs is not None:
        body["logprobs"] = logprobs
    return body


def _json_body(raw: Any) -> Any:
    try:
        return json.loads(raw.http_response.content)
    except ValueError as exc:
        raise MalformedResponse(f"invalid JSON body ({exc})") from None


Usage = tuple[int, int, int]  # prompt, completion, cached prompt tokens


def _usage_of(body: dict[str, Any]) -> Usage:
    """(prompt, completion, cached prompt) tokens. Cached tokens are OpenAI's (and vLLM's, with prefix
    caching) `usage.prompt_tokens_details.cached_tokens`: 0 where the server does not say."""
    usage = body.get("usage") or {}
    try:
        details = usage.get("prompt_tokens_details") or {}
        p_tok = int(usage.get("prompt_tokens") or 0)
        cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
        return p_tok, int(usage.get("completion_tokens") or 0), min(max(cached, 0), p_tok)
    except (TypeError, ValueError, AttributeError):
        raise MalformedResponse(f"unusable usage in the response: {usage!r:.100}") from None


def parse_chat_json(body: Any) -> tuple[str, Any, Usage]:
    """(text, the choice's logprobs, (prompt, completion, cached) tokens) of a chat completion body; raises
    MalformedResponse for anything else."""
    choices = body.get("choices") if isinstance(body, dict) else None
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = first.get("message")
    if not isinstance(message, dict):
        raise MalformedResponse("no choices[0].message in the response")
    text = message.get("content")
    if not isinstance(text, str):
        raise MalformedResponse("empty message content")
    logprobs = first.get("logprobs")
    return text, (logprobs if isinstance(logprobs, dict) else None), _usage_of(body)


def parse_completion_json(body: Any) -> tuple[str, Any, Usage]:
    """(text, logprobs, tokens) of a completions body; raises MalformedResponse for anything else."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not choices or not isinstance(choices[0], dict) or not isinstance(choices[0].get("text"), str):
        raise MalformedResponse("no choices[0].text in the response")
    return choices[0]["text"], choices[0].get("logprobs"), _usage_of(body)


def parse_body(url: str, body: Any) -> tuple[str, Any, Usage]:
    return (parse_chat_json if url.endswith("chat/completions") else parse_completion_json)(body)


def cost(prices: dict[str, tuple[float, ...]], model: str, prompt_tokens: int, completion_tokens: int,
         batch: bool = False, cached_tokens: int = 0) -> float:
    """USD for one request at live or batch prices (batch: the table's 3rd and 4th columns, else half).
    `cached_tokens` (part of `prompt_tokens`) cost the cached price (5th column live, 6th batch, else half
    the 5th) where the table has one, else the input price."""
    p = prices.get(model, (0.0, 0.0))
    p_in, p_out = (p[2], p[3]) if batch and len(p) >= 4 else ((p[0] / 2, p[1] / 2) if batch else (p[0], p[1]))
    p_cached = p_in
    if len(p) >= 5:
        p_cached = (p[5] if len(p) >= 6 else p[4] / 2) if batch else p[4]
    cached = min(max(cached_tokens, 0), prompt_tokens)
    return ((prompt_tokens - cached) * p_in + cached * p_cached + completion_tokens * p_out) / 1e6


def estimate_tokens(body: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens a request may cost, before it is sent: the prompt at one token per 3
    bytes of its text (BPE tokenizers average ~4 on English; our token-per-line and marked excerpts are
    denser, so 3 errs high), the completion at its max_tokens."""
    if "messages" in body:  # and ~4 tokens of chat framing per message
        text = "".join(str(m.get("content", "")) for m in body["messages"])
        framing = 4 * len(body["messages"])
    else:
        text, framing = str(body.get("prompt", "")), 0
    return -(-len(text.encode()) // 3) + framing, int(body.get("max_tokens") or 0)


def estimate_cost(prices: dict[str, tuple[float, ...]], body: dict[str, Any], batch: bool = True
                  ) -> tuple[float, int]:
    """(USD, tokens) a request may cost (`estimate_tokens` at the model's live or batch prices, no cache)."""
    p_tok, c_tok = estimate_tokens(body)
    return cost(prices, str(body.get("model", "")), p_tok, c_tok, batch), p_tok + c_tok


def reask_messages(messages: list[dict[str, str]], reply_text: str, problem: str, reask: str
                   ) -> list[dict[str, str]]:
    """The conversation that re-asks after an unusable reply (prompts/REASK.txt with $problem)."""
    return [*messages, {"role": "assistant", "content": reply_text[:2000]},
            {"role": "user", "content": prompts.render(reask, problem=problem)}]


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
            messages = reask_messages(messages, reply.text, str(exc), reask)
    raise LLMFailure(f"unusable reply after {1 + max_reasks} attempts: {problem}", calls, FailureCode.UNUSABLE_REPLY)


# ---------------------------------------------------------------- the Batch API (files and batches)

BATCH_DONE = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class BatchInfo:
    """What the provider says about one batch."""

    batch_id: str
    status: str  # validating | in_progress | finalizing | completed | failed | expired | cancelling | cancelled
    input_file_id: str
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    errors: str | None = None


def _info(b: Any) -> BatchInfo:
    counts = b.request_counts
    errors = "; ".join(str(e.message) for e in (b.errors.data or [])) if b.errors is not None else None
    return BatchInfo(b.id, b.status, b.input_file_id, b.output_file_id, b.error_file_id,
                     int(counts.total) if counts else 0, int(counts.completed) if counts else 0,
                     int(counts.failed) if counts else 0, errors or None)


class BatchAPI:
    """The files and batches endpoints of one OpenAI-compatible provider (blocking calls; the batch
    driver polls every few seconds, so nothing here needs to be async). Errors are AutointerpErrors
    with the key hidden."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 120.0):
        self.endpoint = public_url(base_url)
        self._secret = [x for x in [api_key or "", *_url_secrets(base_url)] if x]
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s,
                                     max_retries=3)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except openai.OpenAIError as exc:
            raise AutointerpError(f"Batch API: {what} failed: {_reason(exc, self._secret)}") from None

    def upload(self, name: str, content: bytes) -> str:
        """Upload a JSONL request file (purpose 'batch'); returns its file id."""
        return self._call("upload", lambda: self._client.files.create(file=(name, content), purpose="batch").id)

    def find_file(self, name: str) -> str | None:
        """The id of an uploaded batch file named `name` (an upload whose answer was lost), if any."""
        def find() -> str | None:
            return next((f.id for f in self._client.files.list(purpose="batch") if f.filename == name), None)
        return self._call("listing files", find)

    def create(self, input_file_id: str, url: str, metadata: dict[str, str]) -> BatchInfo:
        return self._call("create", lambda: _info(self._client.batches.create(
            input_file_id=input_file_id, endpoint=url, completion_window="24h", metadata=metadata)))  # type: ignore[arg-type]

    def find_batch(self, input_file_id: str) -> BatchInfo | None:
        """The batch made from this input file (a create whose answer was lost), if any."""
        def find() -> BatchInfo | None:
            return next((_info(b) for b in self._client.batches.list(limit=100)
                         if b.input_file_id == input_file_id), None)
        return self._call("listing batches", find)

    def retrieve(self, batch_id: str) -> BatchInfo:
        return self._call("retrieve", lambda: _info(self._client.batches.retrieve(batch_id)))

    def cancel(self, batch_id: str) -> BatchInfo:
        return self._call("cancel", lambda: _info(self._client.batches.cancel(batch_id)))

    def content(self, file_id: str) -> bytes:
        return self._call("download", lambda: self._client.files.content(file_id).content)

    def close(self) -> None:
        self._client.close()


def batch_call(prices: dict[str, tuple[float, ...]], *, role: str, model: str, endpoint: str, body: dict[str, Any],
               batch_id: str, custom_id: str, usage: Usage, error: str | None) -> LLMCall:
    """The llm_calls record of one batch result (its id derived from the batch and request, so ingesting
    the same result twice cannot make two rows)."""
    p_tok, c_tok, cached = usage
    return LLMCall(str(uuid.uuid5(uuid.NAMESPACE_URL, f"{batch_id}/{custom_id}")), role, model, endpoint,
                   prompt_hash(body), p_tok, c_tok, 0.0, cost(prices, model, p_tok, c_tok, True, cached),
                   "error" if error else "ok", error, datetime.now(UTC), batch_id, cached)
