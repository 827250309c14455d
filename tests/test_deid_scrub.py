import pytest

from core.errors import DeidError
from deid.scrub import Scrubber

PHI = {
    "John Smith": "NAME",
    "Ann": "NAME",
    "12345678": "ID",
    "19800312": "DATE",
    "1980": "DATE",
    "王小明": "NAME",
    "王芳": "NAME",
    "(555) 123-4567": "PHONE",
    "1 Main St": "ADDRESS",
    "j.smith@example.org": "EMAIL",
    "AB": "ID",
}


@pytest.fixture
def scrubber():
    return Scrubber(PHI)


def test_known_values_become_typed_placeholders(scrubber):
    out = scrubber.scrub("John Smith, MRN 12345678, lives at 1 Main St; mail J.Smith@example.org", 7)
    assert out == "[NAME], MRN [ID], lives at [ADDRESS]; mail [EMAIL]"


def test_name_parts_and_case_and_whitespace_variants_are_found(scrubber):
    assert scrubber.scrub("Mr SMITH and john  smith", 7) == "Mr [NAME] and [NAME]"


def test_alphabetic_values_are_word_bounded(scrubber):
    assert scrubber.scrub("Annual review with Ann.", 7) == "Annual review with [NAME]."
    assert scrubber.scrub("Johnson", 7) == "Johnson"


def test_short_values_are_skipped(scrubber):
    assert scrubber.scrub("AB positive", 7) == "AB positive"


def test_chinese_names_match_without_spaces(scrubber):
    assert scrubber.scrub("患者王小明今日入院，家属王芳陪同", 7) == "患者[NAME]今日入院,家属[NAME]陪同"


def test_reported_dates_and_recognisable_dates_are_shifted(scrubber):
    out = scrubber.scrub("DOB 19800312; admitted 2024-03-05, seen 20240306 and 2024年3月7日; 1980 cohort", 7)
    assert out == "DOB 1980-03-19; admitted 2024-03-12, seen 2024-03-13 and 2024-03-14; 1980 cohort"


def test_dates_are_not_shifted_twice(scrubber):
    assert scrubber.scrub("19800312", -3) == "1980-03-09"


def test_without_a_shift_dates_become_a_placeholder(scrubber):
    assert scrubber.scrub("DOB 19800312, seen 2024-03-05", None) == "DOB [DATE], seen [DATE]"


def test_invalid_dates_are_not_treated_as_dates(scrubber):
    assert scrubber.scrub("ratio 2024-13-45", 7) == "ratio [PHONE]"


def test_phone_shapes(scrubber):
    text = (
        "call 555.123.4567, +1 555 123 4567, (555) 123-4567, 020-87654321 or 13812345678 / +86 139 1234 5678"
    )
    out = scrubber.scrub(text, 7)
    assert out == "call [PHONE], [PHONE], [PHONE], [PHONE] or [PHONE] / [PHONE]"


def test_chinese_resident_id_and_mobile(scrubber):
    out = scrubber.scrub("身份证110101198003121234，手机13812345678。身份证11010119800312123X", 7)
    assert out == "身份证[ID],手机[PHONE]。身份证[ID]"


def test_unknown_email_addresses_are_removed(scrubber):
    assert scrubber.scrub("cc someone.else+x@hosp-a.example.cn today", 7) == "cc [EMAIL] today"


def test_clinical_numbers_stay_readable(scrubber):
    text = "Glucose 5.6 mmol/L (3.9-6.1); BP 120/80; values 3.5 7.2 1.1; pi 3.14159265; 14:30"
    assert scrubber.scrub(text, 7) == text


def test_long_digit_runs_become_ids(scrubber):
    assert scrubber.scrub("card 1234 5678 9012 3456 789", 7) == "card [ID]"


def test_reported_id_inside_a_longer_token_is_still_removed(scrubber):
    assert "12345678" not in scrubber.scrub("MRN012345678 and X12345678Y", 7)


def test_private_use_characters_in_input_cannot_forge_placeholders(scrubber):
    assert scrubber.scrub("a\U000f0000b John Smith", 7) == "ab [NAME]"


def test_unknown_kind_is_refused():
    with pytest.raises(DeidError):
        Scrubber({"x-ray tech": "ROLE"})


def test_pathological_input_is_fast(scrubber):
    import time

    start = time.monotonic()
    scrubber.scrub("12 " * 20000 + "x" + "a" * 50000 + "@", 7)
    assert time.monotonic() - start < 2
