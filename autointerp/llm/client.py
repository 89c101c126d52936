"""LLM access: the `LLMClient` protocol, the OpenAI-compatible client (JSON over llm.transport, tenacity
retries, usage and cost; prices and the budget are in llm.costs) and re-asking until a reply parses.

Every attempt leaves a `CallRow` record (ok or error, with its reason); callers collect them and the
pipeline writes them to `llm_calls`. The API key is never put in a record or an error message.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from autointerp.errors import BadInput
from autointerp.llm.bodies import (
    ListRefused,
    MalformedResponse,
    TemperatureRefused,
    chat_body,
    completion_body,
    loads,
    loads_completions,
    parse_chat_json,
    parse_completion_json,
    parse_completions_json,
    reask_messages,
)
from autointerp.llm.costs import DEFAULT_PRICES, Budget, BudgetExhausted, cost
from autointerp.llm.transport import ConnectionFailed, Endpoint, HTTPStatusError, Timeout
from autointerp.records import CallRow, FailureCode
from autointerp.redact import redact, refuse_url_credentials

T = TypeVar("T")

def new_call(role: str, model: str, endpoint: str, phash: str | None, prompt_tokens: int, completion_tokens: int,
             latency_s: float, cost_usd: float, error: str | None = None, *, call_id: str | None = None,
             batch_id: str | None = None, cached_tokens: int = 0) -> CallRow:
    """The record of one attempt at one request (status 'error' when `error` is given), not yet tied to the
    work it was for (`CallRow.dictionary_id` etc. are set when its work is stored)."""
    return CallRow(call_id=call_id or str(uuid.uuid4()), role=role, model=model, endpoint=endpoint, prompt_hash=phash,
                   prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, latency_s=latency_s,
                   cost_usd=cost_usd, status="error" if error else "ok", error=error, created_at=datetime.now(UTC),
                   batch_id=batch_id, cached_tokens=cached_tokens)


@dataclass
class LLMReply:
    text: str
    logprobs: Any  # completions: {tokens, text_offset, top_logprobs} (a list of them, one per prompt, for a list
    # of prompts), an EchoLogprobs where echo was asked (its entries decoded when read); chat: choice.logprobs
    calls: list[CallRow]


class LLMFailure(Exception):
    """LLM work that failed: a request after its retries, or a reply still unusable after its re-asks.
    Carries every attempt's record and a machine-readable `code` (a `FailureCode`)."""

    def __init__(self, message: str, calls: list[CallRow], code: str = FailureCode.UNUSABLE_REPLY):
        super().__init__(message)
        self.calls = calls
        self.code = str(code)


class LLMClient(Protocol):
    """What explainers and simulators need from a model server."""

    async def chat(self, *, role: str, model: str, messages: list[dict[str, str]], max_tokens: int,
                   temperature: float = 0.0, top_logprobs: int | None = None) -> LLMReply: ...

    async def complete(self, *, role: str, model: str, prompt: str | list[str], max_tokens: int,
                       echo: bool = False, logprobs: int | None = None) -> LLMReply:
        """A list of prompts is answered in one reply whose logprobs are a list, one per prompt."""
        ...


def prompt_hash(payload: Any) -> str:
    return hashlib.sha256(repr(payload).encode()).hexdigest()[:16]


def _retryable(exc: BaseException) -> bool:
    """Only what may pass on its own: 429, 408, 5xx, timeouts, dropped connections, malformed bodies.
    A 400/401/403/404 fails the same way every time, and an exception of ours is a bug: not retried."""
    if isinstance(exc, HTTPStatusError):
        return exc.status_code in (408, 429) or exc.status_code >= 500
    return isinstance(exc, Timeout | ConnectionFailed | MalformedResponse | TemperatureRefused)


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
    if isinstance(exc, HTTPStatusError):
        value = exc.headers.get("retry-after")
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
        if isinstance(exc, TemperatureRefused):
            return 0.0
        ra = _retry_after(exc)
        return min(ra, self.cap_s) if ra is not None else self.backoff(state)


def _code(exc: BaseException) -> FailureCode:
    if isinstance(exc, HTTPStatusError):
        return FailureCode.RATE_LIMITED if exc.status_code == 429 else FailureCode.HTTP_ERROR
    if isinstance(exc, Timeout):
        return FailureCode.TIMEOUT
    if isinstance(exc, ConnectionFailed):
        return FailureCode.CONNECTION
    return FailureCode.MALFORMED_RESPONSE


def _reason(exc: BaseException, secret: str | list[str] | None) -> str:
    if isinstance(exc, HTTPStatusError):
        text = f"HTTP {exc.status_code}: {exc.message}"
    elif isinstance(exc, Timeout):
        text = "timeout"
    elif isinstance(exc, ConnectionFailed):
        text = f"connection error: {exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return (redact(text, [secret] if isinstance(secret, str) else (secret or [])) or "")[:500]


