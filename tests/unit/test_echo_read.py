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
# How a body becomes the object the parsers read: the generic decoder (chat, batch results).
DECODERS = {"loads": bodies.loads}


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(EXPECTED.read_text())


def test_every_case_has_its_expected_outcome(expected):
    assert sorted(c.name for c in CASES) == sorted(expected)


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_body_reads_as_before(case, decoder, expected):
    assert echo_bodies.outcome(case, DECODERS[decoder]) == expected[case.name]
