from __future__ import annotations

import pytest

from connectors.hl7.charset import Decoded, decode_message, python_codec

NAME = "张三^李四"
HOSPITAL = "北京协和医院"


def message(name: str, encoding: str, facility: str = "HOSP") -> bytes:
    return (
        f"MSH|^~\\&|LAB|{facility}|SC|H|20240101||ADT^A01|1|P|2.5\rPID|1||99^^^H^MR||{name}||19800101|M\r"
    ).encode(encoding)


GB = message(NAME, "gb18030", HOSPITAL)
TEXT = message(NAME, "utf-8", HOSPITAL).decode()


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("ASCII", "ascii"),
        ("8859/1", "iso8859-1"),
        ("8859/2", "iso8859-2"),
        ("8859/9", "iso8859-9"),
        ("8859/15", "iso8859-15"),
        ("UNICODE UTF-8", "utf-8"),
        ("UNICODE UTF-16", "utf-16"),
        ("UNICODE UTF-32", "utf-32"),
        ("UNICODE", "utf-16"),
        ("GB 18030-2000", "gb18030"),
        ("BIG-5", "big5"),
        ("ISO IR87", "iso2022_jp"),
        ("ISO IR14", "iso2022_jp"),
        ("ISO IR159", "iso2022_jp_1"),
        ("KS X 1001", "euc_kr"),
        ("UTF-8", "utf-8"),
        ("utf8", "utf-8"),
        (" UTF_8 ", "utf-8"),
        ("GB18030", "gb18030"),
        ("GBK", "gb18030"),
        ("GB2312", "gb18030"),
        ("windows-1252", "cp1252"),
        ("iso8859-1", "iso8859-1"),  # our own output names must map back
    ],
)
def test_python_codec(name: str, codec: str) -> None:
    assert python_codec(name) == codec


@pytest.mark.parametrize("name", ["", "   ", "CNS 11643-1992", "NO SUCH SET", "base64", "rot13", "hex"])
def test_python_codec_unknown_or_not_a_charset(name: str) -> None:
    assert python_codec(name) is None


def test_gb18030_labelled_correctly() -> None:
    assert decode_message(GB, "GB 18030-2000") == Decoded(TEXT, "gb18030", repaired=False)


@pytest.mark.parametrize("label", ["", "8859/1", "UNICODE UTF-8", "ASCII", "NOT A CHARSET"])
def test_gb18030_unlabelled_or_mislabelled_is_repaired(label: str) -> None:
    assert decode_message(GB, label) == Decoded(TEXT, "gb18030", repaired=True)


def test_utf8_labelled_8859_1_is_repaired() -> None:
    raw = message("Müller^Jürgen", "utf-8")
    assert decode_message(raw, "8859/1") == Decoded(raw.decode(), "utf-8", repaired=True)


@pytest.mark.parametrize(
    "name", ["Müller^Jürgen", "Hélène^Noël", "Straße", "São^João", "Hôpital Sainte-Thérèse"]
)
def test_real_latin1_is_not_mistaken_for_gb18030(name: str) -> None:
    raw = message(name, "latin-1")
    labelled = decode_message(raw, "8859/1")
    assert (labelled.charset, labelled.repaired) == ("iso8859-1", False)
    assert name in labelled.text
    unlabelled = decode_message(raw, "")
    assert (unlabelled.charset, unlabelled.repaired) == ("iso8859-1", True)
    assert name in unlabelled.text


def test_cyrillic_single_byte_label_is_trusted() -> None:
    raw = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\rPID|1||1||" + "Иванов^Иван".encode("iso8859-5") + b"\r"
    decoded = decode_message(raw, "8859/5")
    assert (decoded.charset, decoded.repaired) == ("iso8859-5", False)
    assert "Иванов^Иван" in decoded.text


def test_ascii_default_and_bom() -> None:
    raw = b"\xef\xbb\xbfMSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\r"
    assert decode_message(raw, "") == Decoded(raw[3:].decode(), "utf-8", repaired=False)


def test_default_is_used_for_unlabelled_messages() -> None:
    raw = message("Müller", "latin-1")
    assert decode_message(raw, "", default="8859/1") == Decoded(raw.decode("latin-1"), "iso8859-1", False)


def test_wide_label_on_ascii_compatible_bytes_is_repaired() -> None:
    raw = message("Müller", "utf-8")
    assert decode_message(raw, "UNICODE UTF-16") == Decoded(raw.decode(), "utf-8", repaired=True)


def test_real_utf16_decodes_and_drops_its_bom() -> None:
    raw = TEXT.encode("utf-16")
    assert decode_message(raw, "UNICODE UTF-16") == Decoded(TEXT, "utf-16", repaired=False)


def test_undecodable_anything_falls_back_to_latin1() -> None:
    raw = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\rNTE|1||\xff\x00\xfe\x81 x\r"
    decoded = decode_message(raw, "UNICODE UTF-8")
    assert (decoded.charset, decoded.repaired) == ("iso8859-1", True)
    assert decoded.text.encode("latin-1") == raw


@pytest.mark.parametrize("label", ["", "8859/1", "UNICODE UTF-8", "GB 18030-2000", "UNICODE UTF-16"])
def test_decoding_again_with_the_returned_charset_is_stable(label: str) -> None:
    for raw in (GB, message("Müller", "latin-1"), message("Müller", "utf-8")):
        first = decode_message(raw, label)
        again = decode_message(raw, first.charset)
        assert (again.text, again.charset, again.repaired) == (first.text, first.charset, False)


@pytest.mark.parametrize("name", ["王玥", "李喆", "陈堃", "欧阳娜娜", "张三"])
def test_short_chinese_names_mislabelled_8859_1(name: str) -> None:
    raw = message(name, "gb18030")
    decoded = decode_message(raw, "8859/1")
    assert (decoded.charset, decoded.repaired) == ("gb18030", True)
    assert name in decoded.text