class OpenAICompatibleClient:
    """`LLMClient` over one or more OpenAI-compatible endpoints, requests spread round-robin."""

    def __init__(self, base_urls: list[str], api_key: str | None = None, *, timeout_s: float = 60.0,
                 max_attempts: int = 6, max_wait_s: float = 60.0, prices: dict[str, tuple[float, ...]] | None = None,
                 budget: Budget | None = None):
        if not base_urls:
            raise BadInput("no LLM endpoint: pass --base-url or set OPENAI_BASE_URL")
        for url in base_urls:
            refuse_url_credentials(url, "the endpoint URL (--base-url or $OPENAI_BASE_URL)")
        # Never recorded or shown: the key, and whatever credentials the endpoint URLs carry.
        self._secret = [x for x in [api_key or ""] + [x for u in base_urls for x in _url_secrets(u)] if x]
        self._clients = [(public_url(url), Endpoint(url, api_key or "not-needed", timeout_s)) for url in base_urls]
        self._turn = itertools.count()
        # Per endpoint: does it take a list of prompts in one completions request? None: not tried yet.
        self.list_prompts: dict[str, bool | None] = {url: None for url, _ in self._clients}
        # Endpoints that refused a temperature (HTTP 400 naming it): later requests leave it to their default.
        self.refuses_temperature: set[str] = set()
        self._probe: tuple[Any, asyncio.Lock] | None = None  # (its event loop, the lock)
        self._probed = False
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

    def _pick(self, lists: bool) -> tuple[str, Endpoint]:
        """The next endpoint in turn (for a list of prompts: one not known to refuse lists)."""
        for _ in range(len(self._clients)):
            url, client = self._clients[next(self._turn) % len(self._clients)]
            if not lists or self.list_prompts[url] is not False:
                return url, client
        raise ListRefused("no endpoint takes a list of prompts")

    async def _request(self, role: str, model: str, path: str, payload: dict[str, Any], parse: Any,
                       lists: bool = False, decode: Callable[[bytes], Any] = loads) -> LLMReply:
        """`payload` POSTed to `path` of an endpoint in turn, retried; `parse(decode(body))` -> (text, logprobs,
        usage)."""
        calls: list[CallRow] = []
        phash = prompt_hash(payload)

        async def attempt() -> LLMReply:
            self.budget.check()
            url, endpoint = self._pick(lists)
            start = time.monotonic()
            try:
                # Where an endpoint has refused a temperature: its default instead.
                body = payload if url not in self.refuses_temperature else \
                    {k: v for k, v in payload.items() if k != "temperature"}
                text, logprobs, usage = parse(decode(await endpoint.post(path, body)))
            except Exception as exc:
                reason = _reason(exc, self._secret)
                if lists and _refuses_list(exc):
                    self.list_prompts[url] = False
                    exc = ListRefused(f"{url} takes one prompt per request ({reason})")
                elif "temperature" in payload and url not in self.refuses_temperature and _refuses_temperature(exc):
                    self.refuses_temperature.add(url)
                    exc = TemperatureRefused(reason)  # retried at once without it
                calls.append(new_call(role, model, url, phash, 0, 0, time.monotonic() - start, 0.0,
                                      _reason(exc, self._secret) if isinstance(exc, ListRefused) else reason))
                if isinstance(exc, ListRefused | TemperatureRefused):
                    raise exc from None
                raise
            if lists:
                self.list_prompts[url] = True
            p_tok, c_tok, cached = usage
            call = new_call(role, model, url, phash, p_tok, c_tok, time.monotonic() - start,
                            self.cost(model, p_tok, c_tok, cached_tokens=cached), cached_tokens=cached)
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
        except ListRefused as exc:
            raise LLMFailure(str(exc), calls, FailureCode.LIST_REFUSED) from None
        except Exception as exc:
            raise LLMFailure(f"{role} request failed after {len(calls)} attempt(s): {_reason(exc, self._secret)}",
                             calls, _code(exc)) from None
        raise AssertionError("unreachable")

    async def chat(self, *, role: str, model: str, messages: list[dict[str, str]], max_tokens: int,
                   temperature: float = 0.0, top_logprobs: int | None = None) -> LLMReply:
        kwargs = chat_body(model, messages, max_tokens, temperature, top_logprobs)
        return await self._request(role, model, "/chat/completions", kwargs, parse_chat_json)

    async def complete(self, *, role: str, model: str, prompt: str | list[str], max_tokens: int,
                       echo: bool = False, logprobs: int | None = None) -> LLMReply:
        if isinstance(prompt, list):
            return await self._complete_list(role, model, prompt, max_tokens, echo, logprobs)
        kwargs = completion_body(model, prompt, max_tokens, echo, logprobs)
        return await self._request(role, model, "/completions", kwargs, parse_completion_json,
                                   decode=loads_completions if echo else loads)

    async def _complete_list(self, role: str, model: str, prompts: list[str], max_tokens: int, echo: bool,
                             logprobs: int | None) -> LLMReply:
        """A list of prompts in one request where the endpoint takes lists; where it refuses them (found on
        the first list sent to it, recorded as that attempt's error), one request per prompt."""
        if not self._probed:
            # The first list goes alone: a refusing endpoint is then found by one request, not by every
            # request in flight. Only the first: an endpoint that does not answer must not serialize the rest.
            async with self._probe_lock():
                if not self._probed:
                    try:
                        return await self._send_list(role, model, prompts, max_tokens, echo, logprobs)
                    finally:
                        self._probed = True
        return await self._send_list(role, model, prompts, max_tokens, echo, logprobs)

    def _probe_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._probe is None or self._probe[0] is not loop:
            self._probe = (loop, asyncio.Lock())
        return self._probe[1]

    async def _send_list(self, role: str, model: str, prompts: list[str], max_tokens: int, echo: bool,
                         logprobs: int | None) -> LLMReply:
        if all(v is False for v in self.list_prompts.values()):
            return await self._one_by_one(role, model, prompts, max_tokens, echo, logprobs)
        kwargs = completion_body(model, prompts, max_tokens, echo, logprobs)

        def parse(body: Any) -> tuple[str, list[Any], Any]:
            texts, lps, usage = parse_completions_json(body, len(prompts))
            return "".join(texts), lps, usage

        try:
            return await self._request(role, model, "/completions", kwargs, parse, lists=True,
                                       decode=loads_completions if echo else loads)
        except LLMFailure as exc:
            if exc.code != FailureCode.LIST_REFUSED:
                raise
            refused = exc.calls
        reply = await self._send_list(role, model, prompts, max_tokens, echo, logprobs)
        return LLMReply(reply.text, reply.logprobs, refused + reply.calls)

    async def _one_by_one(self, role: str, model: str, prompts: list[str], max_tokens: int, echo: bool,
                          logprobs: int | None, parallel: int = 4) -> LLMReply:
        gate = asyncio.Semaphore(parallel)

        async def one(p: str) -> LLMReply | LLMFailure:
            async with gate:
                try:
                    return await self.complete(role=role, model=model, prompt=p, max_tokens=max_tokens, echo=echo,
                                               logprobs=logprobs)
                except LLMFailure as exc:
                    return exc

        replies = await asyncio.gather(*(one(p) for p in prompts))
        calls = [c for r in replies for c in r.calls]
        failure = next((r for r in replies if isinstance(r, LLMFailure)), None)
        if failure is not None:
            raise LLMFailure(str(failure), calls, failure.code)
        return LLMReply("".join(r.text for r in replies if isinstance(r, LLMReply)),
                        [r.logprobs for r in replies if isinstance(r, LLMReply)], calls)

    def endpoint_notes(self) -> list[str]:
        """What the summary says about the endpoints: those found to take one prompt per request."""
        return [f"{url} takes one prompt per completions request: simulation sent one request per context"
                for url, ok in self.list_prompts.items() if ok is False] + [
            f"{url} refused a temperature (HTTP 400): its default temperature was used from then on, so best-of-k "
            "candidates there vary by evidence only" for url in sorted(self.refuses_temperature)]


