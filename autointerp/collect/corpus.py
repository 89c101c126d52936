"""Text in, fixed-length token contexts out.

Documents are read lazily (bounded memory whatever the corpus size), checked as they are
read (invalid UTF-8, NUL bytes and empty files are errors that name the file and place),
tokenized in batches and cut into contexts of exactly `ctx_len` tokens, with the EOS
token between documents. The same corpus and tokenizer always give the same contexts.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from autointerp.errors import BadInput

DEFAULT_CORPUS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
DEFAULT_CORPUS_NAME = "Python 3.11 documentation sources (Debian python3.11-doc, PSF licence)"
SUFFIXES = (".txt", ".jsonl", ".parquet")
READ_BYTES = 1 << 20
MAX_PIECE_CHARS = 20_000  # an enormous line is tokenized in pieces this long, cut at whitespace


def default_corpus_files() -> list[Path]:
    files = sorted(DEFAULT_CORPUS_DIR.rglob("*.txt")) if DEFAULT_CORPUS_DIR.is_dir() else []
    if not files:
        raise BadInput(
            f"the default corpus is missing: no text under {DEFAULT_CORPUS_DIR}. "
            "Install it with `apt-get install python3.11-doc` (scripts/setup.sh does), "
            "or pass --dataset PATH"
        )
    return files


def corpus_files(dataset: str) -> list[Path] | None:
    """Local files behind `dataset`, or None if it names an HF dataset."""
    if dataset == "default":
        return default_corpus_files()
    path = Path(dataset)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise BadInput(f"no {'/'.join(SUFFIXES)} files in {path}")
        return files
    if path.exists():
        if path.suffix not in SUFFIXES:
            raise BadInput(f"{path}: unsupported corpus file type '{path.suffix}' (use .txt, .jsonl or .parquet)")
        return [path]
    if path.suffix in SUFFIXES or dataset.startswith((".", "/")):
        raise BadInput(f"corpus file {path} does not exist")
    return None


def _split_long(text: str) -> Iterator[str]:
    while len(text) > MAX_PIECE_CHARS:
        cut = text.rfind(" ", MAX_PIECE_CHARS // 2, MAX_PIECE_CHARS)
        cut = MAX_PIECE_CHARS if cut < 0 else cut
        yield text[:cut]
        text = text[cut:]
    if text:
        yield text


def _read_text(path: Path) -> Iterator[str]:
    """Decoded text of a file in bounded chunks; clear errors for NUL bytes and invalid UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    with path.open("rb") as fh:
        while True:
            raw = fh.read(READ_BYTES)
            final = not raw
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise BadInput(f"{path}: NUL byte at byte {offset + nul}; not a text file")
            try:
                text = decoder.decode(raw, final=final)
            except UnicodeDecodeError as exc:
                raise BadInput(f"{path}: invalid UTF-8 near byte {offset + exc.start}: {exc.reason}") from exc
            if text:
                yield text
            if final:
                return
            offset += len(raw)


Piece = str | None  # None marks a document boundary
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


def _txt_pieces(path: Path) -> Iterator[Piece]:
    """Paragraphs (blank-line separated) are documents; lines are kept, empty lines dropped."""
    pending = ""
    any_text = False
    for chunk in _read_text(path):
        pending += chunk
        *paragraphs, pending = _BLANK_LINE.split(pending)
        for para in paragraphs:
            para = "\n".join(line for line in para.splitlines() if line.strip())
            if para:
                any_text = True
                yield from _split_long(para)
                yield None
        if len(pending) > MAX_PIECE_CHARS:  # one enormous paragraph or line: flush all but the tail
            cut = pending.rfind(" ", 0, len(pending) - 1)
            if cut > 0:
                any_text = True
                yield from _split_long(pending[:cut])
                pending = pending[cut:]
    para = "\n".join(line for line in pending.splitlines() if line.strip())
    if para:
        any_text = True
        yield from _split_long(para)
        yield None
    if not any_text:
        raise BadInput(f"{path}: no text (the file is empty or only whitespace)")


