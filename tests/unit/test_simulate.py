"""The echo simulator: its prompt, reading predictions back whatever the tokenizer and the server do,
and the in-process path's logprobs object. Real HTTP through the loopback server; no model."""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import re

import numpy as np
import pytest

from autointerp.label import echo_read, simulate
from autointerp.llm import local
from autointerp.llm.client import LLMFailure, OpenAICompatibleClient
from autointerp.records import Context
from tests.llm_server import LoopbackLLM, Reply

HOSTILE = ["\t", "\n", "\t\t", "\tunknown", "\tunknown\n", "<end>", "<start>", "\n<end>\n", "7", "0", "\t0\n", "10",
           "", " ", "  ", "\\t", "\\", "unknown", " unknown", "é", "日本語", "🙂", "e\u0301", "\ud800", "\x00", "\x0b",
           "\x85", "\u2028", "\r\n", "‹end›", "$label", "$rows", "${block}", "<<x>>", "a" * 3000, " word", "\uFFFD"]


def contexts_of(token_lists: list[list[str]]) -> list[Context]:
    return [Context(seq=i, split="holdout", kind="top", rank=i, tokens=toks, acts=[0.0] * len(toks))
            for i, toks in enumerate(token_lists)]


# ---------------------------------------------------------------- the prompt


def test_prompt_text_is_pinned():
    prompt, offsets = simulate.echo_prompt("digits", [" a", "1"])
    assert prompt == (
        "We are studying features in a language model. Each feature looks for something particular in a short "
        "text. Read the explanation of what the feature does, then predict how strongly it activates on each "
        "token.\n\n"
        'Each line is a token, a tab, and its activation from 0 to 9. Most activations are 0. An activation '
        'written "unknown" is the one to predict.\n\n'
        "Feature explanation: digits\nActivations:\n<start>\n a\tunknown\n1\tunknown\n<end>")
    assert [prompt[o - 1: o + 7] for o in offsets] == ["\tunknown"] * 2


@pytest.mark.parametrize("token", HOSTILE)
def test_every_placeholder_follows_the_only_tab_of_its_row(token):
    tokens = [token, "x", token]
    prompt, offsets = simulate.echo_prompt(f"label {token}", tokens)
    block = prompt[prompt.rindex("<start>\n") + len("<start>\n"): prompt.rindex("\n<end>")]
    rows = block.split("\n")
    assert len(rows) == 3  # no token or label can add or remove a row
    assert all(r.count("\t") == 1 and r.endswith("\tunknown") for r in rows)
    assert [prompt[o - 1: o + 7] for o in offsets] == ["\tunknown"] * 3
    assert prompt.count("<start>") == 1 and prompt.count("<end>") == 1
    prompt.encode("utf-8")  # unpaired surrogates do not reach the wire


def test_few_shot_block_shows_real_values_and_the_scored_block_only_placeholders():
    fewshot = [simulate.FewShot(["The", " year", " 1999"], [0, 2, 9], label="years"),
               ([" apples", "\t"], [5, 0])]
    prompt, offsets = simulate.echo_prompt("fruit", ["a", "7"], fewshot)
    blocks = re.findall(r"Feature explanation: ([^\n]*)\nActivations:\n<start>\n(.*?)\n<end>", prompt, re.DOTALL)
    assert [b[0] for b in blocks] == ["years", simulate.FEWSHOT_NO_LABEL, "fruit"]
    assert blocks[0][1] == "The\t0\n year\t2\n 1999\t9"
    assert blocks[1][1] == " apples\t5\n\\t\t0"
    assert blocks[2][1] == "a\tunknown\n7\tunknown"
    assert "unknown" not in (blocks[0][1] + blocks[1][1])
    # the scored block is last: every placeholder offset lies after the last <start>
    assert min(offsets) > prompt.rindex("<start>")
    with pytest.raises(ValueError, match="0-9"):
        simulate.FewShot(["a"], [10])
    with pytest.raises(ValueError, match="1 tokens, 2 values"):
        simulate.FewShot(["a"], [1, 2])


def test_the_prompt_of_a_context_does_not_depend_on_the_other_contexts():
    a, b = ["x", " y"], ["1", "2", "3"]
    assert simulate.echo_prompt("l", a) == simulate.echo_prompt("l", a)
    p_a, off_a = simulate.echo_prompt("l", a)
    p_b, off_b = simulate.echo_prompt("l", b)
    assert off_a[0] == off_b[0]  # every context starts at the same place in its own prompt


# ---------------------------------------------------------------- a scripted simulator behind real HTTP


def row_value(row_text: str) -> int:
    """The scripted simulator's belief for a row: a deterministic digit from the row's text."""
    return sum(row_text.encode()) % 10


def expected_value(v: int) -> float:
    return 0.7 * v + 0.3 * ((v + 3) % 10)


