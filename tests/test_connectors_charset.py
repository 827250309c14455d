from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.hl7 import CharsetPolicy, MessageHeader, peek_header
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


# -- the intake matrix: each encoding labelled correctly, unlabelled and mislabelled -------

CHINESE_NAME = "欧阳^娜娜"
CHINESE_ADDRESS = "浙江省杭州市西湖区文三路90号"
LATIN_NAMES = ("Müller^Jürgen", "Ærøskøbing", "José")


def patient(name: str, address: str, encoding: str, label: str = "") -> bytes:
    return (
        f"MSH|^~\\&|HIS|ZJHOSP|SC|H|20260301||ADT^A01|C1|P|2.5.1|||AL|NE||{label}\r"
        f"PID|1||MRN1^^^ZJHOSP^MR||{name}||19900315|F|||{address}\r"
        f"PV1|1|I|W4^412^B||||9921^García^José\r"
    ).encode(encoding)


CHINESE = (CHINESE_NAME, CHINESE_ADDRESS)
LATIN = ("Müller^Jürgen", "Vestergade 12^^Ærøskøbing^^5970^DNK")


@pytest.mark.parametrize(
    ("text", "encoding", "label", "charset", "repaired"),
    [
        # correctly labelled
        (CHINESE, "gb18030", "GB 18030-2000", "gb18030", False),
        (CHINESE, "utf-8", "UNICODE UTF-8", "utf-8", False),
        (LATIN, "utf-8", "UNICODE UTF-8", "utf-8", False),
        (LATIN, "latin-1", "8859/1", "iso8859-1", False),
        # unlabelled, default UTF-8
        (CHINESE, "utf-8", "", "utf-8", False),
        (LATIN, "utf-8", "", "utf-8", False),
        (CHINESE, "gb18030", "", "gb18030", True),
        (LATIN, "latin-1", "", "iso8859-1", True),
        # mislabelled
        (CHINESE, "gb18030", "UNICODE UTF-8", "gb18030", True),
        (CHINESE, "gb18030", "8859/1", "gb18030", True),
        (CHINESE, "utf-8", "8859/1", "utf-8", True),
        (CHINESE, "utf-8", "GB 18030-2000", "utf-8", True),
        (LATIN, "utf-8", "8859/1", "utf-8", True),
        (LATIN, "utf-8", "GB 18030-2000", "utf-8", True),
        (LATIN, "latin-1", "UNICODE UTF-8", "iso8859-1", True),
        (LATIN, "latin-1", "GB 18030-2000", "iso8859-1", True),
    ],
)
def test_detection_matrix(
    text: tuple[str, str], encoding: str, label: str, charset: str, repaired: bool
) -> None:
    raw = patient(*text, encoding, label)
    decoded = decode_message(raw, label)
    assert (decoded.charset, decoded.repaired) == (charset, repaired)
    assert decoded.text == raw.decode(encoding)
    assert "García^José" in decoded.text


@pytest.mark.parametrize("name", LATIN_NAMES)
@pytest.mark.parametrize("label", ["UNICODE UTF-8", "GB 18030-2000", ""])
def test_single_latin1_names_are_not_read_as_gb18030(name: str, label: str) -> None:
    # "José|" is valid GB18030 ("Jos" + one character that swallowed the "|"), and
    # "Müller" too ("M" + a GBK character + "ler"): the label must not win.
    raw = message(name, "latin-1")
    raw.decode("gb18030")  # the premise: GB18030 decodes these bytes without an error
    decoded = decode_message(raw, label)
    assert (decoded.charset, decoded.repaired) == ("iso8859-1", True)
    assert name in decoded.text


@pytest.mark.parametrize("name", [*LATIN_NAMES, "Łukasz^Wójcik", "Dvořák", "Đỗ^Văn", "Nguyễn^Thị"])
def test_utf8_european_names_labelled_gb18030_are_repaired(name: str) -> None:
    raw = message(name, "utf-8")
    assert decode_message(raw, "GB 18030-2000") == Decoded(raw.decode(), "utf-8", repaired=True)