def _jsonl_pieces(path: Path, text_field: str) -> Iterator[Piece]:
    buffer = ""
    line_no = 0
    any_text = False

    def one(line: str) -> Iterator[Piece]:
        nonlocal any_text
        if not line.strip():
            return
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or text_field not in record:
            raise BadInput(f"{path}:{line_no}: no '{text_field}' field (set --text-field)")
        text = record[text_field]
        if not isinstance(text, str):
            raise BadInput(f"{path}:{line_no}: '{text_field}' is not a string")
        if text.strip():
            any_text = True
            yield from _split_long(text)
            yield None

    for chunk in _read_text(path):
        buffer += chunk
        *lines, buffer = buffer.split("\n")
        for line in lines:
            line_no += 1
            yield from one(line)
    line_no += 1
    yield from one(buffer)
    if not any_text:
        raise BadInput(f"{path}: no text in any '{text_field}' field")


def _parquet_pieces(path: Path, text_field: str) -> Iterator[Piece]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for a bad file
        raise BadInput(f"{path}: not a readable parquet file ({exc})") from exc
    if text_field not in pf.schema_arrow.names:
        raise BadInput(f"{path}: no column '{text_field}' (columns: {pf.schema_arrow.names}; set --text-field)")
    any_text = False
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                if "\x00" in text:
                    raise BadInput(f"{path}: NUL character in column '{text_field}'")
                any_text = True
                yield from _split_long(text)
                yield None
    if not any_text:
        raise BadInput(f"{path}: no text in column '{text_field}'")


def _hf_pieces(name: str, text_field: str) -> Iterator[Piece]:
    try:
        import datasets
    except ImportError as exc:
        raise BadInput(
            f"'{name}' is not a local file, and HF datasets need the 'datasets' package: pip install 'autointerp[hub]'"
        ) from exc
    try:
        ds: Any = datasets.load_dataset(name, split="train", streaming=True)
    except Exception as exc:  # no network, unknown name, gated dataset...
        raise BadInput(f"cannot load HF dataset '{name}': {exc}") from exc
    for record in ds:
        text = record.get(text_field)
        if isinstance(text, str) and text.strip():
            yield from _split_long(text)
            yield None


def pieces(dataset: str, text_field: str = "text") -> Iterator[Piece]:
    """Text pieces of every document of `dataset`, in a fixed order; None after each document."""
    files = corpus_files(dataset)
    if files is None:
        yield from _hf_pieces(dataset, text_field)
        return
    for f in files:
        if f.suffix == ".jsonl":
            yield from _jsonl_pieces(f, text_field)
        elif f.suffix == ".parquet":
            yield from _parquet_pieces(f, text_field)
        else:
            yield from _txt_pieces(f)


def contexts(
    token_stream: Iterator[Piece], tokenizer: Any, ctx_len: int, max_contexts: int, batch_pieces: int = 64
) -> Iterator[np.ndarray]:
    """Contexts of exactly `ctx_len` token ids (int64) from the pieces, EOS between documents; at most max_contexts."""
    eos = tokenizer.eos_token_id
    buf: list[int] = []
    made = 0
    batch: list[Piece] = []

    def flush() -> Iterator[np.ndarray]:
        nonlocal buf, made
        texts = [p for p in batch if p is not None]
        encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else iter(())
        for p in batch:
            if p is None:
                if eos is not None and buf:
                    buf.append(eos)
            else:
                buf.extend(next(encoded))
            while len(buf) >= ctx_len and made < max_contexts:
                yield np.asarray(buf[:ctx_len], dtype=np.int64)
                buf = buf[ctx_len:]
                made += 1
        batch.clear()

    for piece in token_stream:
        batch.append(piece)
        if len(batch) >= batch_pieces:
            yield from flush()
            if made >= max_contexts:
                return
    yield from flush()
