"""Simulated text generation and SSE framing: pure invariants (hypothesis)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from llorch_pool.sim.tokens import VOCABULARY, StopScanner, TokenSource
from orchestrator_core.sse import SseDecoder, encode_data, encode_event

pieces = st.lists(st.text(alphabet="ab c.", min_size=0, max_size=6), max_size=30)
stops = st.lists(st.text(alphabet="ab c.", min_size=1, max_size=4), max_size=4)


@given(pieces, stops)
def test_the_scanner_emits_exactly_the_text_before_the_first_stop(
    parts: list[str], stop_list: list[str]
) -> None:
    scanner = StopScanner(stop_list)
    out: list[str] = []
    stopped = False
    for piece in parts:
        safe, stopped = scanner.feed(piece)
        out.append(safe)
        if stopped:
            break
    if not stopped:
        out.append(scanner.flush())
    full = "".join(parts)
    hits = [full.find(s) for s in stop_list if s in full]
    expected = full[: min(hits)] if hits else full
    assert "".join(out) == expected
    assert stopped == bool(hits)


@given(pieces, stops)
def test_no_emitted_prefix_ever_contains_a_stop_string(
    parts: list[str], stop_list: list[str]
) -> None:
    scanner = StopScanner(stop_list)
    sent = ""
    for piece in parts:
        safe, stopped = scanner.feed(piece)
        sent += safe
        assert not any(s in sent for s in stop_list)
        if stopped:
            break


def test_without_stop_strings_text_passes_through_at_once() -> None:
    scanner = StopScanner([])
    assert scanner.feed(" hello") == (" hello", False)
    assert scanner.flush() == ""


@given(st.text(max_size=50), st.integers(min_value=0, max_value=2**64 - 1))
def test_a_seeded_source_is_reproducible_and_uses_the_vocabulary(prompt: str, seed: int) -> None:
    a = TokenSource(prompt, seed=seed)
    b = TokenSource(prompt, seed=seed)
    first = [next(a) for _ in range(20)]
    assert first == [next(b) for _ in range(20)]
    assert all(t in VOCABULARY for t in first)


def test_greedy_decoding_is_deterministic_even_without_a_seed() -> None:
    a = [next(TokenSource("p", seed=None, temperature=0.0)) for _ in range(10)]
    b = [next(TokenSource("p", seed=None, temperature=0.0)) for _ in range(10)]
    assert a == b


def test_top_k_narrows_the_vocabulary_and_eos_ends() -> None:
    source = TokenSource("p", seed=1, top_k=3)
    assert {next(source) for _ in range(200)} <= set(VOCABULARY[:3])
    always_eos = TokenSource("p", seed=1, eos_probability=1.0)
    assert next(always_eos) is None


events = st.lists(
    st.tuples(
        st.sampled_from(["started", "token", "metrics", "end", "error"]),
        st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=3),
    ),
    max_size=8,
)


@given(events, st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=50))
def test_sse_round_trips_under_any_chunking(
    evs: list[tuple[str, dict[str, str]]], cuts: list[int]
) -> None:
    wire = b"".join(encode_event(name, data) for name, data in evs).decode()
    wire = wire.replace("\n", "\r\n") if len(cuts) % 2 else wire  # CRLF streams too
    decoder = SseDecoder()
    got = []
    pos, i = 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        got.extend(decoder.feed_text(wire[pos : pos + step]))
        pos += step
        i += 1
    got.extend(decoder.feed_text("\n"))  # a trailing CR waits for its LF
    assert [(e.event, e.json()) for e in got] == evs


def test_openai_data_frames() -> None:
    decoder = SseDecoder()
    frames = decoder.feed_text(
        (encode_data({"a": 1}) + encode_data("[DONE]") + b": comment\n\n").decode()
    )
    assert [(f.event, f.data) for f in frames] == [
        ("message", json.dumps({"a": 1}).replace(" ", "")),
        ("message", "[DONE]"),
    ]
