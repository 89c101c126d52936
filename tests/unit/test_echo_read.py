"""Echo replies read from their bytes give exactly what the reader gave before the lean echo path (issue 20):
the same predictions bit for bit, the same failures with the same messages, and the same convention read
first next time, for ordinary and odd bodies (tests/echo_bodies.py; tests/data/echo_read.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autointerp.llm import bodies
from tests import echo_bodies

EXPECTED = Path(__file__).parent.parent / "data" / "echo_read.json"
CASES = echo_bodies.cases()
# How a body becomes the object the parsers read: the live client's for completions (each choice's
# logprobs an EchoLogprobs whose entries are decoded when read), and the generic one (a reply from a Batch
# API file, and what the lean decoder leaves to it).
DECODERS = {"loads_completions": bodies.loads_completions, "loads": bodies.loads}


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(EXPECTED.read_text())


def test_every_case_has_its_expected_outcome(expected):
    assert sorted(c.name for c in CASES) == sorted(expected)


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_body_reads_as_before(case, decoder, expected):
    assert echo_bodies.outcome(case, DECODERS[decoder]) == expected[case.name]


def test_ordinary_bodies_are_read_lean_and_odd_ones_as_before():
    """The cases a model's server sends are decoded with their entries left undecoded; a body msgspec
    would read otherwise than orjson or the stdlib (NaN, a 20-digit offset, a bool index) goes to `loads`."""
    lean = {c.name for c in CASES if _lean(c.body)}
    assert {c.name for c in CASES if c.name.startswith("ordinary/")} <= lean
    for name in ["values/nan-and-infinity-literals", "text_offset/huge", "text_offset/a-bool", "choices/index-a-bool",
                 "tokens/not-strings", "keys/lone-surrogate", "aligned/a-string", "body/byte-order-mark"]:
        assert name not in lean, name


def _lean(body: bytes) -> bool:
    try:
        decoded = bodies.loads_completions(body)
    except bodies.MalformedResponse:
        return False
    choices = decoded.get("choices") if isinstance(decoded, dict) else None
    return bool(choices) and isinstance(choices, list) and isinstance(choices[0], dict) and \
        isinstance(choices[0].get("logprobs"), bodies.EchoLogprobs)
