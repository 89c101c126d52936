"""The batch file format (OpenAI's, which `vllm run-batch` reads and writes): request lines, custom_ids,
and reading output and error files into results."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from autointerp.records import FailureCode


@dataclass(frozen=True)
class Request:
    custom_id: str
    url: str
    role: str
    body: dict[str, Any]

    def line(self) -> bytes:
        return (json.dumps({"custom_id": self.custom_id, "method": "POST", "url": self.url, "body": self.body})
                + "\n").encode()


@dataclass(frozen=True)
class Result:
    """One line of a batch output or error file: a 200 body, or why there is none."""

    body: Any = None
    error: str | None = None
    code: str | None = None


MISSING = Result(error="no result for this request in the batch's files", code=FailureCode.MALFORMED_RESPONSE)


def custom_id(group: str, dictionary_id: int, feature: int, eid: str | None, part: str, attempt: int) -> str:
    return f"{group}:d{dictionary_id}:f{feature}:e{eid or '-'}:{part}:a{attempt}"


def result_key(cid: str) -> str:
    """The custom_id without its attempt: how results are matched to the requests rebuilt at ingestion."""
    return cid.rsplit(":a", 1)[0]


def read_results(content: bytes) -> tuple[dict[str, Result], int]:
    """Results by custom_id (without the attempt) from an OpenAI-format output or error file (vLLM's
    run-batch writes the same), and how many lines could not be read (those requests count as missing)."""
    out: dict[str, Result] = {}
    unreadable = 0
    for raw in content.splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            cid = line["custom_id"]
            if not isinstance(cid, str):
                raise TypeError("custom_id")
        except (ValueError, TypeError, KeyError):
            unreadable += 1
            continue
        response = line.get("response") if isinstance(line.get("response"), dict) else None
        error = line.get("error") if isinstance(line.get("error"), dict) else None
        status = response.get("status_code") if response else None
        if response is not None and status == 200 and error is None:
            out[result_key(cid)] = Result(body=response.get("body"))
            continue
        code = str((error or {}).get("code") or "")
        message = str((error or {}).get("message") or "")
        if not message and response is not None:
            message = str(((response.get("body") or {}).get("error") or {}).get("message") or "")
        if code in (FailureCode.BATCH_EXPIRED, FailureCode.BATCH_CANCELLED):
            fc = code
        elif status == 429:
            fc = FailureCode.RATE_LIMITED
        else:
            fc = FailureCode.HTTP_ERROR
        out[result_key(cid)] = Result(error=f"batch request failed: {code or f'HTTP {status}'} {message}"[:500],
                                       code=str(fc))
    return out, unreadable