def _refuses_temperature(exc: BaseException) -> bool:
    """The endpoint's 400 to a request's temperature (reasoning models take only their default)."""
    return isinstance(exc, HTTPStatusError) and exc.status_code in (400, 422) \
        and "temperature" in str(exc.message).lower()


def _refuses_list(exc: BaseException) -> bool:
    """A list of prompts refused: the server's 400/404/422 to it, or choices that do not answer each prompt."""
    return isinstance(exc, ListRefused) or (isinstance(exc, HTTPStatusError)
                                            and exc.status_code in (400, 404, 422))


async def ask_parsed(client: LLMClient, parse: Callable[[LLMReply], T], *, role: str, model: str,
                     messages: list[dict[str, str]], max_tokens: int, reask: str, max_reasks: int,
                     top_logprobs: int | None = None, temperature: float = 0.0) -> tuple[T, list[CallRow]]:
    """One chat request whose reply must parse: `parse` raises ValueError saying what is wrong, and the
    model is re-asked with prompts/REASK.txt ($problem) at most `max_reasks` times. Returns the parsed
    value and every attempt's record; raises LLMFailure (with the calls and a code) otherwise."""
    calls: list[CallRow] = []
    problem = ""
    for _ in range(1 + max_reasks):
        try:
            reply = await client.chat(role=role, model=model, messages=messages, max_tokens=max_tokens,
                                      temperature=temperature, top_logprobs=top_logprobs)
        except LLMFailure as exc:
            raise LLMFailure(str(exc), calls + exc.calls, exc.code) from None
        calls += reply.calls
        try:
            return parse(reply), calls
        except ValueError as exc:
            problem = f"{exc}; reply began {reply.text[:80]!r}"
            messages = reask_messages(messages, reply.text, str(exc), reask)
    raise LLMFailure(f"unusable reply after {1 + max_reasks} attempts: {problem}", calls, FailureCode.UNUSABLE_REPLY)
