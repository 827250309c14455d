from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from connectors.hl7.ack import AckCode, build_ack, escape_text
from connectors.hl7.header import peek_header

INCOMING = (
    b"MSH|^~\\&|LAB^1.2.3^ISO|LABFAC|SIDECAR|HOSP|20240101120000||ORU^R01^ORU_R01|CTRL0001|T|2.3.1|||AL|NE\r"
    b"PID|1\r"
)
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=8)))


def segments(ack: bytes) -> list[list[str]]:
    assert ack.endswith(b"\r")
    return [segment.split("|") for segment in ack.decode("ascii").split("\r")[:-1]]


def test_accept_swaps_routing_and_echoes_control_id() -> None:
    ack = build_ack(peek_header(INCOMING), AckCode.AA, now=NOW)
    msh, msa = segments(ack)
    assert msh[:7] == ["MSH", "^~\\&", "SIDECAR", "HOSP", "LAB^1.2.3^ISO", "LABFAC", "20240506070809+0800"]
    assert msh[8] == "ACK^R01^ACK"
    assert len(msh[9]) == 20
    assert msh[10:] == ["T", "2.3.1"]
    assert msa == ["MSA", "AA", "CTRL0001"]


def test_ack_is_itself_valid_hl7() -> None:
    header = peek_header(build_ack(peek_header(INCOMING), AckCode.CA))
    assert (header.message_type, header.version, header.processing_id) == ("ACK^R01", "2.3.1", "T")


def test_control_ids_are_fresh() -> None:
    header = peek_header(INCOMING)
    ids = {peek_header(build_ack(header, AckCode.AA)).control_id for _ in range(1000)}
    assert len(ids) == 1000


def test_reject_carries_error_text_and_err_segment() -> None:
    ack = build_ack(peek_header(INCOMING), AckCode.AR, error="MSH-10 (control id) is empty", error_code="101")
    _, msa, err = segments(ack)
    assert msa == ["MSA", "AR", "CTRL0001", "MSH-10 (control id) is empty"]
    assert err == ["ERR", "", "", "101^MSH-10 (control id) is empty^HL70357", "E"]


def test_without_header_uses_defaults_and_empty_msa2() -> None:
    ack = build_ack(None, AckCode.AR, error="does not start with an MSH segment", now=NOW)
    msh, msa, err = segments(ack)
    assert msh[:2] == ["MSH", "^~\\&"]
    assert msh[2:6] == ["", "", "", ""]
    assert msh[8] == "ACK"
    assert msh[10:] == ["P", "2.5.1"]
    assert msa[:3] == ["MSA", "AR", ""]
    assert err[3].startswith("207^")


def test_error_text_is_escaped_and_ascii() -> None:
    ack = build_ack(None, AckCode.AE, error="a|b^c~d\\e&f\r\ng é\x1c")
    _, msa, err = segments(ack)
    assert msa[3] == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f  g ??"
    assert err[3] == f"207^{msa[3]}^HL70357"
    assert b"\x1c" not in ack and b"\x0b" not in ack


def test_escape_with_sender_delimiters() -> None:
    assert escape_text("#$*@!", "#", "$*!@") == "!F!!S!!R!!T!!E!"


def test_uses_senders_delimiters() -> None:
    incoming = b"MSH#$*\\@#APP#FAC#RA#RF#20240101##ADT$A01#42#P#2.5\r"
    msh, msa, err = (
        s.split("#")
        for s in build_ack(peek_header(incoming), AckCode.AE, error="x$y").decode().split("\r")[:-1]
    )
    assert msh[1] == "$*\\@"
    assert msh[8] == "ACK$A01$ACK"
    assert msa == ["MSA", "AE", "42", "x\\S\\y"]
    assert err[3] == "207$x\\S\\y$HL70357"


def test_unusable_encoding_characters_fall_back_to_standard_ones() -> None:
    incoming = b"MSH|^|APP|FAC|RA|RF|20240101||ADT^A01|42|P|2.5\r"
    msh = build_ack(peek_header(incoming), AckCode.AA).decode().split("\r")[0].split("|")
    assert msh[1] == "^~\\&"


def test_echoed_fields_keep_their_bytes_but_lose_control_characters() -> None:
    incoming = b"MSH|^~\\&|H\xf4pital|F\x1cX|RA|RF|20240101||ADT^A01|4\x0b2|P|2.5\r"
    ack = build_ack(peek_header(incoming), AckCode.AA)
    assert b"|H\xf4pital|FX|" in ack
    assert ack.split(b"\r")[1] == b"MSA|AA|42"


@pytest.mark.parametrize("now", [datetime(2024, 1, 2, 3, 4, 5), datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)])
def test_timestamp_always_has_an_offset(now: datetime) -> None:
    msh = build_ack(None, AckCode.AA, now=now).decode().split("|")
    assert msh[6] == "20240102030405+0000"


def test_ack_codes() -> None:
    assert [str(c) for c in AckCode] == ["AA", "AE", "AR", "CA", "CE", "CR"]