@pytest.mark.parametrize("name", ["张三", "王玥", "欧阳^娜娜", "阿卜杜拉·买买提", CHINESE_ADDRESS])
def test_utf8_chinese_labelled_gb18030_is_repaired(name: str) -> None:
    raw = message(name, "utf-8")
    raw.decode("gb18030")  # the premise: GB18030 decodes these bytes without an error
    assert decode_message(raw, "GB 18030-2000") == Decoded(raw.decode(), "utf-8", repaired=True)


def test_utf8_free_text_with_lone_accented_words_labelled_gb18030_is_repaired() -> None:
    # "à" and "É" stand alone in French and Portuguese; that must not make UTF-8 look odd.
    for note in ("fièvre à 39°C, à surveiller", "É necessário exame à tarde"):
        raw = message(note, "utf-8")
        assert decode_message(raw, "GB 18030-2000") == Decoded(raw.decode(), "utf-8", repaired=True)


# Two GB2312 characters are valid UTF-8 about 3% of the time; these are such names. Their
# UTF-8 reading is odd (Greek next to Latin, a lone Cyrillic letter, a symbol pair), so the
# GB18030 reading must win whatever the label says — and a GB18030 label must be kept.
ACCIDENTAL_UTF8 = ["胃默", "投胃", "裕笑", "女", "陆"]


@pytest.mark.parametrize("name", ACCIDENTAL_UTF8)
def test_gb18030_that_is_accidentally_valid_utf8(name: str) -> None:
    raw = message(name, "gb18030")
    raw.decode("utf-8")  # the premise: valid UTF-8
    assert decode_message(raw, "GB 18030-2000") == Decoded(raw.decode("gb18030"), "gb18030", False)
    for label in ("", "UNICODE UTF-8", "8859/1"):
        assert decode_message(raw, label) == Decoded(raw.decode("gb18030"), "gb18030", True)


@pytest.mark.parametrize(
    "text",
    [
        "Иван^Петрович",
        "Анна^Сидорова",
        "Γιώργος^Παπαδόπουλος",
        "Иван и Анна",
        "محمد^عبدالله",
        "血常规：WBC 12.3×10^9/L，体温37.8℃",
        "Đỗ^Văn",
        "37\xa0°C; 5 µmol/L ± 0,2; Lipitor®; ¥120",
    ],
)
def test_natural_utf8_stays_utf8(text: str) -> None:
    # Cyrillic, Greek and Arabic UTF-8 are all plausible GB18030 byte-wise (paired high
    # bytes that decode to CJK); a UTF-8 label, or none, must still win.
    raw = message(text, "utf-8")
    for label in ("UNICODE UTF-8", ""):
        assert decode_message(raw, label) == Decoded(raw.decode(), "utf-8", repaired=False)
    assert decode_message(raw, "8859/1") == Decoded(raw.decode(), "utf-8", repaired=True)


@pytest.mark.parametrize("name", ["王^玥", "李^喆", "陈^堃", "阿卜杜拉·买买提", "玥琪"])
def test_rare_name_characters_in_gb18030(name: str) -> None:
    # 玥 is AB 68: a lone high byte followed by "h", as Latin-1 letters are. Its Latin-1
    # reading ("«h") is no European word, so GB18030 still wins.
    raw = message(name, "gb18030")
    assert decode_message(raw, "GB 18030-2000") == Decoded(raw.decode("gb18030"), "gb18030", False)
    for label in ("", "8859/1", "UNICODE UTF-8"):
        assert decode_message(raw, label) == Decoded(raw.decode("gb18030"), "gb18030", True), label


@pytest.mark.parametrize("text", ["Größe 180 cm, Übelkeit", "Smörgåsbord; Åsa Öberg", "¿Qué? Sí, Muñoz"])
def test_latin1_with_adjacent_accented_letters_stays_latin1(text: str) -> None:
    # "öß" is a high-byte pair, which GB18030 reads as one common character.
    raw = message(text, "latin-1")
    assert decode_message(raw, "8859/1") == Decoded(raw.decode("latin-1"), "iso8859-1", False)
    assert decode_message(raw, "") == Decoded(raw.decode("latin-1"), "iso8859-1", True)


