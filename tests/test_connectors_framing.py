from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.mllp.framing import (
    Frame,
    FrameEvent,
    FrameProblem,
    FrameReader,
    ProblemCode,
    encode_frame,
)

SB, EB, CR = b"\x0b", b"\x1c", b"\r"
MAX = 16


def frame(payload: bytes) -> bytes:
    return SB + payload + EB + CR


def problem(code: ProblemCode, nbytes: int, content: bytes = b"") -> tuple[str, int, bytes]:
    return (str(code), nbytes, content)


def summarise(events: list[FrameEvent]) -> list[object]:
    """Events without the free-text detail, for comparison."""
    return [
        ("frame", e.payload) if isinstance(e, Frame) else (str(e.code), e.nbytes, e.content) for e in events
    ]


def run(data: bytes, chunk: int | None = None) -> list[object]:
    reader = FrameReader(MAX)
    events: list[FrameEvent] = []
    if chunk is None:
        events += reader.feed(data)
    else:
        for i in range(0, len(data), chunk):
            events += reader.feed(data[i : i + chunk])
    events += reader.close()
    return summarise(events)


CASES: list[tuple[str, bytes, list[object]]] = [
    ("one frame", frame(b"MSH|a"), [("frame", b"MSH|a")]),
    ("two frames", frame(b"one") + frame(b"two"), [("frame", b"one"), ("frame", b"two")]),
    ("empty payload", frame(b""), [("frame", b"")]),
    ("exactly max", frame(b"x" * MAX), [("frame", b"x" * MAX)]),
    ("nothing", b"", []),
    (
        "newline after trailer is not junk",
        frame(b"a") + b"\r\n" + frame(b"b"),
        [("frame", b"a"), ("frame", b"b")],
    ),
    (
        "junk before start",
        b"hello" + frame(b"a"),
        [problem(ProblemCode.JUNK_BEFORE_START, 5), ("frame", b"a")],
    ),
    (
        "junk between frames counts whitespace in the run",
        frame(b"a") + b" xx\n" + frame(b"b"),
        [("frame", b"a"), problem(ProblemCode.JUNK_BEFORE_START, 4), ("frame", b"b")],
    ),
    (
        "junk at end of stream",
        frame(b"a") + b"zz",
        [("frame", b"a"), problem(ProblemCode.JUNK_BEFORE_START, 2)],
    ),
    (
        "stray end block is junk",
        EB + CR + frame(b"a"),
        [problem(ProblemCode.JUNK_BEFORE_START, 2), ("frame", b"a")],
    ),
    (
        "oversized is reported once at its end, with its head",
        frame(b"y" * (MAX + 10)) + frame(b"ok"),
        [problem(ProblemCode.OVERSIZED, MAX + 10, b"y" * MAX), ("frame", b"ok")],
    ),
    (
        "nested start abandons the partial frame",
        SB + b"partial" + frame(b"whole"),
        [problem(ProblemCode.NESTED_START, 7, b"partial"), ("frame", b"whole")],
    ),
    (
        "nested start after an oversized head keeps its own code",
        SB + b"z" * (MAX + 3) + frame(b"whole"),
        [problem(ProblemCode.NESTED_START, MAX + 3, b"z" * MAX), ("frame", b"whole")],
    ),
    (
        "bad trailer still delivers the payload",
        SB + b"a" + EB + frame(b"b"),
        [problem(ProblemCode.BAD_TRAILER, 1), ("frame", b"a"), ("frame", b"b")],
    ),
    (
        "bad trailer followed by junk",
        SB + b"a" + EB + b"q",
        [problem(ProblemCode.BAD_TRAILER, 1), ("frame", b"a"), problem(ProblemCode.JUNK_BEFORE_START, 1)],
    ),
    (
        "oversized with a bad trailer",
        SB + b"w" * (MAX + 1) + EB + b"\n",
        [problem(ProblemCode.BAD_TRAILER, 1), problem(ProblemCode.OVERSIZED, MAX + 1, b"w" * MAX)],
    ),
    ("truncated at end of stream", SB + b"abc", [problem(ProblemCode.TRUNCATED, 3, b"abc")]),
    (
        "end block then end of stream",
        SB + b"abc" + EB,
        [problem(ProblemCode.BAD_TRAILER, 1), ("frame", b"abc")],
    ),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 7], ids=lambda c: f"chunk={c}")
def test_frames_and_problems(data: bytes, expected: list[object], chunk: int | None) -> None:
    assert run(data, chunk) == expected


def test_memory_stays_bounded_while_discarding() -> None:
    reader = FrameReader(MAX)
    reader.feed(SB)
    for _ in range(1000):
        assert reader.feed(b"x" * 1000) == []
        assert len(reader._buf) <= MAX
    [event] = reader.feed(EB + CR)
    assert isinstance(event, FrameProblem)
    assert event.code is ProblemCode.OVERSIZED
    assert event.nbytes == 1_000_000
    assert len(event.content) == MAX


def test_reader_is_reusable_after_close() -> None:
    reader = FrameReader(MAX)
    reader.feed(SB + b"abc")
    reader.close()
    assert summarise(reader.feed(frame(b"new"))) == [("frame", b"new")]


def test_encode_frame() -> None:
    assert encode_frame(b"MSH|x") == b"\x0bMSH|x\x1c\r"
    for bad in (b"a\x0bb", b"a\x1cb"):
        with pytest.raises(ValueError):
            encode_frame(bad)


def test_max_frame_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FrameReader(0)


payloads = st.binary(max_size=40).map(lambda b: b.replace(SB, b"").replace(EB, b""))


@settings(max_examples=200, deadline=None)
@given(st.lists(payloads, max_size=5), st.data())
def test_round_trip_under_any_chunking(messages: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reader = FrameReader(MAX * 4)
    events: list[FrameEvent] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        events += reader.feed(stream[start:end])
    events += reader.close()
    assert events == [Frame(m) for m in messages]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.data())
def test_any_bytes_any_chunking_same_events(stream: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reader = FrameReader(MAX)
    events: list[FrameEvent] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        events += reader.feed(stream[start:end])
    events += reader.close()
    assert summarise(events) == run(stream)
    for event in events:
        if isinstance(event, Frame):
            assert len(event.payload) <= MAX
        else:
            assert len(event.content) <= MAX


def test_progress_counts_bytes_inside_frames_only() -> None:
    # The listener's idle timeout is reset by framed bytes, never by bytes between frames.
    reader = FrameReader(MAX)
    reader.feed(b"\n\r\n junk \n")
    assert (reader.in_frame, reader.framed_bytes) == (False, 0)
    reader.feed(b"\x0bMSH|")
    assert (reader.in_frame, reader.framed_bytes) == (True, 4)
    reader.feed(b"x\x1c")
    assert (reader.in_frame, reader.framed_bytes) == (True, 5)  # waiting for the CR
    reader.feed(b"\r\n\n")
    assert (reader.in_frame, reader.framed_bytes) == (False, 5)
    reader.feed(b"\x0b" + b"y" * (MAX * 3))  # discarded bytes are progress too
    assert (reader.in_frame, reader.framed_bytes) == (True, 5 + MAX * 3)
    reader.close()
    assert not reader.in_frame
