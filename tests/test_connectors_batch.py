from __future__ import annotations

import pytest

from connectors.hl7.batch import split_messages
from core.errors import IngestError

M1 = [b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5", b"PID|1||1", b"PV1|1|I"]
M2 = [b"MSH|^~\\&|A|B|C|D|1||ORU^R01|2|P|2.5", b"PID|1||2", b"OBR|1", b"OBX|1|ST|x||y"]
EXPECTED = [b"".join(s + b"\r" for s in M1), b"".join(s + b"\r" for s in M2)]


def joined(segments: list[bytes], eol: bytes) -> bytes:
    return eol.join(segments) + eol


@pytest.mark.parametrize("eol", [b"\r", b"\n", b"\r\n"], ids=["cr", "lf", "crlf"])
def test_one_and_several_messages(eol: bytes) -> None:
    assert split_messages(joined(M1, eol)) == EXPECTED[:1]
    assert split_messages(joined(M1, eol) + joined(M2, eol)) == EXPECTED


def test_batch_envelope_bom_and_blank_lines() -> None:
    data = (
        b"\xef\xbb\xbfFHS|^~\\&|A|B\r\n"
        b"BHS|^~\\&|A|B\r\n"
        + joined(M1, b"\r\n")
        + b"\r\n   \r\n"
        + joined(M2, b"\r\n")
        + b"BTS|2\r\nFTS|1\r\n\x1a"
    )
    assert split_messages(data) == EXPECTED


def test_last_segment_without_terminator() -> None:
    assert split_messages(b"\r".join(M1)) == EXPECTED[:1]


def test_mllp_framed_file() -> None:
    data = b"\x0b" + joined(M1, b"\r") + b"\x1c\r\n\x0b" + joined(M2, b"\r") + b"\x1c\r"
    assert split_messages(data) == EXPECTED


def test_bom_per_concatenated_file() -> None:
    data = b"\xef\xbb\xbf" + joined(M1, b"\n") + b"\xef\xbb\xbf" + joined(M2, b"\n")
    assert split_messages(data) == EXPECTED


def test_bytes_are_untouched() -> None:
    segments = [b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5||||||8859/1", b"PID|1||1||M\xfcller "]
    assert split_messages(joined(segments, b"\n")) == [joined(segments, b"\r")]


def test_segment_named_like_msh_prefix_is_not_a_header() -> None:
    data = joined([*M1, b"MSHX|not a header"], b"\r")
    assert split_messages(data) == [joined([*M1, b"MSHX|not a header"], b"\r")]


@pytest.mark.parametrize("data", [b"", b"\r\n  \n", b"hello\nworld", b"FHS|^~\\&\rBHS|^~\\&\rBTS|0\rFTS|1"])
def test_no_msh_is_an_error(data: bytes) -> None:
    with pytest.raises(IngestError, match="no MSH segment found"):
        split_messages(data)


def test_segments_before_the_first_msh_are_an_error() -> None:
    with pytest.raises(IngestError, match="segment before the first MSH"):
        split_messages(b"PID|1\r" + joined(M1, b"\r"))
