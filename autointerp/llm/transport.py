"""The live client's transport: JSON POSTs to an OpenAI-compatible endpoint over one pooled `httpx`
client per endpoint, with no SDK in between. At zero latency the `openai` SDK's per-request work
(request transformation, its response wrappers and auth hooks) was a sixth of the label stage's CPU;
the live path needs none of it: it builds its bodies (llm.bodies) and parses the replies itself.
Retries, timeouts and their reasons stay in llm.client; the Batch API keeps the SDK (llm.batch_api)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson

# The SDK's pool sizes with every connection kept alive: at concurrency 128 a pool that keeps fewer
# reopens connections on every burst.
LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)


class HTTPStatusError(Exception):
    """The server answered with an error status: its code, its message and its headers (Retry-After)."""

    def __init__(self, status_code: int, message: str, headers: httpx.Headers):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers


class Timeout(Exception):
    """No answer within the timeout."""


class ConnectionFailed(Exception):
    """The connection could not be made, or broke before the answer was read."""


def _status_error(response: httpx.Response) -> HTTPStatusError:
    """As the SDK words it: 'Error code: N', with the server's error message when its body gives one."""
    message = f"Error code: {response.status_code}"
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    error = body.get("error", body) if isinstance(body, dict) else None
    text = error.get("message") if isinstance(error, dict) else None
    if isinstance(text, str) and text:
        message += f" - {text}"
    return HTTPStatusError(response.status_code, message, response.headers)


def _dumps(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:  # text orjson refuses (an unpaired surrogate): the stdlib escapes it
        return json.dumps(body).encode()


class Endpoint:
    """One OpenAI-compatible base URL: `post(path, body)` returns the reply's body (bytes) or raises
    HTTPStatusError, Timeout or ConnectionFailed."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float):
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s, limits=LIMITS,
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                     "Accept": "application/json"})

    async def post(self, path: str, body: dict[str, Any]) -> bytes:
        try:
            response = await self._client.post(path, content=_dumps(body))
        except httpx.TimeoutException as exc:
            raise Timeout(str(exc) or "timeout") from exc
        except httpx.TransportError as exc:
            raise ConnectionFailed(str(exc) or type(exc).__name__) from exc
        if response.status_code >= 400:
            raise _status_error(response)
        return response.content

    async def close(self) -> None:
        await self._client.aclose()