def placeholders(prompt: str) -> list[int]:
    """Where the scripted simulator finds the placeholders: right after each tab of the scored block."""
    start = prompt.rindex("<start>\n")
    return [m.end() for m in re.finditer("\t", prompt) if m.start() > start]


def tokenize(prompt: str, rng: random.Random, style: str) -> list[tuple[int, int]]:
    """Byte spans of a random tokenizer: cuts anywhere ('bytes', even inside a character, as llama.cpp's
    byte-level tokens), or at character boundaries ('chars'); around a placeholder it may cut right
    after the tab, or merge the tab, the placeholder and text before it into one token; some empty tokens.
    No token holds the first characters of two placeholders (one token has one distribution)."""
    data = prompt.encode()
    byte_at = np.concatenate([[0], np.cumsum([len(ch.encode()) for ch in prompt])]).tolist()  # char -> byte
    char_starts = set(byte_at)
    firsts = [byte_at[p] for p in placeholders(prompt)]
    cuts = {0, len(data)}
    pos = 0
    while pos < len(data):
        pos += rng.choice([1, 1, 2, 3, 5, 9])
        if pos < len(data) and (style == "bytes" or pos in char_starts):
            cuts.add(pos)
    for t in firsts:
        mode = rng.random()
        if mode < 0.4:
            cuts.add(t)  # a token starts at the placeholder
        elif mode < 0.8:  # the tab (and maybe more before it) and part of the placeholder in one token
            cuts -= set(range(t - rng.choice([1, 1, 2, 4]), t + rng.choice([1, 3, 7])))
    cuts |= {t + len(simulate.PLACEHOLDER) for t in firsts}
    spans, ordered = [], sorted(cuts)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if rng.random() < 0.05:
            spans.append((a, a))  # an empty token
        spans.append((a, b))
    return spans


def llama_offsets(data: bytes, byte_starts: list[int]) -> list[int]:
    """llama-cpp-python's text_offset: the length of the prefix decoded with partial characters ignored."""
    return [len(data[:s].decode("utf-8", "ignore")) for s in byte_starts]


def echo_object(prompt: str, rng: random.Random, style: str, shifted: bool) -> dict:
    """What a server returns: tokens and character offsets as llama-cpp-python computes them (text decoded
    ignoring partial bytes), top_logprobs in OpenAI's convention or shifted one token (the next token's
    distribution, llama-cpp-python's for models without BOS), first entry null either way."""
    data = prompt.encode()
    spans = tokenize(prompt, rng, style)
    starts = llama_offsets(data, [a for a, _ in spans])
    tokens = [data[a:b].decode("utf-8", "ignore") for a, b in spans]
    places = placeholders(prompt)
    byte_at = np.concatenate([[0], np.cumsum([len(ch.encode()) for ch in prompt])]).tolist()
    tops: list[dict | None] = []
    for (a, b), s in zip(spans, starts, strict=True):
        top: dict[str, float] = {"\t": -0.2, "the": -2.5}
        # this token holds the first character of a placeholder: its distribution is the simulator's belief
        for p in places:
            first = byte_at[p]
            if a <= first < b or (a == b == first and s == p):
                line = prompt[prompt.rindex("\n", 0, p - 1) + 1: p - 1]
                v = row_value(line)
                fragment = prompt[s:p]
                top = {fragment + str(v): math.log(0.7), fragment + str((v + 3) % 10): math.log(0.3),
                       fragment + "unknown": -0.01, "x": -4.0}
                break
        tops.append(top)
    # an empty token right at a placeholder takes the belief; the token after it is then not the first
    if shifted:
        tops = tops[1:] + [{"\n": -0.1}]
    tops[0] = None
    return {"tokens": tokens, "text_offset": starts, "top_logprobs": tops, "token_logprobs": [None] * len(tokens)}


def scripted(seed: int, delays: bool = False):
    rng = random.Random(seed)

    def script(path: str, request: dict) -> Reply:
        prompt = request["prompt"]
        style, shifted = rng.choice(["bytes", "chars"]), rng.random() < 0.5
        return Reply(content="", logprobs=echo_object(prompt, random.Random(hash(prompt) ^ seed), style, shifted),
                     delay_s=rng.random() * 0.05 if delays else 0.0)

    return script


def client(url: str) -> OpenAICompatibleClient:
    return OpenAICompatibleClient([url], None, timeout_s=10.0, max_attempts=2, max_wait_s=0.5)


async def _simulate(url: str, label: str, token_lists: list[list[str]], **kw):
    c = client(url)
    try:
        return await simulate.simulate_echo(c, "sim", label, contexts_of(token_lists), **kw)
    finally:
        await c.close()