def test_unknown_label_falls_back_to_the_default_and_is_repaired() -> None:
    raw = message(NAME, "gb18030")
    expected = Decoded(raw.decode("gb18030"), "gb18030", repaired=True)
    assert decode_message(raw, "CNS 11643-1992", default="GB18030") == expected
    big5 = message("陳大文", "big5")
    assert decode_message(big5, "NO SUCH SET", default="BIG-5") == Decoded(big5.decode("big5"), "big5", True)


def test_a_known_label_that_does_not_fit_goes_to_detection_not_to_the_default() -> None:
    raw = message("Müller", "latin-1")
    decoded = decode_message(raw, "UNICODE UTF-8", default="GB18030")
    assert (decoded.charset, decoded.repaired) == ("iso8859-1", True)


def test_correctly_labelled_big5_is_kept_and_utf8_labelled_big5_is_repaired() -> None:
    big5 = message("陳大文^台北市", "big5")
    assert decode_message(big5, "BIG-5") == Decoded(big5.decode("big5"), "big5", repaired=False)
    utf8 = message("陳大文^台北市", "utf-8")
    assert decode_message(utf8, "BIG-5") == Decoded(utf8.decode(), "utf-8", repaired=True)


# -- properties ---------------------------------------------------------------------------

_FRAGMENTS = ["Müller", "欧阳", "玥", "é", "à ", "Đỗ", "Иван", "θ", "×10^9", "°C", "·", "女", "¿", "«"]
_LABELS = ["", "UNICODE UTF-8", "GB 18030-2000", "8859/1", "8859/5", "BIG-5", "UNICODE UTF-16", "GBK"]


@st.composite
def mixed_messages(draw: st.DrawFn) -> bytes:
    """Message bodies stitched from text in several encodings, plus stray bytes."""
    parts = draw(
        st.lists(
            st.one_of(
                st.tuples(st.sampled_from(_FRAGMENTS), st.sampled_from(["utf-8", "gb18030", "latin-1"])).map(
                    lambda pair: pair[0].encode(pair[1], errors="replace")
                ),
                st.sampled_from([b"^", b"|", b"~", b" ", b"abc", b"1"]),
                st.binary(max_size=3),
            ),
            max_size=8,
        )
    )
    return b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\rPID|1||1||" + b"".join(parts) + b"\r"


@settings(max_examples=400, deadline=None)
@given(mixed_messages(), st.sampled_from(_LABELS), st.sampled_from(["UTF-8", "GB18030", "8859/1"]))
def test_repaired_means_not_the_declared_charset_and_the_result_is_stable(
    raw: bytes, label: str, default: str
) -> None:
    decoded = decode_message(raw, label, default)
    declared = python_codec(label.strip() or default)
    assert declared is not None
    assert decoded.repaired == (decoded.charset != declared)
    # The worker decodes the stored bytes again with the stored charset.
    again = decode_message(raw, decoded.charset)
    assert again == Decoded(decoded.text, decoded.charset, repaired=False)


# -- per-sender default charsets ----------------------------------------------------------


def header(app: str = "HIS", facility: str = "ZJHOSP", encoding_characters: str = "^~\\&") -> MessageHeader:
    msh = f"MSH|{encoding_characters}|{app}|{facility}|SC|H|20260301||ADT^A01|C1|P|2.5.1\r"
    return peek_header(msh.encode())


def test_policy_default_is_utf8() -> None:
    assert CharsetPolicy().default_for(header()) == "UTF-8"


