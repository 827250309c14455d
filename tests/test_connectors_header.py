from __future__ import annotations

import pytest

from connectors.hl7.header import HeaderError, MessageHeader, peek_header
from core.errors import IngestError

MSH = (
    b"MSH|^~\\&|LAB^1.2.3^ISO|HOSP|SIDECAR|HOSP|20240101120000||ORU^R01^ORU_R01|CTRL0001|P|2.5.1"
    b"|||AL|NE||UNICODE UTF-8~GB 18030-2000"
)
BODY = b"PID|1||12345^^^HOSP^MR||DOE^JANE\rOBX|1|ST|X||value"


def test_reads_the_fields_that_matter() -> None:
    header = peek_header(MSH + b"\r" + BODY + b"\r")
    assert header == MessageHeader(
        field_separator="|",
        encoding_characters="^~\\&",
        sending_application="LAB^1.2.3^ISO",
        sending_facility="HOSP",
        receiving_application="SIDECAR",
        receiving_facility="HOSP",
        message_type="ORU^R01",
        trigger_event="R01",
        control_id="CTRL0001",
        processing_id="P",
        version="2.5.1",
        accept_ack_type="AL",
        application_ack_type="NE",
        charset="UNICODE UTF-8",
    )
    assert header.sender == "LAB^1.2.3^ISO|HOSP"


@pytest.mark.parametrize(
    "raw",
    [
        MSH + b"\r" + BODY,
        MSH + b"\n" + BODY,
        MSH + b"\r\n" + BODY,
        MSH,  # a lone MSH with no terminator
        b"\xef\xbb\xbf" + MSH + b"\r" + BODY,
        b"\r\n  \t" + MSH + b"\r" + BODY,
        b"\xef\xbb\xbf\n" + MSH + b"\r",
    ],
    ids=["cr", "lf", "crlf", "bare", "bom", "leading-whitespace", "bom-then-newline"],
)
def test_tolerates_preamble_and_terminators(raw: bytes) -> None:
    header = peek_header(raw)
    assert header.control_id == "CTRL0001"
    assert header.charset == "UNICODE UTF-8"


def test_other_delimiters() -> None:
    raw = b"MSH#$*\\@#APP$X#FAC#R#F#20240101##ADT$A01#42#T#2.3\rPID#1"
    header = peek_header(raw)
    assert header.field_separator == "#"
    assert header.encoding_characters == "$*\\@"
    assert header.message_type == "ADT^A01"  # a routing key: always "^"
    assert header.sending_application == "APP$X"
    assert header.charset == ""


def test_short_message_type_and_absent_optional_fields() -> None:
    header = peek_header(b"MSH|^~\\&|A|B|C|D|20240101||ACK|7|P|2.3\r")
    assert (header.message_type, header.trigger_event) == ("ACK", "")
    assert (header.accept_ack_type, header.application_ack_type, header.charset) == ("", "", "")


def test_header_fields_are_latin1_so_bytes_round_trip() -> None:
    raw = b"MSH|^~\\&|H\xc3\xb4pital|F\xfc|C|D|20240101||ADT^A01|1|P|2.5\r"
    header = peek_header(raw)
    assert header.sending_application.encode("latin-1") == "Hôpital".encode()
    assert header.sending_facility.encode("latin-1") == b"F\xfc"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "does not start with an MSH segment"),
        (b"hello world", "does not start with an MSH segment"),
        (b"PID|1\rMSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5", "does not start with an MSH segment"),
        (b"MSH", "does not start with an MSH segment"),
        (b"MSHA^~\\&|A", "MSH-1 (field separator) is not a valid separator"),
        (b"MSH ^~\\&", "MSH-1 (field separator) is not a valid separator"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P", "MSH has fewer than 12 fields"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1\r|P|2.5", "MSH has fewer than 12 fields"),
        (b"MSH|^~\\&|A|B|C|D|1|||1|P|2.5", "MSH-9 (message type) is empty"),
        (b"MSH|^~\\&|A|B|C|D|1||^A01|1|P|2.5", "MSH-9 (message type) is empty"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01||P|2.5", "MSH-10 (control id) is empty"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|  |P|2.5", "MSH-10 (control id) is empty"),
        ("MSH|".encode("utf-16-le"), "does not start with an MSH segment"),
    ],
)
def test_rejects_what_is_not_hl7(raw: bytes, reason: str) -> None:
    with pytest.raises(IngestError) as caught:
        peek_header(raw)
    assert isinstance(caught.value, HeaderError)
    assert str(caught.value) == reason
    assert caught.value.code == "bad-header"


def test_values_wider_than_the_inbox_columns_are_rejected() -> None:
    """PostgreSQL would refuse the row (an AE to every resend, forever); SQLite would keep a
    value no other database could hold. Within the widths is accepted."""
    longest = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|" + b"9" * 199 + b"|P|2.5"
    assert len(peek_header(longest).control_id) == 199
    with pytest.raises(HeaderError) as caught:
        peek_header(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|" + b"9" * 200 + b"|P|2.5")
    assert str(caught.value) == "MSH-10 (control id) is longer than 199 characters"
    assert caught.value.hl7_error_code == "102"
    wide = b"A" * 200 + b"|" + b"F" * 199  # MSH-3 "|" MSH-4: 400 characters
    assert peek_header(b"MSH|^~\\&|" + wide + b"|C|D|1||ADT^A01|1|P|2.5").sender == wide.decode()
    with pytest.raises(HeaderError, match="MSH-3 and MSH-4"):
        peek_header(b"MSH|^~\\&|" + wide + b"F|C|D|1||ADT^A01|1|P|2.5")


def test_rejection_reasons_carry_no_data() -> None:
    with pytest.raises(HeaderError) as caught:
        peek_header(b"MSH|^~\\&|SECRETAPP|B|C|D|1||ADT^A01||P|2.5")
    assert "SECRETAPP" not in str(caught.value)
    assert caught.value.hl7_error_code == "101"
