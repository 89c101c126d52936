"""The live client's transport: JSON POSTs to an OpenAI-compatible endpoint over one pooled aiohttp
session per endpoint and event loop, with no SDK in between. At zero latency the `openai` SDK's
per-request work (request transformation, its response wrappers and auth hooks, and httpx's pool,
which polls every idle connection's socket on every request) was over a third of the label stage's CPU;
aiohttp takes ~1 ms of CPU for a label's echo request where httpx took ~3.8 ms (load ~10). The live path
needs nothing of the SDK: it builds its bodies (llm.bodies) and parses the replies itself. Retries,
timeouts' reasons and failure codes stay in llm.client; the Batch API keeps the SDK (llm.batch_api)."""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL


class HTTPStatusError(Exception):
    """The server answered with an error status: its code, its message and its headers (Retry-After)."""

    def __init__(self, status_code: int, message: str, headers: Mapping[str, str]):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers


class Timeout(Exception):
    """No answer within the timeout."""


class ConnectionFailed(Exception):
    """The connection could not be made, or broke before the answer was read."""


def status_error(status: int, content: bytes, headers: Mapping[str, str]) -> HTTPStatusError:
    """Worded as the SDK words it: 'Error code: N', with the server's error message when its body gives one."""
    message = f"Error code: {status}"
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    error = body.get("error", body) if isinstance(body, dict) else None
    text = error.get("message") if isinstance(error, dict) else None
    if isinstance(text, str) and text:
        message += f" - {text}"
    return HTTPStatusError(status, message, headers)


def _dumps(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:  # text orjson refuses (an unpaired surrogate): the stdlib escapes it
        return json.dumps(body).encode()


async def _closing(session: aiohttp.ClientSession) -> AsyncIterator[None]:
    """Held open while its loop runs: the loop's shutdown (asyncio.run's) finalises it, closing the session
    inside the loop that owns its connections."""
    try:
        yield
    finally:
        await session.close()


class Endpoint:
    """One OpenAI-compatible base URL: `post(path, body)` returns the reply's body (bytes) or raises
    HTTPStatusError, Timeout or ConnectionFailed. A session belongs to one event loop, so each loop that
    posts gets its own, closed when that loop shuts down."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float):
        self._base = base_url.rstrip("/")
        self._urls: dict[str, URL] = {}
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                         "Accept": "application/json"}
        # Like httpx's per-phase timeout: connecting, and each wait for the next bytes of the reply.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        # HTTP(S)_PROXY and NO_PROXY are honoured, as the SDK's httpx client did, but read once here: aiohttp's
        # trust_env reads them (and ~/.netrc) in a worker thread for every request.
        try:
            self._proxy: tuple[URL | None, aiohttp.BasicAuth | None] = get_env_proxy_for_url(URL(self._base))
        except LookupError:
            self._proxy = (None, None)
        self._sessions: weakref.WeakKeyDictionary[Any, tuple[aiohttp.ClientSession, Any]] = (
            weakref.WeakKeyDictionary())

    async def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        held = self._sessions.get(loop)
        if held is None or held[0].closed:
            session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout, trust_env=False,
                                            connector=aiohttp.TCPConnector(limit=0))
            closer = _closing(session)
            await closer.__anext__()
            held = self._sessions[loop] = (session, closer)
        return held[0]

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self._base + path)
        return url

    async def post(self, path: str, body: dict[str, Any]) -> bytes:
        session = await self._session()
        try:
            async with session.post(self._url(path), data=_dumps(body), proxy=self._proxy[0],
                                    proxy_auth=self._proxy[1]) as response:
                content = await response.read()
                if response.status >= 400:
                    raise status_error(response.status, content, response.headers)
                return content
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutErrors too
            raise Timeout(str(exc) or "timeout") from exc
        except aiohttp.ClientError as exc:
            raise ConnectionFailed(str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        """Close this loop's session (others close when their loop shuts down)."""
        held = self._sessions.pop(asyncio.get_running_loop(), None)
        if held is not None:
            await held[1].aclose()
