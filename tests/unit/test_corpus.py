"""Corpus readers: every format, and bad files with clear errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autointerp.collect import corpus
from autointerp.errors import AutointerpError
from tests.helpers import make_tokenizer


def _text(pieces):
    return "".join(p if p is not None else "|" for p in pieces)


def test_txt_paragraphs_are_documents_and_empty_lines_are_dropped(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("first line\n\n\n\nsecond\n   \nthird\n")
    assert _text(corpus.pieces(str(f))) == "first line|second|third|"


def test_enormous_line_is_read_in_bounded_pieces(tmp_path):
    f = tmp_path / "big.txt"
    words = " ".join(f"w{i}" for i in range(300_000))  # ~2 MB on one line
    f.write_text(words)
    ps = [p for p in corpus.pieces(str(f)) if p is not None]
    assert max(len(p) for p in ps) <= corpus.MAX_PIECE_CHARS
    assert "".join(ps) == words


@pytest.mark.parametrize("content, message", [
    (b"", "no text"),
    (b"\n\n   \n", "no text"),
    (b"good text\n\xff\xfe bad", "invalid UTF-8 near byte 10"),
    (b"some text\x00more", "NUL byte at byte 9"),
])
def test_bad_txt_files(tmp_path, content, message):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(AutointerpError, match=message):
        list(corpus.pieces(str(f)))


def test_jsonl_and_its_errors(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two", "x": 1}) + "\n")
    assert _text(corpus.pieces(str(f))) == "one|two|"
    f.write_text(json.dumps({"text": "one"}) + "\n{oops\n")
    with pytest.raises(AutointerpError, match=r"a.jsonl:2: not valid JSON"):
        list(corpus.pieces(str(f)))
    f.write_text(json.dumps({"body": "one"}) + "\n")
    with pytest.raises(AutointerpError, match="no 'text' field"):
        list(corpus.pieces(str(f)))
    assert _text(corpus.pieces(str(f), text_field="body")) == "one|"


def test_parquet(tmp_path):
    f = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["alpha", None, "beta"]}), f)
    assert _text(corpus.pieces(str(f))) == "alpha|beta|"
    with pytest.raises(AutointerpError, match="no column 'body'"):
        list(corpus.pieces(str(f), text_field="body"))


def test_directory_and_missing_paths(tmp_path):
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.txt").write_text("ay")
    (tmp_path / "ignored.bin").write_bytes(b"\x00")
    assert _text(corpus.pieces(str(tmp_path))) == "ay|bee|"
    with pytest.raises(AutointerpError, match="does not exist"):
        list(corpus.pieces(str(tmp_path / "missing.txt")))
    with pytest.raises(AutointerpError, match="unsupported"):
        (tmp_path / "x.csv").write_text("a")
        list(corpus.pieces(str(tmp_path / "x.csv")))


def test_contexts_have_exact_length_and_eos_between_documents(tmp_path):
    tok = make_tokenizer()
    f = tmp_path / "c.txt"
    f.write_text("The cat sat on the mat.\n\nThe dog ran to the park.\n")
    ctxs = list(corpus.contexts(corpus.pieces(str(f)), tok, 4, 100))
    assert ctxs and all(len(c) == 4 for c in ctxs)
    flat = [t for c in ctxs for t in c]
    first = tok("The cat sat on the mat.", add_special_tokens=False)["input_ids"]
    assert flat[: len(first)] == first and flat[len(first)] == tok.eos_token_id
    assert len(list(corpus.contexts(corpus.pieces(str(f)), tok, 4, 2))) == 2
