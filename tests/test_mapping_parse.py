"""The HL7 tokenizer and escape handling (mapping.hl7.parse, mapping.hl7.escape)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import MappingError
from mapping.hl7.escape import Delimiters, unescape
from mapping.hl7.parse import Composite, parse

MSH = "MSH|^~\\&|APP|FAC|||20240101120000||ADT^A01|CTRL1|P|2.5"
D = Delimiters()


def test_escape_sequences_for_delimiters():
    assert unescape(r"a\F\b\S\c\T\d\R\e\E\f", D) == "a|b^c&d~e\\f"


def test_formatting_commands_become_line_breaks_and_spaces():
    assert unescape(r"one\.br\two", D) == "one\ntwo"
    assert unescape(r"a\.sp2\b", D) == "a\n\nb"
    assert unescape(r"a\.in3\b", D) == "a   b"
    assert unescape(r"\.br\\.br\x", D) == "\n\nx"


def test_highlighting_and_local_sequences_are_dropped():
    assert unescape(r"\H\bold\N\ text", D) == "bold text"
    assert unescape(r"a\Zlocal\b", D) == "ab"


def test_hex_sequences_decode_utf8_and_fall_back_to_latin1():
    assert unescape("caf\\XC3A9\\", D) == "café"
    assert unescape("caf\\XE9\\", D) == "café"
    assert unescape("\\X0D0A\\", D) == "\r\n"


def test_text_that_only_looks_like_an_escape_is_kept():
    text = r"(1.6-12.0) \ (8.0-22.0)Peak \ (0.9-12.0)"
    assert unescape(text, D) == text
    assert unescape("trailing \\", D) == "trailing \\"


def test_other_escape_character():
    assert unescape("a$F$b", Delimiters(escape="$")) == "a|b"


def test_segment_terminators_bom_and_blank_lines():
    body = "PID|1||123^^^HOSP^MR||DOE^JOHN"
    for text in (f"\ufeff{MSH}\r{body}\r", f"{MSH}\r\n{body}\r\n", f"  {MSH}\n\n{body}\n  "):
        message = parse(text)
        assert [s.name for s in message] == ["MSH", "PID"]
        assert message.segments[1].value(5, 2) == "JOHN"


def test_lf_inside_a_cr_terminated_message_is_data():
    message = parse(f"{MSH}\rOBX|1|TX|C||line one\nline two\r")
    assert message.segments[1].text(5) == "line one\nline two"


def test_lf_message_continuation_lines_join_the_segment_before():
    message = parse(f"{MSH}\nOBX|1|TX|C||line one\nline two")
    assert [s.name for s in message] == ["MSH", "OBX"]
    assert message.segments[1].text(5) == "line one\nline two"


def test_msh_fields_are_numbered_as_in_the_standard():
    msh = parse(MSH).msh
    assert msh.value(1) == "|"
    assert msh.raw(2) == "^~\\&"
    assert msh.value(9, 1) == "ADT"
    assert msh.value(9, 2) == "A01"
    assert msh.value(10) == "CTRL1"


def test_odd_delimiters_are_read_from_msh():
    text = (
        "MSH^~|\\&^SENDING^200M^^^20120918^^ADT~A24^2003582144^T^2.4\r"
        "PID^1^^11111~~~FOO&&0363~NI|222^^SMITH~JOHN"
    )
    message = parse(text)
    pid = message.segments[1]
    assert message.msh.value(9, 2) == "A24"
    first, second = pid.repetitions(3)
    assert (first.get(1), first.get(4, 1), first.get(4, 3), first.get(5)) == ("11111", "FOO", "0363", "NI")
    assert second.get(1) == "222"
    assert pid.value(5, 2) == "JOHN"


def test_repeated_encoding_character_is_tolerated():
    message = parse("MSH|^~\\\\&|A|B|||200603081747||ORU^R01|X|T|2.6\rPID|||45483||SMITH^SUZIE")
    assert message.delims.subcomponent == "&"
    assert message.segments[1].value(5, 1) == "SMITH"


def test_truncation_character_of_v27_is_recognised():
    message = parse("MSH|^~\\&#|A|B|||20220907||ORU^R01|X|D|2.5.1")
    assert message.delims.truncation == "#"
    assert message.delims.subcomponent == "&"


def test_components_subcomponents_and_null():
    message = parse(f'{MSH}\rPID|1||A1^^^AUTH&1.2.3&ISO^MR~""||""^JANE')
    pid = message.segments[1]
    reps = pid.repetitions(3)
    assert len(reps) == 1  # the '""' repetition is an explicit null, not a value
    assert reps[0].get(4, 2) == "1.2.3"
    assert pid.value(5, 1) == ""
    assert pid.value(5, 2) == "JANE"
    assert pid.value(99) == ""


def test_escaped_separators_do_not_split():
    message = parse(f"{MSH}\rNTE|1||a \\T\\ b \\S\\ c \\F\\ d")
    assert message.segments[1].text(3) == "a & b ^ c | d"


def test_has_content_ignores_a_bare_set_id():
    message = parse(f'{MSH}\rNK1|1\rEVN|\rPV1|1||^^|""\rZZA|VALUE\rPV1|1|I')
    assert [s.has_content() for s in message.segments[1:]] == [False, False, False, True, True]


def test_batch_envelope_around_one_message_is_dropped():
    text = f"FHS|^~\\&\rBHS|^~\\&\r{MSH}\rPID|1\rBTS|1\rFTS|1"
    assert [s.name for s in parse(text)] == ["MSH", "PID"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "does not start with MSH"),
        ("PID|1||123", "does not start with MSH"),
        ("hello world", "does not start with MSH"),
        ("MSH", "no field separator"),
        ("MSHA^~\\&|", "field separator"),
        ("MSH|^\ufffd\\&|A", r"U\+FFFD"),
        ("MSH||A|B", "encoding characters missing"),
        ("MSH|^~A&|A", "letter, digit or space"),
        (f"{MSH}\rPID|1\r{MSH}\rPID|2", "more than one MSH"),
    ],
)
def test_malformed_input_is_a_mapping_error_with_a_reason(text, reason):
    with pytest.raises(MappingError, match=reason):
        parse(text)


# -- the tokenizer's fast paths read exactly as the general one ----------------------------------


def _general(raw: str, d: Delimiters) -> Composite:
    """A repetition split the general way: every component a tuple of subcomponent leaves."""

    def leaf(text: str) -> str:
        text = unescape(text, d).strip()
        return "" if text == '""' else text

    return Composite(tuple(tuple(leaf(s) for s in c.split(d.subcomponent)) for c in raw.split(d.component)))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='ab ^&\\"E.\u3000', max_size=14))
def test_a_repetition_reads_the_same_through_every_path(raw: str) -> None:
    segment = parse(f"{MSH}\rOBX|1|ST|{raw}").segments[1]
    fast, general = segment._composite(raw), _general(raw, D)
    for component in range(-3, 7):
        for subcomponent in range(-2, 4):
            assert fast.get(component, subcomponent) == general.get(component, subcomponent)
    assert fast.heads(5) == [general.get(n) for n in range(1, 6)]
    assert fast.empty == general.empty
    assert fast.joined() == general.joined()
    assert segment.value(3) == segment.first(3).get(1)
    assert segment.text(3) == (segment.texts(3)[0] if segment.texts(3) else "")


def test_no_null_in_a_segment_without_the_null_marker() -> None:
    message = parse(f'{MSH}\rPID|1||X^^^H^MR|""|A\rPV1|1|I')
    pid, pv1 = message.segments[1], message.segments[2]
    assert pid.may_hold_null() and pid.is_null(4)
    assert not pv1.may_hold_null() and not any(pv1.is_null(n) for n in range(10))