def test_hostile_tokens_and_tokenizers_never_break_the_reading():
    """Property: whatever the context, the label, the tokenizer's cuts (inside characters, across the tab and
    the placeholder, empty tokens) and the server's logprob convention, every token gets the scripted
    simulator's expected value for its row."""
    rng = random.Random(0)
    token_lists = []
    for _ in range(40):
        n = rng.randint(1, 12)
        token_lists.append([rng.choice(HOSTILE) + rng.choice(["", "x", " 5", "é"]) for _ in range(n)])
    labels = ["nothing", "tabs\tand\nnewlines <end> 7", "\ud800 ‹start›", ""]
    with LoopbackLLM(scripted(1)) as llm:
        for label in labels:
            predicted, calls = asyncio.run(_simulate(llm.base_url, label, token_lists))
            assert len(calls) == len(token_lists) and all(c.status == "ok" for c in calls)
            for toks, pred in zip(token_lists, predicted, strict=True):
                expected = [expected_value(row_value(simulate.show(t))) for t in toks]
                assert pred == pytest.approx(expected, abs=1e-9)


def test_the_reading_kept_is_the_one_with_more_digit_probability_whichever_is_read_first():
    """read_echo keeps the shifted reading only when it finds strictly more digit probability, and stops a
    reading early once it cannot win: the kept values equal an exhaustive comparison's, whichever reading
    the previous reply made it read first. Cases: exact ties of probability with different digits (the
    reading as sent must win), and leads that change hands late (a reading behind until its last
    placeholders must still be read to the end when it can win)."""
    rng = random.Random(7)
    prompt, offsets = simulate.echo_prompt("nothing", [rng.choice(["a", " b", "7", "\t"]) for _ in range(12)])
    starts = sorted(set(range(0, len(prompt), 3)) | set(offsets))
    tokens = [prompt[x:y] for x, y in zip(starts, starts[1:] + [len(prompt)], strict=True)]
    at = [bisect.bisect_left(starts, off) for off in offsets]
    assert all(starts[i] == off for i, off in zip(at, offsets, strict=True))
    for case in range(400):
        tops: list[dict[str, float]] = [{"x": -0.1} for _ in starts]
        late = rng.randrange(len(offsets) + 1)  # from this placeholder on, the other reading leads
        for k, i in enumerate(at):
            raw = [rng.random() for _ in range(rng.randint(1, 5))]
            probs = [r / sum(raw) * rng.uniform(0.8, 0.99) for r in raw]  # a distribution's digit entries
            if case % 2:  # a tie: the same probabilities in the same order, other digits
                digits_here, digits_before = rng.sample(range(10), len(probs)), rng.sample(range(10), len(probs))
                high = low = probs
            else:
                digits_here = digits_before = rng.sample(range(10), len(probs))
                high, low = probs, [p / 9 for p in probs]
                if k >= late:
                    high, low = low, high
            tops[i] = {str(d): math.log(p) for d, p in zip(digits_here, high, strict=True)}
            tops[i - 1] = {str(d): math.log(p) for d, p in zip(digits_before, low, strict=True)}
        obj = {"tokens": tokens, "text_offset": starts, "top_logprobs": tops}
        entries = lambda indices: [tops[i] for i in indices]  # noqa: E731, B023
        tokens_at, fragments = echo_read._places(prompt, starts, offsets)
        aligned, mass = echo_read._read(entries, tokens_at, fragments, 0)
        shifted, shifted_mass = echo_read._read(entries, tokens_at, fragments, 1)
        assert aligned is not None and shifted is not None
        expected = [0.0 if math.isnan(v) else v for v in (shifted if shifted_mass > mass else aligned)]
        for first in (0, 1):
            echo_read._LAST_SHIFT = first
            values, _ = echo_read.read_echo(obj, prompt, offsets)
            assert values == expected, (case, first, mass, shifted_mass)


def test_one_request_per_context_and_predictions_in_the_given_order():
    token_lists = [[f"t{i}", str(i)] * (i + 1) for i in range(9)]
    with LoopbackLLM(scripted(2, delays=True)) as llm:
        predicted, calls = asyncio.run(_simulate(llm.base_url, "l", token_lists, parallel=3))
        prompts = [r["prompt"] for p, r in llm.requests if p.endswith("/completions")]
    assert len(prompts) == len(calls) == 9
    # each request holds exactly one context
    assert sorted(len(placeholders(p)) for p in prompts) == sorted(len(t) for t in token_lists)
    for toks, pred in zip(token_lists, predicted, strict=True):
        assert pred == pytest.approx([expected_value(row_value(t)) for t in toks])


