"""A loopback HTTP server that speaks the OpenAI API, with scripted answers and injected faults.

Real HTTP on 127.0.0.1 (stdlib ThreadingHTTPServer), so the `openai` client, its timeouts and our
retries are exercised for real. A script is a function from the parsed request to a `Reply`;
faults are replies too: status codes with headers (429 + Retry-After, 500), hangs, dropped
connections, malformed bodies. Every request is recorded.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


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
    cached_tokens: int | None = None  # reported as usage.prompt_tokens_details.cached_tokens when set


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


def placeholder_row(i: int, tok: str, tokens: list[str]) -> str | None:
    """The row text before placeholder token `tok` (at index i) of an echo simulation prompt, or None when
    `tok` is not a placeholder: what a scripted simulator reads to decide a prediction."""
    if not re.fullmatch(r"[^\S\n]*\tunknown", tok):
        return None
    j = i
    while j > 0 and tokens[j - 1] != "\n":
        j -= 1
    return "".join(tokens[j:i]) + tok[: tok.rindex("\t")]


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


def _reply_bytes(body: dict[str, Any]) -> bytes:
    """A reply's JSON, encoded by orjson (echo replies with top logprobs at every prompt token are large: the
    standard library's encoder made this server slower than the client it is there to measure). JSON has no
    NaN or infinity: like a real server's encoder, orjson writes null."""
    return orjson.dumps(body)


@dataclass
class BatchScript:
    """How the files and batches endpoints behave. Each request line of a batch is answered by the
    server's script, as a live request would be; then:
    - `polls`: retrieves answered in_progress (with partial counts) before the outcome shows;
    - `outcome(n)`: the n-th batch (0-based) ends 'completed', 'expired' (the second half of its
      requests in the error file as batch_expired), 'cancelled' (the second half absent) or 'failed'
      (validation failed: no files); a cancel call makes it 'cancelled' at once;
    - `fail(custom_id)`: that request goes to the error file with HTTP 500;
    - `malformed(custom_id)`: its output line is cut short (not JSON);
    - `shuffle`: results in another order than submitted (reversed);
    - `hold`: phases ('upload', 'create', 'content') whose answer waits for `release(phase)` after the
      side effect happened (the file is stored, the batch exists): a client killed there never heard."""

    polls: int = 1
    outcome: Callable[[int], str] = lambda n: "completed"
    fail: Callable[[str], bool] = lambda cid: False
    malformed: Callable[[str], bool] = lambda cid: False
    shuffle: bool = True
    hold: set[str] = field(default_factory=set)


