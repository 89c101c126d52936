"""The Batch API transport: one provider's files and batches endpoints, and the llm_calls record of a
batch result."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import openai

from autointerp.errors import LLMError
from autointerp.llm.bodies import Usage
from autointerp.llm.client import _reason, _url_secrets, new_call, prompt_hash, public_url
from autointerp.llm.costs import cost
from autointerp.records import CallRow

T = TypeVar("T")



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
    driver polls every few seconds, so nothing here needs to be async). Errors are LLMErrors with
    the key hidden."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 120.0):
        self.endpoint = public_url(base_url)
        self._secret = [x for x in [api_key or "", *_url_secrets(base_url)] if x]
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s,
                                     max_retries=3)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except openai.OpenAIError as exc:
            raise LLMError(f"Batch API: {what} failed: {_reason(exc, self._secret)}") from None

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
               batch_id: str, custom_id: str, usage: Usage, error: str | None) -> CallRow:
    """The llm_calls record of one batch result (its id derived from the batch and request, so ingesting
    the same result twice cannot make two rows)."""
    p_tok, c_tok, cached = usage
    return new_call(role, model, endpoint, prompt_hash(body), p_tok, c_tok, 0.0,
                    cost(prices, model, p_tok, c_tok, True, cached), error,
                    call_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{batch_id}/{custom_id}")), batch_id=batch_id,
                    cached_tokens=cached)