def test_no_digit_listed_predicts_zero_and_only_an_echo_without_any_digit_fails():
    def some_digits(path: str, request: dict) -> Reply:
        obj = echo_object(request["prompt"], random.Random(0), "chars", False)
        # the first placeholder's token loses its digits
        first = placeholders(request["prompt"])[0]
        for i, s in enumerate(obj["text_offset"]):
            if s <= first and obj["top_logprobs"][i] and any(k[-1:].isdigit() for k in obj["top_logprobs"][i]):
                obj["top_logprobs"][i] = {"unknown": -0.01}
                break
        return Reply(content="", logprobs=obj)

    with LoopbackLLM(some_digits) as llm:
        (pred,), _ = asyncio.run(_simulate(llm.base_url, "l", [["a", "b"]]))
    assert pred == pytest.approx([0.0, expected_value(row_value("b"))])

    def no_digits(path: str, request: dict) -> Reply:
        obj = echo_object(request["prompt"], random.Random(0), "chars", False)
        obj["top_logprobs"] = [None] + [{"unknown": -0.01}] * (len(obj["tokens"]) - 1)
        return Reply(content="", logprobs=obj)

    with LoopbackLLM(no_digits) as llm, pytest.raises(LLMFailure, match="no digit") as err:
        asyncio.run(_simulate(llm.base_url, "l", [["a", "b"], ["c"]]))
    assert len(err.value.calls) == 2

    with LoopbackLLM(lambda p, r: Reply(content="")) as llm, \
            pytest.raises(LLMFailure, match="echo unsupported"):
        asyncio.run(_simulate(llm.base_url, "l", [["a"]]))


# ---------------------------------------------------------------- the in-process path, without the model


def byte_tokens(prompt: str, rng: random.Random) -> list[bytes]:
    data = prompt.encode()
    return [data[a:b] for a, b in tokenize(prompt, rng, "bytes")]


def test_in_process_offsets_follow_llama_cpp_for_partial_characters():
    prompt = "aé日🙂\tunknown"
    data = prompt.encode()
    toks = [data[:2], data[2:3], data[3:5], data[5:7], data[7:9], data[9:12], b"", data[12:13], data[13:]]
    offsets = local.char_offsets(data, toks)
    # llama-cpp-python: the length of the decoded prefix, partial characters ignored
    assert offsets == [len(data[:sum(len(t) for t in toks[:i])].decode("utf-8", "ignore")) for i in range(len(toks))]
    obj = local.echo_logprobs(prompt, toks, np.zeros((len(toks), 10)))
    assert "".join(obj["tokens"]) == prompt and obj["top_logprobs"][0] is None
    with pytest.raises(ValueError, match="spell"):
        local.char_offsets(data, toks[:-1])


def test_in_process_and_http_readings_agree():
    """One tokenization and one set of digit logprobs, given the in-process way (only the digit columns,
    OpenAI's convention) and the way llama-cpp-python's server gives them over HTTP (top-k of the whole
    vocabulary, each token carrying the next token's distribution, text decoded ignoring partial
    characters): the same predictions."""
    rng = random.Random(3)
    for trial in range(12):
        tokens = [rng.choice(HOSTILE) for _ in range(rng.randint(1, 8))]
        prompt, offsets = simulate.echo_prompt("label", tokens)
        data = prompt.encode()
        spans = tokenize(prompt, rng, "bytes")
        token_bytes = [data[a:b] for a, b in spans]
        # row i: the digits' logprobs after token i; where the next token holds a placeholder's first character
        # they have 5% of the probability ("unknown" has the rest), elsewhere 0.01%
        byte_at = np.concatenate([[0], np.cumsum([len(ch.encode()) for ch in prompt])]).tolist()
        firsts = [byte_at[o] for o in offsets]
        holds = [any(a <= f < b or a == b == f for f in firsts) for a, b in spans]
        mass = np.log(np.where(holds[1:] + [False], 0.05, 1e-4))
        digit_lp = np.log(np.random.default_rng(trial).dirichlet(np.ones(10), len(spans))) + mass[:, None]
        in_process = local.echo_logprobs(prompt, token_bytes, digit_lp)
        http_tops: list[dict | None] = [{"unknown": -0.06, "\n": -6.0, **{str(d): float(row[d]) for d in range(10)}}
                                        for row in digit_lp]
        http_tops[0] = None
        http = {"tokens": [b.decode("utf-8", "ignore") for b in token_bytes],
                "text_offset": llama_offsets(data, [a for a, _ in spans]), "top_logprobs": http_tops}
        with LoopbackLLM(lambda path, request, obj=http: Reply(content="", logprobs=obj)) as llm:
            c = client(llm.base_url)
            reply = asyncio.run(c.complete(role="simulator", model="m", prompt=prompt, max_tokens=1, echo=True,
                                           logprobs=20))
        assert reply.logprobs.text_offset == in_process["text_offset"]
        via_http, missing_http = echo_read.read_echo(reply.logprobs, prompt, offsets)
        direct, missing = echo_read.read_echo(in_process, prompt, offsets)
        assert via_http == pytest.approx(direct, abs=1e-9) and missing_http == missing
