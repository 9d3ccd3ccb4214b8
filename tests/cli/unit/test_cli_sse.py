"""llorch's SSE decoder: the text/event-stream rules, and a round-trip property."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from orchestrator_core.sse import SseDecoder, SseEvent


def _decode(text: str) -> list[SseEvent]:
    decoder = SseDecoder()
    events = [e for line in text.splitlines() if (e := decoder.feed(line)) is not None]
    last = decoder.flush()
    return [*events, last] if last else events


def test_fields_comments_and_multiline_data():
    events = _decode(
        ": keep-alive\n\n"
        'id: 1\nevent: token\ndata: {"i": 0, "t": "Hi"}\n\n'
        "event: metrics\ndata: line one\ndata: line two\n\n"
        "id: 3\nretry: 1500\ndata:no-space\n\n"
    )
    assert events[0] == SseEvent("token", '{"i": 0, "t": "Hi"}', "1")
    assert events[0].json() == {"i": 0, "t": "Hi"}
    assert events[1] == SseEvent("metrics", "line one\nline two", None)
    assert events[1].json() == "line one\nline two"
    assert events[2] == SseEvent("message", "no-space", "3", retry_ms=1500)


def test_last_event_id_persists_but_each_event_reports_only_its_own():
    decoder = SseDecoder()
    for line in ["id: 7", "event: queued", "data: {}", ""]:
        decoder.feed(line)
    assert decoder.last_event_id == "7"
    assert decoder.feed("event: token") is None
    assert decoder.feed("data: x") is None
    event = decoder.feed("")
    assert event is not None
    assert event.id is None
    assert decoder.last_event_id == "7"


def test_an_event_cut_off_at_end_of_stream_is_flushed():
    assert _decode("event: end\ndata: {}") == [SseEvent("end", "{}", None)]
    assert _decode("") == []
    assert SseEvent("end", "").json() == {}


_names = st.sampled_from(["queued", "started", "token", "metrics", "end", "error"])
_data = st.lists(
    st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=20),
    min_size=1,
    max_size=3,
)


@given(st.lists(st.tuples(_names, _data), max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_encoded_events_decode_to_themselves(events, newline):
    text = ""
    for i, (name, lines) in enumerate(events, start=1):
        text += f"id: {i}{newline}event: {name}{newline}"
        text += "".join(f"data: {line}{newline}" for line in lines) + newline
    decoder = SseDecoder()
    got = [e for line in text.split(newline) if (e := decoder.feed(line)) is not None]
    assert got == [
        SseEvent(name, "\n".join(lines), str(i)) for i, (name, lines) in enumerate(events, 1)
    ]