def test_policy_most_specific_sender_wins() -> None:
    policy = CharsetPolicy(
        default="UTF-8", by_sender={"HIS": "GB18030", "HIS|ZJHOSP": "GB 18030-2000", "LIS|ZJHOSP": "8859/1"}
    )
    assert policy.default_for(header("HIS", "ZJHOSP")) == "GB 18030-2000"
    assert policy.default_for(header("HIS", "OTHER")) == "GB18030"
    assert policy.default_for(header("HIS", "")) == "GB18030"
    assert policy.default_for(header("LIS", "ZJHOSP")) == "8859/1"
    assert policy.default_for(header("LIS", "OTHER")) == "UTF-8"  # LIS only has a facility key
    assert policy.default_for(header("RIS", "ZJHOSP")) == "UTF-8"


def test_policy_matches_the_first_component_case_insensitively() -> None:
    policy = CharsetPolicy(by_sender={"his|zjhosp": "GB18030", "LIS^2.16.840.1^ISO": "8859/1"})
    assert policy.default_for(header("HIS^1.2.156.1^ISO", "ZJHosp^1.2.156.2^ISO")) == "GB18030"
    assert policy.default_for(header("lis", "X")) == "8859/1"
    # The component separator is the sender's own (MSH-2).
    assert policy.default_for(header("HIS$1.2.156.1", "ZJHOSP$x", "$~\\&")) == "GB18030"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"default": "UTF-9"}, "UTF-9"),
        ({"by_sender": {"HIS": "GB18031"}}, "GB18031"),
        ({"by_sender": {"HIS|ZJHOSP": "base64"}}, "base64"),  # a codec, not a charset
        ({"by_sender": {"HIS": 18030}}, "18030"),
    ],
)
def test_policy_rejects_unknown_charsets_naming_them(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        CharsetPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["", " ", "|ZJHOSP", "HIS|", "HIS|ZJHOSP|X"])
def test_policy_rejects_malformed_sender_keys(key: str) -> None:
    with pytest.raises(ValueError, match="charset_by_sender key"):
        CharsetPolicy(by_sender={key: "GB18030"})


def test_policy_rejects_one_sender_named_twice_with_different_charsets() -> None:
    with pytest.raises(ValueError, match="twice"):
        CharsetPolicy(by_sender={"HIS": "GB18030", "his": "UTF-8"})
    CharsetPolicy(by_sender={"HIS": "GB18030", "his": "GBK"})  # both GB18030: fine


def test_policy_is_immutable_and_hashable() -> None:
    table = {"HIS": "GB18030"}
    policy = CharsetPolicy(by_sender=table)
    table["HIS"] = "UTF-8"
    assert policy.default_for(header()) == "GB18030"
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.default = "GB18030"  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.by_sender["HIS"] = "UTF-8"  # type: ignore[index]
    assert policy == CharsetPolicy(by_sender={"HIS": "GB18030"})
    assert hash(policy) == hash(CharsetPolicy(by_sender={"HIS": "GB18030"}))


@pytest.mark.parametrize(
    ("encoding", "charset", "repaired"),
    [("gb18030", "gb18030", False), ("utf-8", "utf-8", True), ("latin-1", "iso8859-1", True)],
)
def test_unlabelled_with_a_gb18030_sender_default(encoding: str, charset: str, repaired: bool) -> None:
    policy = CharsetPolicy(by_sender={"HIS": "GB18030"})
    raw = patient(*(LATIN if encoding == "latin-1" else CHINESE), encoding, label="")
    msh = peek_header(raw)
    decoded = decode_message(raw, msh.charset, default=policy.default_for(msh))
    assert decoded == Decoded(raw.decode(encoding), charset, repaired)


@pytest.mark.parametrize(("encoding", "label"), [("utf-8", "UNICODE UTF-8"), ("latin-1", "8859/1")])
def test_a_label_beats_the_sender_default(encoding: str, label: str) -> None:
    policy = CharsetPolicy(by_sender={"HIS": "GB18030"})
    raw = patient(*(LATIN if encoding == "latin-1" else CHINESE), encoding, label)
    msh = peek_header(raw)
    decoded = decode_message(raw, msh.charset, default=policy.default_for(msh))
    assert decoded == Decoded(raw.decode(encoding), python_codec(label) or "", repaired=False)
