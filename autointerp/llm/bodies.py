"""Request bodies and replies of the OpenAI API, shared by live calls and batch files, so a reply read
from a batch result is parsed exactly like one received over HTTP."""

from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec
import orjson

from autointerp.llm import prompts


class MalformedResponse(Exception):
    """The server answered 200 with a body that is not a usable completion."""


class ListRefused(Exception):
    """The endpoint does not take a list of prompts in one completions request."""


class TemperatureRefused(Exception):
    """The endpoint refused the request's temperature: the request is sent again without it."""


CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"


def chat_body(model: str, messages: list[dict[str, str]], max_tokens: int, temperature: float = 0.0,
              top_logprobs: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens,
                            "temperature": temperature}
    if top_logprobs:
        body.update(logprobs=True, top_logprobs=top_logprobs)
    return body


def completion_body(model: str, prompt: str | list[str], max_tokens: int, echo: bool = False,
                    logprobs: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                            "echo": echo}
    if logprobs is not None:
        body["logprobs"] = logprobs
    return body


def loads(content: bytes | str) -> Any:
    """A response body's JSON. orjson first: echo bodies carry top logprobs for every prompt token, and
    the stdlib parser was the client's largest cost; the stdlib's for what orjson refuses (NaN and
    Infinity, which some servers write for a -inf logprob)."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(content)
    except ValueError as exc:
        raise MalformedResponse(f"invalid JSON body ({exc})") from None


# An integer orjson reads as one (it reads larger ones as floats): a body with another goes to `loads`.
_Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class EchoLogprobs(msgspec.Struct):
    """A completions choice's `logprobs` with every token's top-logprobs entry left as its JSON text: an
    echo reply carries one for each prompt token and its reader needs a few (`entries`)."""

    tokens: list[str]
    text_offset: list[_Int]
    top_logprobs: list[msgspec.Raw]
    aligned: bool = False

    def entries(self, indices: list[int]) -> list[Any]:
        """The top-logprobs entries of these tokens, decoded (by `loads`) in one call."""
        tops = self.top_logprobs
        return loads(b"[" + b",".join([tops[i] for i in indices]) + b"]")

    def any_entry(self) -> bool:
        """Whether any token's entry is an object or a list (not null, not a scalar)."""
        return any(memoryview(t)[:1] in (b"{", b"[") for t in self.top_logprobs)


class _Choice(msgspec.Struct):
    text: str
    index: _Int | None = None
    logprobs: EchoLogprobs | None = None


class _Completions(msgspec.Struct):
    choices: list[_Choice]
    usage: msgspec.Raw = msgspec.Raw(b"null")


_COMPLETIONS = msgspec.json.Decoder(_Completions)


def loads_completions(content: bytes) -> Any:
    """A completions body as `loads` gives it, except that each choice's logprobs is an `EchoLogprobs`,
    its top-logprobs entries undecoded: decoding every entry of an echo body was the client's largest
    cost. Only a body of the usual shape is read so (msgspec, checking each field's type); any other (a
    missing or mistyped field, NaN, a lone surrogate) is left to `loads`, so the parsers and the echo
    reader see what they would have seen."""
    try:
        body = _COMPLETIONS.decode(content)
    except msgspec.DecodeError:  # ValidationError included
        return loads(content)
    return {"choices": [{"index": c.index, "text": c.text, "logprobs": c.logprobs} for c in body.choices],
            "usage": loads(bytes(body.usage))}


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


def parse_completions_json(body: Any, n: int) -> tuple[list[str], list[Any], Usage]:
    """(texts, logprobs, tokens) of a completions body answering a list of `n` prompts, in prompt order
    (by each choice's `index`); raises ListRefused when the choices do not answer the n prompts one each
    (a server that read only the first), MalformedResponse for a body that is no completion at all."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in choices):
        raise MalformedResponse("no choices[].text in the response")
    order = sorted(choices, key=lambda c: c.get("index") if isinstance(c.get("index"), int) else -1)
    if [c.get("index") for c in order] != list(range(n)):
        raise ListRefused(f"{len(choices)} choice(s) for a list of {n} prompts")
    return [c["text"] for c in order], [c.get("logprobs") for c in order], _usage_of(body)


def parse_body(url: str, body: Any) -> tuple[str, Any, Usage]:
    return (parse_chat_json if url.endswith("chat/completions") else parse_completion_json)(body)


def reask_messages(messages: list[dict[str, str]], reply_text: str, problem: str, reask: str
                   ) -> list[dict[str, str]]:
    """The conversation that re-asks after an unusable reply (prompts/REASK.txt with $problem)."""
    return [*messages, {"role": "assistant", "content": reply_text[:2000]},
            {"role": "user", "content": prompts.render(reask, problem=problem)}]
