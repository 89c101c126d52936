"""A loopback HTTP server that speaks the OpenAI API, with scripted answers and injected faults.

Real HTTP on 127.0.0.1 (stdlib ThreadingHTTPServer), so the `openai` client, its timeouts and our
retries are exercised for real. A script is a function from the parsed request to a `Reply`;
faults are replies too: status codes with headers (429 + Retry-After, 500), hangs, dropped
connections, malformed bodies. Every request is recorded.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    content: str | None = None  # chat content / completion text
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    raw_body: bytes | None = None  # sent as is (malformed JSON, wrong schema)
    delay_s: float = 0.0
    drop: bool = False  # close the connection without answering
    logprobs: Any = None  # completions: the logprobs object; chat: the choice's logprobs
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def too_many(retry_after: float = 0.2) -> Reply:
    return Reply(status=429, headers={"Retry-After": str(retry_after)},
                 raw_body=b'{"error": {"message": "rate limited", "type": "rate_limit"}}')


def server_error() -> Reply:
    return Reply(status=500, raw_body=b'{"error": {"message": "boom"}}')


def hang(seconds: float = 30.0) -> Reply:
    return Reply(content="too late", delay_s=seconds)


def dropped() -> Reply:
    return Reply(drop=True)


def malformed() -> Reply:
    return Reply(raw_body=b'{"id": "x", "choices": [{"message": {"content": "trunc')


def wrong_schema() -> Reply:
    return Reply(raw_body=b'{"hello": "world"}')


def words(text: str) -> list[str]:
    """The loopback server's tokenizer: runs of non-space characters with their leading spaces, and newlines."""
    return re.findall(r"\n|[^\S\n]*[^\s]+|[^\S\n]+", text)


def echo_logprobs(prompt: str, top: Callable[[int, str, list[str]], dict[str, float]]) -> dict[str, Any]:
    """A completions `logprobs` object for an echoed prompt: tokens, offsets, and top_logprobs from `top(i, token, tokens)`."""
    tokens = words(prompt)
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    tops = [None] + [top(i, t, tokens) for i, t in enumerate(tokens)][1:]
    return {"tokens": tokens, "text_offset": offsets, "token_logprobs": [None] + [-1.0] * (len(tokens) - 1),
            "top_logprobs": tops}


Script = Callable[[str, dict[str, Any]], Reply]  # (path, request json) -> reply


class LoopbackLLM:
    """Start with `with LoopbackLLM(script) as llm:`; `llm.base_url` is the endpoint; `llm.requests` the log,
    `llm.headers` each request's headers, lower-cased names (same order). With `api_key`, a request whose Authorization is not
    `Bearer <api_key>` gets 401, as OpenAI answers it, and never reaches the script."""

    def __init__(self, script: Script, api_key: str | None = None):
        self.script = script
        self.api_key = api_key
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # /v1/models: the readiness probe
                body = json.dumps({"object": "list", "data": [{"id": "loopback", "object": "model"}]}).encode()
                self._send(200, body, {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                with outer._lock:
                    outer.requests.append((self.path, request))
                    outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                if outer.api_key is not None and self.headers.get("Authorization") != f"Bearer {outer.api_key}":
                    self._send(401, b'{"error": {"message": "Incorrect API key provided", "type": '
                               b'"invalid_request_error", "code": "invalid_api_key"}}', {})
                    return
                reply = outer.script(self.path, request)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                body = reply.raw_body if reply.raw_body is not None else json.dumps(_body(self.path, request, reply)).encode()
                self._send(reply.status, body, reply.headers)

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # the default backlog of 5 stalls bursts of concurrent connects
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A client that gave up (a timeout, a killed batch) resets its connection: expected here.
                import sys

                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> LoopbackLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


def _body(path: str, request: dict[str, Any], reply: Reply) -> dict[str, Any]:
    text = reply.content or ""
    if path.endswith("/completions") and "chat" not in path:
        prompt = request.get("prompt", "")
        prompt_tokens = len(words(prompt)) if reply.prompt_tokens is None else reply.prompt_tokens
        completion_tokens = len(words(text)) if reply.completion_tokens is None else reply.completion_tokens
        return {
            "id": "cmpl-loopback", "object": "text_completion", "created": 0, "model": request.get("model", "loopback"),
            "choices": [{"index": 0, "text": (prompt if request.get("echo") else "") + text, "finish_reason": "stop",
                         "logprobs": reply.logprobs}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
    prompt_text = " ".join(str(m.get("content", "")) for m in request.get("messages", []))
    prompt_tokens = len(words(prompt_text)) if reply.prompt_tokens is None else reply.prompt_tokens
    completion_tokens = len(words(text)) if reply.completion_tokens is None else reply.completion_tokens
    return {
        "id": "chatcmpl-loopback", "object": "chat.completion", "created": 0, "model": request.get("model", "loopback"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                     "finish_reason": "stop", "logprobs": reply.logprobs}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def _bench_script(latency: float) -> Script:
    def reply(path: str, request: dict[str, Any]) -> Reply:
        if path.endswith("/chat/completions"):
            if '"answers"' in request["messages"][0]["content"]:
                n = request["messages"][-1]["content"].count("</excerpt")
                return Reply(content=json.dumps({"answers": [1] * n}), delay_s=latency)
            return Reply(content="numbers and dates", delay_s=latency)
        return Reply(content="", delay_s=latency,
                     logprobs=echo_logprobs(request["prompt"], lambda i, t, ts: {"0": -0.1, "5": -2.3}))

    return reply


if __name__ == "__main__":
    # A server in its own process (benchmarks: the client's CPU is not shared with the server's GIL).
    import sys

    server = LoopbackLLM(_bench_script(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0))
    with server:
        print(server.base_url, flush=True)
        threading.Event().wait()
