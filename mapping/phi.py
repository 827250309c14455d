"""Every identifying string a message carries, for scrubbing free text and checking for leaks.

Read from the segments directly (not from the FHIR output), so names of relatives and staff,
merged-away identifiers and accession numbers are caught even where no rule maps them.
Not collected, on purpose: codes (sex, class), country/state, staff and facility identifiers,
MSH-10 and other message plumbing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final

from mapping.hl7.dtm import parse_dtm
from mapping.hl7.parse import Composite, Message

NAME: Final = "NAME"
ID: Final = "ID"
DATE: Final = "DATE"
PHONE: Final = "PHONE"
ADDRESS: Final = "ADDRESS"
EMAIL: Final = "EMAIL"

MIN_LENGTH = 2
_NON_DIGIT = re.compile(r"\D+")


def _name_forms(family: str, surnames: Iterable[str], given: str, middle: str) -> Iterable[tuple[str, str]]:
    for part in (family, *surnames, given, middle):
        yield part, NAME
    if family and given:
        yield f"{given} {family}", NAME
        yield f"{family} {given}", NAME
        yield f"{family}, {given}", NAME
        if middle:
            yield f"{given} {middle} {family}", NAME


def _xpn(c: Composite) -> Iterable[tuple[str, str]]:
    # FN subcomponents 3 and 5 are the own and the partner's surname inside a compound family name.
    return _name_forms(c.get(1, 1), (c.get(1, 3), c.get(1, 5)), c.get(2), c.get(3))


def _xcn(c: Composite) -> Iterable[tuple[str, str]]:
    return _name_forms(c.get(2, 1), (c.get(2, 3), c.get(2, 5)), c.get(3), c.get(4))


def _ndl(c: Composite) -> Iterable[tuple[str, str]]:
    # NDL.1 is a CNN in subcomponents (id&family&given&middle); senders also put an XCN here.
    if c.get(1, 2) or c.get(1, 3):
        return _name_forms(c.get(1, 2), (), c.get(1, 3), c.get(1, 4))
    return _xcn(c)


def _cx(c: Composite) -> Iterable[tuple[str, str]]:
    yield c.get(1), ID


def _eip(c: Composite) -> Iterable[tuple[str, str]]:
    yield c.get(1, 1), ID
    yield c.get(2, 1), ID


def _st_id(c: Composite) -> Iterable[tuple[str, str]]:
    yield c.get(1), ID


def _date(c: Composite) -> Iterable[tuple[str, str]]:
    raw = c.get(1)
    yield raw, DATE
    parsed = parse_dtm(raw)
    if parsed is not None and parsed.day is not None:
        yield raw[:8], DATE
        yield parsed.date(), DATE


def _xad(c: Composite) -> Iterable[tuple[str, str]]:
    for part in (c.get(1, 1), c.get(1, 2), c.get(2), c.get(3), c.get(5)):
        yield part, ADDRESS


def _xtn(c: Composite) -> Iterable[tuple[str, str]]:
    for part in (c.get(4), c.get(1)):
        if "@" in part:
            yield part, EMAIL
    numbers = [c.get(1), c.get(12), c.get(7)]
    if c.get(6) and c.get(7):
        numbers.append(f"{c.get(6)} {c.get(7)}")
        numbers.append(f"({c.get(6)}){c.get(7)}")
    for number in numbers:
        if number and "@" not in number:
            yield number, PHONE
            digits = _NON_DIGIT.sub("", number)
            if digits != number:
                yield digits, PHONE
    if c.get(6) and c.get(7):
        yield _NON_DIGIT.sub("", c.get(6) + c.get(7)), PHONE


Extractor = Callable[[Composite], Iterable[tuple[str, str]]]

# segment -> reader -> fields it applies to; staff names are included, staff identifiers are not.
FIELDS: Final[dict[str, dict[Extractor, tuple[int, ...]]]] = {
    "PID": {
        _cx: (2, 3, 4, 18, 21),
        _st_id: (19, 20),
        _xpn: (5, 6, 9),
        _date: (7, 29),
        _xad: (11,),
        _xtn: (13, 14),
    },
    "PD1": {_xcn: (4,)},
    # All that tells who the relative is, since notes quote them (NK1-26 is their mother's maiden name).
    "NK1": {
        _xpn: (2, 26, 30),
        _xad: (4, 32),
        _xtn: (5, 6, 31, 40, 41),
        _date: (16,),
        _cx: (12, 33),
        _st_id: (37,),
    },
    "PV1": {_cx: (5, 19, 50), _xcn: (7, 8, 9, 17, 52), _date: (44, 45)},
    "PV2": {_xcn: (13,)},  # the referral source, a person
    "MRG": {_cx: (1, 2, 3, 4, 5, 6), _xpn: (7,)},
    "EVN": {_xcn: (5,)},
    "ORC": {_st_id: (2, 3, 4), _xcn: (10, 11, 12)},
    "OBR": {_st_id: (2, 3), _xcn: (10, 16, 28), _ndl: (32, 33, 34, 35)},
    # Responsible observer and the performing laboratory's medical director.
    "OBX": {_xcn: (16, 25)},
    # Administering provider (RXA-10), now mapped to Immunization.performer.
    "RXA": {_xcn: (10,)},
    "RXO": {_xcn: (14,)},
    "SPM": {_eip: (2,)},
    # The guarantor (GT1, no IG map: reported, never mapped) and the people around them: spouse,
    # employer, contact person, mother's maiden name; their numbers, phones, addresses and dates.
    "GT1": {
        _cx: (2, 19, 29),
        _xpn: (3, 4, 16, 42, 45),
        _xad: (5, 17),
        _xtn: (6, 7, 18, 46),
        _date: (8, 24),
        _st_id: (12, 56),
    },
    # The insured (IN1-16..19, 49: a subscriber who may not be the patient), the insurer's contact
    # person (6), the insured's group employee id (10), who verified it (30), the birth place (52).
    "IN1": {_xpn: (6, 16), _xcn: (30,), _date: (18,), _xad: (19, 44), _st_id: (36, 52), _cx: (10, 49)},
    # IN2 (no IG map): the insured's SSN, Medicare/Medicaid/military numbers and names, contact
    # persons and their phones, member and subscriber numbers.
    "IN2": {
        _st_id: (2, 6, 8, 10),
        _cx: (1, 25, 26, 61),
        _xpn: (7, 9, 22, 40, 49, 52),
        _xtn: (50, 53, 63, 64),
    },
    "ROL": {_xcn: (4,)},
    "PRT": {_xcn: (5,)},
    "DG1": {_xcn: (16,)},
    "PR1": {_xcn: (8, 11, 12)},  # anesthesiologist, surgeon, procedure practitioner
    # Document author, authenticator and transcriptionist; document numbers.
    "TXA": {_xcn: (5, 9, 10, 11, 22), _st_id: (12, 13)},
}


# The same readers as one flat list per segment name, in FIELDS' order (collect's inner loop).
_READERS: Final[dict[str, tuple[tuple[Extractor, int], ...]]] = {
    name: tuple((extract, n) for extract, numbers in readers.items() for n in numbers)
    for name, readers in FIELDS.items()
}


# Numbers of an order, specimen, document or visit: identifiers of this message's act.
ORDER_FIELDS: Final[frozenset[tuple[str, int]]] = frozenset(
    {
        ("ORC", 2),
        ("ORC", 3),
        ("ORC", 4),
        ("OBR", 2),
        ("OBR", 3),
        ("SPM", 2),
        ("TXA", 12),
        ("TXA", 13),
        ("PV1", 19),
    }
)


def collect(message: Message) -> dict[str, str]:
    """value -> kind for every identifying value of at least ``MIN_LENGTH`` characters.

    The first kind found for a value wins (a number that is both an ID and a phone stays ID).
    """
    return collect_scoped(message)[0]


def collect_scoped(message: Message) -> tuple[dict[str, str], frozenset[str]]:
    """``collect``, and the values found only in ``ORDER_FIELDS`` (see MappedMessage.order_values)."""
    found: dict[str, str] = {}
    order_only: set[str] = set()
    elsewhere: set[str] = set()
    for seg in message.segments:
        readers = _READERS.get(seg.name)
        if readers is None:
            continue
        for extract, field_no in readers:
            if not seg.raw(field_no):
                continue
            order = (seg.name, field_no) in ORDER_FIELDS
            for rep in seg.repetitions(field_no):
                for value, kind in extract(rep):
                    value = value.strip()
                    if len(value) < MIN_LENGTH:
                        continue
                    (order_only if order else elsewhere).add(value)
                    if value not in found:
                        found[value] = kind
    return found, frozenset(order_only - elsewhere)