class LoopbackLLM:
    """Start with `with LoopbackLLM(script) as llm:`; `llm.base_url` is the endpoint; `llm.requests` the log,
    `llm.headers` each request's headers, lower-cased names (same order). With `api_key`, a request whose Authorization is not
    `Bearer <api_key>` gets 401, as OpenAI answers it, and never reaches the script. With `prefix_cache`
    (a block size in the server's tokens), every answer reports as cached the longest run of whole blocks
    its prompt shares with the start of an earlier prompt, as vLLM's prefix caching does (live and batch
    requests alike)."""

    def __init__(self, script: Script, api_key: str | None = None, batch: BatchScript | None = None,
                 prefix_cache: int | None = None, list_prompts: bool = True):
        self.script = script
        self.list_prompts = list_prompts
        self.prefix_cache = prefix_cache
        self._blocks: set[int] = set()
        self._cache_lock = threading.Lock()  # its own: batch requests are answered under _lock
        self.api_key = api_key
        self.batch = batch or BatchScript()
        self.files: dict[str, tuple[str, bytes]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._results: dict[str, tuple[bytes, bytes, int, int]] = {}  # batch id -> output, errors, ok, failed
        self._polls: dict[str, int] = {}
        self.reached = {p: threading.Event() for p in ("upload", "create", "content")}
        self._release = {p: threading.Event() for p in ("upload", "create", "content")}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # /v1/models (the readiness probe), files and batches
                if "/files" in self.path or "/batches" in self.path:
                    with outer._lock:
                        outer.requests.append((self.path, {}))
                    status, body = outer._batch_get(self.path.split("?")[0])
                    self._send(status, body, {})
                    return
                body = json.dumps({"object": "list", "data": [{"id": "loopback", "object": "model"}]}).encode()
                self._send(200, body, {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if self.path.endswith("/files") or "/batches" in self.path:
                    with outer._lock:
                        outer.requests.append((self.path, {}))
                    status, body = outer._batch_post(self.path, raw, self.headers.get("Content-Type", ""))
                    self._send(status, body, {})
                    return
                request = json.loads(raw or b"{}")
                with outer._lock:
                    outer.requests.append((self.path, request))
                    outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                if outer.api_key is not None and self.headers.get("Authorization") != f"Bearer {outer.api_key}":
                    self._send(401, b'{"error": {"message": "Incorrect API key provided", "type": '
                               b'"invalid_request_error", "code": "invalid_api_key"}}', {})
                    return
                if isinstance(request.get("prompt"), list):
                    status, body, delay = outer._answer_list(self.path, request)
                    time.sleep(delay)
                    self._send(status, body, {})
                    return
                reply = outer._cached(self.path, request, outer.script(self.path, request))
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                body = reply.raw_body if reply.raw_body is not None else _reply_bytes(_body(self.path, request, reply))
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

    def _cached(self, path: str, request: dict[str, Any], reply: Reply) -> Reply:
        """The reply with the prompt's cached prefix (whole blocks seen at the start of an earlier prompt)."""
        if self.prefix_cache is None or reply.cached_tokens is not None:
            return reply
        tokens, size = words(_prompt_text(path, request)), self.prefix_cache
        cached, h, hit = 0, 0, True
        with self._cache_lock:
            for k in range(len(tokens) // size):
                h = hash((h, tuple(tokens[k * size : (k + 1) * size])))
                if hit and h in self._blocks:
                    cached += size
                else:
                    hit = False
                    self._blocks.add(h)
        return dataclasses.replace(reply, cached_tokens=cached)

    def _answer_list(self, path: str, request: dict[str, Any]) -> tuple[int, bytes, float]:
        """(status, body, delay) for a completions request with a list of prompts: each prompt answered by
        the script alone, the choices indexed in prompt order and the usage summed; the first fault among
        the answers is the whole request's answer."""
        if not self.list_prompts:
            return 400, b'{"error": {"message": "prompt must be a string", "type": "invalid_request_error"}}', 0.0
        choices, usage, delay = [], Counter[str](), 0.0
        for i, prompt in enumerate(request["prompt"]):
            one = {**request, "prompt": prompt}
            reply = self._cached(path, one, self.script(path, one))
            delay = max(delay, reply.delay_s)
            if reply.status != 200 or reply.raw_body is not None or reply.drop:
                return reply.status, reply.raw_body or b"{}", delay
            body = _body(path, one, reply)
            choices.append({**body["choices"][0], "index": i})
            usage.update({k: v for k, v in body["usage"].items() if isinstance(v, int)})
            usage["cached"] += (body["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        total: dict[str, Any] = {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        if self.prefix_cache is not None:
            total["prompt_tokens_details"] = {"cached_tokens": usage["cached"]}
        return 200, _reply_bytes({"id": "cmpl-loopback", "object": "text_completion", "created": 0,
                                  "model": request.get("model", "loopback"), "choices": choices,
                                  "usage": total}), delay

    def release(self, phase: str) -> None:
        self._release[phase].set()

    def _hold(self, phase: str) -> None:
        if phase in self.batch.hold:
            self.reached[phase].set()
            self._release[phase].wait(60)

    def _batch_post(self, path: str, raw: bytes, content_type: str) -> tuple[int, bytes]:
        if path.endswith("/files"):
            msg = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw,
                                           policy=email.policy.HTTP)
            name, content = "upload.jsonl", b""
            for part in msg.iter_parts():  # type: ignore[attr-defined]
                if part.get_param("name", header="content-disposition") == "file":
                    name, content = part.get_filename() or name, part.get_payload(decode=True) or b""
            with self._lock:
                fid = f"file-{len(self.files)}"
                self.files[fid] = (name, content)
            self._hold("upload")
            return 200, json.dumps(self._file(fid)).encode()
        if path.endswith("/batches"):
            req = json.loads(raw)
            with self._lock:
                n = len(self.batches)
                bid = f"batch_{n}"
                self.batches[bid] = {"id": bid, "object": "batch", "endpoint": req["endpoint"], "errors": None,
                                     "input_file_id": req["input_file_id"], "completion_window": "24h",
                                     "status": "validating", "output_file_id": None, "error_file_id": None,
                                     "created_at": int(time.time()), "metadata": req.get("metadata"),
                                     "request_counts": {"total": 0, "completed": 0, "failed": 0}, "n": n}
                self._polls[bid] = 0
            self._hold("create")
            return 200, json.dumps(self._public(bid)).encode()
        bid = path.split("/")[-2]
        if path.endswith("/cancel") and bid in self.batches:
            with self._lock:
                self.batches[bid]["cancel"] = True
            return 200, json.dumps(self._public(bid)).encode()
        return 404, b'{"error": {"message": "not found"}}'

    def _batch_get(self, path: str) -> tuple[int, bytes]:
        parts = path.rstrip("/").split("/")
        if path.endswith("/files"):
            return 200, json.dumps({"object": "list", "data": [self._file(f) for f in self.files],
                                    "has_more": False}).encode()
        if path.endswith("/batches"):
            return 200, json.dumps({"object": "list", "data": [self._public(b) for b in self.batches],
                                    "has_more": False}).encode()
        if path.endswith("/content") and parts[-2] in self.files:
            self._hold("content")
            return 200, self.files[parts[-2]][1]
        if parts[-1] in self.batches:
            bid = parts[-1]
            with self._lock:
                self._polls[bid] += 1
                self._advance(bid)
            return 200, json.dumps(self._public(bid)).encode()
        return 404, b'{"error": {"message": "not found"}}'

    def _file(self, fid: str) -> dict[str, Any]:
        name, content = self.files[fid]
        return {"id": fid, "object": "file", "bytes": len(content), "created_at": 0, "filename": name,
                "purpose": "batch", "status": "processed"}

    def _public(self, bid: str) -> dict[str, Any]:
        return {k: v for k, v in self.batches[bid].items() if k not in ("n", "cancel")}

    def _advance(self, bid: str) -> None:
        """Show the batch's progress, then run it and show its outcome (a cancelled one runs half)."""
        b = self.batches[bid]
        if b["status"] in ("completed", "failed", "expired", "cancelled"):
            return
        outcome = "cancelled" if b.get("cancel") else self.batch.outcome(b["n"])
        if self._polls[bid] <= self.batch.polls and not b.get("cancel"):
            n = sum(1 for x in self.files[b["input_file_id"]][1].splitlines() if x.strip())
            b["status"] = "in_progress"
            b["request_counts"].update(total=n, completed=n // 2, failed=0)
            return
        out, err, ok, failed = self._results[bid] = self._run(b)
        b["request_counts"]["total"] = ok + failed
        b["status"] = outcome
        if outcome == "failed":
            b["errors"] = {"object": "list", "data": [{"code": "invalid", "message": "scripted validation failure"}]}
            return
        b["request_counts"].update(completed=ok, failed=failed)
        for kind, content in (("output_file_id", out), ("error_file_id", err)):
            if content:
                fid = f"file-{len(self.files)}"
                self.files[fid] = (f"{bid}-{kind}.jsonl", content)
                b[kind] = fid

    def _run(self, b: dict[str, Any]) -> tuple[bytes, bytes, int, int]:
        lines = [json.loads(x) for x in self.files[b["input_file_id"]][1].splitlines() if x.strip()]
        outcome = "cancelled" if b.get("cancel") else self.batch.outcome(b["n"])
        cut = len(lines) // 2 if outcome in ("expired", "cancelled") else len(lines)
        out, err = [], []
        for i, line in enumerate(lines):
            cid = line["custom_id"]
            if i >= cut:
                if outcome == "expired":
                    err.append({"id": f"r{i}", "custom_id": cid, "response": None,
                                "error": {"code": "batch_expired", "message": "This request could not be executed "
                                          "before the completion window expired."}})
                continue
            if self.batch.fail(cid):
                err.append({"id": f"r{i}", "custom_id": cid, "error": None, "response": {
                    "status_code": 500, "request_id": f"q{i}", "body": {"error": {"message": "scripted failure"}}}})
                continue
            reply = self._cached(line["url"], line["body"], self.script(line["url"], line["body"]))
            if reply.status != 200:
                err.append({"id": f"r{i}", "custom_id": cid, "error": None, "response": {
                    "status_code": reply.status, "request_id": f"q{i}",
                    "body": json.loads(reply.raw_body or b"{}")}})
                continue
            if reply.raw_body is not None:
                try:
                    body: Any = json.loads(reply.raw_body)
                except ValueError:
                    body = reply.raw_body.decode(errors="replace")
            else:
                body = _body(line["url"], line["body"], reply)
            out.append({"id": f"r{i}", "custom_id": cid, "error": None,
                        "response": {"status_code": 200, "request_id": f"q{i}", "body": body}})
        if self.batch.shuffle:
            out.reverse()
            err.reverse()

        def encode(rows: list[dict[str, Any]]) -> bytes:
            text = b""
            for r in rows:
                line = json.dumps(r).encode()
                text += (line[: len(line) // 2] if self.batch.malformed(r["custom_id"]) else line) + b"\n"
            return text

        return encode(out), encode(err), len(out), len(err)

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


def _prompt_text(path: str, request: dict[str, Any]) -> str:
    if path.endswith("/completions") and "chat" not in path:
        return str(request.get("prompt", ""))
    return " ".join(str(m.get("content", "")) for m in request.get("messages", []))


def _usage(prompt_tokens: int, completion_tokens: int, reply: Reply) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}
    if reply.cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": min(reply.cached_tokens, prompt_tokens)}
    return usage


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
            "usage": _usage(prompt_tokens, completion_tokens, reply),
        }
    prompt_text = _prompt_text(path, request)
    prompt_tokens = len(words(prompt_text)) if reply.prompt_tokens is None else reply.prompt_tokens
    completion_tokens = len(words(text)) if reply.completion_tokens is None else reply.completion_tokens
    return {
        "id": "chatcmpl-loopback", "object": "chat.completion", "created": 0, "model": request.get("model", "loopback"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                     "finish_reason": "stop", "logprobs": reply.logprobs}],
        "usage": _usage(prompt_tokens, completion_tokens, reply),
    }


_BENCH_DIGITS = {str(d): math.log(p) for d, p in zip((0, 1, 2, 5, 3, 9, 4, 7, 6, 8),
                                                     (0.6, 0.15, 0.08, 0.05, 0.04, 0.03, 0.02, 0.01, 0.005, 0.005), strict=True)}
_BENCH_WORDS = {w: math.log(p) for w, p in zip(("\n", " the", ",", " of", ".", " and", " a", "\t", " to", " in"),
                                               (0.3, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.04, 0.03), strict=True)}


def _bench_script(latency: float) -> Script:
    def reply(path: str, request: dict[str, Any]) -> Reply:
        if path.endswith("/chat/completions"):
            if '"answers"' in request["messages"][0]["content"]:
                n = request["messages"][-1]["content"].count("</excerpt")
                return Reply(content=json.dumps({"answers": [1] * n}), delay_s=latency)
            return Reply(content="numbers and dates", delay_s=latency)
        n = int(request.get("logprobs") or 1)

        def top(i: int, t: str, ts: list[str]) -> dict[str, float]:
            # As a model answers: n entries (as many as asked) of one distribution at every token, the digits
            # where a placeholder's value is read (summing to 0.99), other text elsewhere.
            if placeholder_row(i, t, ts) is not None:
                return dict(list(_BENCH_DIGITS.items())[:n])
            return dict(list(_BENCH_WORDS.items())[:n])

        return Reply(content="", delay_s=latency, logprobs=echo_logprobs(request["prompt"], top))

    return reply


if __name__ == "__main__":
    # A server in its own process (benchmarks: the client's CPU is not shared with the server's GIL).
    import sys

    server = LoopbackLLM(_bench_script(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0))
    with server:
        print(server.base_url, flush=True)
        threading.Event().wait()
