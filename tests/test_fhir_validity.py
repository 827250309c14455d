"""What the pipeline maps without validation is valid FHIR: property tests and the shared corpus.

The pipeline calls ``map_message(..., MappingOptions(validate=False))`` (validation off the hot
path), so these tests carry the guarantee instead: every resource the mapper emits for any
well-formed message of a type it has a map for, and every resource ``deid.deidentify`` makes
of those, validates with ``core.fhir.validate_resource``.

Messages come from ``build_message``, one generator driven either by hypothesis (the property
tests, which shrink a failure to a small message) or by a seeded ``random.Random``
(``tests/test_mapping_unchanged.py``, which pins the mapper's output for a fixed sample).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.fhir import FhirValidationError, validate_resource
from deid import Vault, deidentify
from mapping import MappedMessage, MappingOptions, map_message
from tests.corpus import corpus_files, split_messages

T = TypeVar("T")

NO_VALIDATION = MappingOptions(validate=False, default_timezone="Asia/Shanghai")
VAULT = Vault(b"k" * 32)


class Picker(Protocol):
    """The only randomness the generator uses: one of ``options``, or an int in [low, high]."""

    def pick(self, options: Sequence[T]) -> T: ...

    def number(self, low: int, high: int) -> int: ...


class RandomPicker:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def pick(self, options: Sequence[T]) -> T:
        return options[self._rng.randrange(len(options))]

    def number(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)


class DrawPicker:
    """Draws through hypothesis (inside ``st.composite``), so failures shrink."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def pick(self, options: Sequence[T]) -> T:
        return options[self._draw(st.integers(0, len(options) - 1))]

    def number(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))


def chance(p: Picker, percent: int) -> bool:
    return p.number(1, 100) <= percent


# -- values -------------------------------------------------------------------------------------

# Escaped delimiters, hex (ASCII and UTF-8), highlighting, FT formatting, charset switches.
ESCAPES = (
    "\\F\\",
    "\\S\\",
    "\\T\\",
    "\\R\\",
    "\\E\\",
    "\\X41\\",
    "\\XE4BDA0\\",
    "\\H\\",
    "\\N\\",
    "\\.br\\",
    "\\.sp2\\",
    "\\.in+4\\",
    "\\Zab\\",
    "\\C2842\\",
    "\\XE38080\\",  # U+3000 ideographic space
    "\\XC2A0\\",  # no-break space
    "\\X0C\\",
    "\\X07\\",
)
# Clinical words; identifying values (names, ids, phones, addresses) come from separate lists,
# because the leak check fails closed on a name that is also a word of a code's display.
WORDS = (
    "血红蛋白",
    "肝功能",
    "café",
    "Ünïcode",
    "x",
    "42",
    "3.5",
    "0",
    "a b",
    "NEG",
    "see note",
    "é",
    "trace",
    "Δ",
    "\u3000",
    "\u3000结果\u3000",
    "\xa0",
)
NAMES = ("Zhang", "Wei", "O'Brien", "Anne-Marie", "王小明", "Quimby", "Harriet")
PUNCTUATION = (" ", " ", "-", ".", ",", "/", "#", "(", ")", ":", "@", "'", "*", "  ")


def token(p: Picker, names: bool = True) -> str:
    kind = p.number(1 if names else 2, 20)
    if kind == 1:
        return f" {p.pick(NAMES)} "  # a name in free text, as a word of its own: scrubbed
    if kind <= 12:
        return p.pick(WORDS)
    if kind <= 16:
        return p.pick(PUNCTUATION)
    return p.pick(ESCAPES)


def text(p: Picker, most: int = 4) -> str:
    """Free text (scrubbed by de-identification): may name someone."""
    return "".join(token(p) for _ in range(p.number(1, most)))


def label(p: Picker, most: int = 3) -> str:
    """A display or unit text: no names (a name there is no leak the scrubber is meant for)."""
    return "".join(token(p, names=False) for _ in range(p.number(1, most)))


def word(p: Picker) -> str:
    return p.pick(WORDS)


def code(p: Picker, known: Sequence[str]) -> str:
    """A code of a table the mapper knows, sometimes one it does not (or lower case, or junk)."""
    kind = p.number(1, 10)
    if kind <= 7:
        return p.pick(known)
    if kind == 8:
        return p.pick(known).lower()
    return p.pick(("ZZ", "?", "1", "X Y", word(p)))


def dtm(p: Picker) -> str:
    year = p.pick(("1899", "1932", "1980", "2000", "2024", "2026"))
    shapes = (
        year,
        year + "07",
        year + "0229",
        year + "1231",
        year + "03051015",
        year + "0305101530",
        year + "0305101530.1234",
        year + "0305101530+0800",
        year + "03050000-0500",
        year + "0305101530.5+0000",
        year + "0000",
        year + "1300",
        year + "0230",
        year + "0305" + "2599",
        "2024-03-05",
        "20240305101530+2500",
        "0000",
        "T1",
    )
    return p.pick(shapes)


def number(p: Picker) -> str:
    return p.pick(
        (
            "13.5",
            "-2",
            "+4",
            ".5",
            "7.",
            "120",
            "0",
            "<0.5",
            ">= 10",
            "=3",
            "1,5",
            "abc",
            "1e5",
            "00",
            "99999999999",
            "-0.0",
            "1" * 40,
            "9" * 5000,
        )
    )


def components(*parts: str) -> str:
    return "^".join(parts).rstrip("^")


def maybe(p: Picker, value: Callable[[], str], percent: int = 60) -> str:
    return value() if chance(p, percent) else ""


def hd(p: Picker) -> str:
    kind = p.number(1, 6)
    if kind == 1:
        return ""
    if kind == 2:
        return "&2.16.840.1.113883.19.5&ISO"
    if kind == 3:
        return "HOSP&urn:uuid:6b7c1c2e-3d7f-4c44-9b1a-2d0a5f6e7a8b&UUID"
    if kind == 4:
        return p.pick(("&http://example.org/ids&URI", "&http://example.org/my ids&URI", "&not a uri&URI"))
    return p.pick(("HOSP", "NATIONAL", "医院", "A B", "LAB"))


def cx(p: Picker) -> str:
    identifier = p.pick(("MRN-4711", "990011", "X1", "张-1", "A B 7", "M\\T\\1", "12345678"))
    return components(
        identifier,
        "",
        "",
        hd(p),
        code(p, ("MR", "NI", "PI", "VN", "NNCHN", "SS")),
        "",
        maybe(p, lambda: dtm(p), 20),
        maybe(p, lambda: dtm(p), 20),
    )


def ei(p: Picker) -> str:
    return components(p.pick(("PL-1", "FL-9", "ACC 77", "订单1", "X")), *hd(p).split("&"))


def eip(p: Picker) -> str:
    return "^".join(
        "&".join((p.pick(("S-1", "S 2", "标本")), p.pick(("LAB", "")), "", "")).rstrip("&") for _ in range(2)
    )


def xpn(p: Picker) -> str:
    family = p.pick(("ZHANG", "O'Brien", "王", "Van der Berg&Van der&Berg", "", "Smith\\S\\Jones", *NAMES))
    return components(
        family,
        maybe(p, lambda: p.pick(NAMES), 80),
        maybe(p, lambda: p.pick(NAMES), 30),
        maybe(p, lambda: "JR", 10),
        maybe(p, lambda: "DR", 20),
        maybe(p, lambda: "MD", 10),
        maybe(p, lambda: code(p, ("L", "D", "M", "N", "A", "TEMP", "BAD")), 40),
        "",
        "",
        "",
        "",
        maybe(p, lambda: dtm(p), 10),
        maybe(p, lambda: dtm(p), 10),
        maybe(p, lambda: "PhD", 5),
    )


def xcn(p: Picker) -> str:
    return components(p.pick(("D123", "")), *xpn(p).split("^")[:3])


def xad(p: Picker) -> str:
    street = p.pick(("88 Garden Road&Garden Road&88", "朝阳路1号", "Apt 5", "", "1 Main St\\.br\\Rear"))
    return components(
        street,
        maybe(p, lambda: p.pick(("Building 7", "2nd floor")), 30),
        maybe(p, lambda: p.pick(("Springfield", "北京", "Zürich")), 70),
        maybe(p, lambda: p.pick(("ZJ", "IL", "")), 50),
        maybe(p, lambda: p.pick(("310000", "62704", "K1A 0B1")), 60),
        maybe(p, lambda: p.pick(("CHN", "USA")), 50),
        maybe(p, lambda: code(p, ("H", "B", "C", "BA", "BI", "O", "M", "SH")), 50),
        "",
        maybe(p, lambda: "District 9", 10),
        "",
        "",
        "",
        maybe(p, lambda: dtm(p), 10),
        maybe(p, lambda: dtm(p), 10),
    )


def xtn(p: Picker) -> str:
    kind = p.number(1, 5)
    use = maybe(p, lambda: code(p, ("PRN", "WPN", "PRS", "NET", "ORN")), 60)
    equipment = maybe(p, lambda: code(p, ("PH", "CP", "FX", "Internet", "X.400", "BP", "MD")), 60)
    if kind == 1:
        return components("(021)5550-1234", use, equipment)
    if kind == 2:
        return components("", use, "Internet", "wei@example.org")
    if kind == 3:
        return components("", use, equipment, "", "86", "571", "88776655", p.pick(("", "12")))
    if kind == 4:
        return components("", use, equipment, "", "", "", "", "", "", "", "", "+86 571 8877 6655")
    return components(p.pick(("555-0147", "+41 44 123 45 67", "7 55 01 99")), use, equipment)


UNITS = ("mg/dL", "mmol/L", "10*3/uL", "%", "mEq/L", "g/dL", "[lb_av]", "cm", "/min", "{cells}/uL", "U/L")


def cwe(
    p: Picker, codes: Sequence[str] = ("718-7", "2345-7", "GLU", "1234-5", "X 1", "  a  b "), **_: Any
) -> str:
    kind = p.number(1, 8)
    system = p.pick(("LN", "L", "SCT", "HL70078", "99LOCAL", "", "I10", "UCUM", "local system"))
    if kind == 1:
        return components("", label(p, 2))  # text only
    if kind == 2:
        return components(p.pick(codes), "", system)
    parts = [p.pick(codes), maybe(p, lambda: label(p, 3), 80), system]
    if kind >= 6:
        parts += [p.pick(codes), maybe(p, lambda: label(p, 2)), p.pick(("L", "LN", ""))]
    if kind == 8:
        parts += [p.pick(("2.68", "")), "", maybe(p, lambda: label(p, 2))]
    return components(*parts)


def units(p: Picker) -> str:
    kind = p.number(1, 4)
    if kind == 1:
        return p.pick(UNITS)
    if kind == 2:
        return components(
            p.pick(UNITS), p.pick(("milligram per deciliter", "")), p.pick(("UCUM", "MDC", "L", ""))
        )
    if kind == 3:
        return components("", p.pick(UNITS))
    return maybe(p, lambda: label(p, 2), 50)


def sn(p: Picker) -> str:
    return components(
        p.pick(("", "<", ">", "<=", ">=", "=", "<>")),
        p.pick(("1", "2.5", "", "x", "-3")),
        p.pick(("", "-", ":", "/", "+", ".")),
        p.pick(("", "10", "0", "4.5", "y")),
    )


def ed(p: Picker) -> str:
    kind = p.number(1, 5)
    subtype = p.pick(("PDF", "TEXT", "JPEG", "octet-stream", "", "x y"))
    top = p.pick(("AP", "TEXT", "IM", "Application", "", "ZZ"))
    if kind == 1:
        return components("", top, subtype, "Base64", "SGVsbG8gd29ybGQ=")
    if kind == 2:
        return components("", top, subtype, "A", text(p, 3))
    if kind == 3:
        return components("", top, subtype, "Hex", p.pick(("48656c6c6f", "4g", "")))
    if kind == 4:
        return components("", top, subtype, "Base64", "not base64!")
    return components("", top, subtype)


def rp(p: Picker) -> str:
    return components(
        p.pick(("http://pacs.example.org/img/1", "some file.pdf", "urn:oid:1.2.3", "")),
        "",
        p.pick(("IM", "AP", "TEXT", "")),
        p.pick(("JPEG", "png", "DICOM", "x y", "")),
    )


def obx_value(p: Picker, value_type: str) -> str:
    """OBX-5 for ``value_type``, sometimes repeated, sometimes not of that type at all."""
    if value_type in ("NM",):
        single = lambda: number(p)  # noqa: E731
    elif value_type in ("ST", "TX", "FT"):
        single = lambda: text(p, 6)  # noqa: E731
    elif value_type in ("CE", "CWE", "CNE", "IS"):
        single = lambda: cwe(p, ("POS", "NEG", "260385009", "A"))  # noqa: E731
    elif value_type == "SN":
        single = lambda: sn(p)  # noqa: E731
    elif value_type == "ED":
        single = lambda: ed(p)  # noqa: E731
    elif value_type == "RP":
        single = lambda: rp(p)  # noqa: E731
    elif value_type in ("DT", "DTM", "TS"):
        single = lambda: dtm(p)  # noqa: E731
    elif value_type == "TM":
        single = lambda: p.pick(("1015", "101530.25", "25", "1299", "08+0800", "x"))  # noqa: E731
    elif value_type == "NR":
        single = lambda: components(p.pick(("1", "", "a")), p.pick(("5", "", "2.5")))  # noqa: E731
    elif value_type == "DR":
        single = lambda: components(dtm(p), dtm(p))  # noqa: E731
    else:
        single = lambda: text(p, 3)  # noqa: E731
    return repeated(p, single, 20)


def repeated(p: Picker, value: Callable[[], str], percent: int = 25) -> str:
    if chance(p, percent):
        return "~".join(value() for _ in range(p.number(2, 3)))
    return value()


FieldMaker = Callable[[Picker], str]


def field(p: Picker, maker: FieldMaker, repeats: bool = False) -> str:
    """A field: mostly valued, sometimes empty or HL7's explicit null, repetitions when allowed."""
    kind = p.number(1, 20)
    if kind == 1:
        return ""
    if kind == 2:
        return '""'
    if repeats:
        return repeated(p, lambda: maker(p))
    return maker(p)


def segment(p: Picker, name: str, fields: dict[int, str], extra: bool = True) -> str:
    """``name`` with ``fields`` set; sometimes a stray field beyond them (for the report)."""
    if extra and chance(p, 15):
        fields = {**fields, max(fields, default=0) + p.number(1, 3): text(p, 2)}
    values = [""] * max(fields, default=0)
    for n, value in fields.items():
        values[n - 1] = value
    return "|".join([name, *values])


def coded(known: Sequence[str]) -> FieldMaker:
    return lambda p: code(p, known)


# -- segments ------------------------------------------------------------------------------------


def msh(p: Picker, message_type: str) -> str:
    control = p.pick(("C-1", "LAB0001", "", "控制1", "C\\F\\2"))
    fields = ["MSH", "^~\\&", p.pick(("LAB", "HIS", "")), p.pick(("HOSP", "")), "SIDECAR", "HOSP", dtm(p), ""]
    fields += [message_type, control, "P", p.pick(("2.3", "2.5.1", "2.7"))]
    charset = p.pick(("", "UNICODE UTF-8"))
    if charset:
        fields += ["", "", "", "", "", charset]
    return "|".join(fields)


def pid(p: Picker) -> str:
    return segment(
        p,
        "PID",
        {
            1: "1",
            2: maybe(p, lambda: cx(p), 10),
            3: repeated(p, lambda: cx(p)),
            4: maybe(p, lambda: cx(p), 10),
            5: field(p, xpn, repeats=True),
            6: maybe(p, lambda: xpn(p), 20),
            7: field(p, dtm),
            8: field(p, coded(("F", "M", "O", "U", "A", "N"))),
            9: maybe(p, lambda: xpn(p), 10),
            10: maybe(p, lambda: cwe(p), 20),
            11: field(p, xad, repeats=True),
            13: field(p, xtn, repeats=True),
            14: maybe(p, lambda: field(p, xtn, repeats=True), 30),
            18: maybe(p, lambda: cx(p), 20),
            19: maybe(p, lambda: "123-45-6789", 10),
            29: maybe(p, lambda: field(p, dtm), 15),
            30: maybe(p, lambda: field(p, coded(("Y", "N"))), 15),
        },
    )


def pv1(p: Picker) -> str:
    if chance(p, 5):
        return "PV1|1"
    return segment(
        p,
        "PV1",
        {
            1: "1",
            2: field(p, coded(("E", "I", "O", "P", "R", "B", "C", "N", "U"))),
            3: maybe(p, lambda: "W4^412^B^HOSP"),
            7: maybe(p, lambda: xcn(p)),
            10: maybe(p, lambda: "MED"),
            19: maybe(p, lambda: field(p, cx), 70),
            44: maybe(p, lambda: field(p, dtm), 70),
            45: maybe(p, lambda: field(p, dtm), 30),
            50: maybe(p, lambda: cx(p), 10),
        },
    )


def nk1(p: Picker) -> str:
    return segment(p, "NK1", {1: "1", 2: xpn(p), 3: "SPO^Spouse^HL70063", 4: xad(p), 5: xtn(p)})


def obx(p: Picker, set_id: int, value_types: Sequence[str] = ()) -> str:
    types = value_types or (
        "NM",
        "ST",
        "TX",
        "FT",
        "CE",
        "CWE",
        "SN",
        "ED",
        "RP",
        "DT",
        "TS",
        "TM",
        "NR",
        "DR",
        "",
    )
    value_type = p.pick(types)
    return segment(
        p,
        "OBX",
        {
            1: str(set_id),
            2: value_type,
            3: field(p, cwe),
            4: maybe(p, lambda: p.pick(("1", "a", "2")), 20),
            5: field(p, lambda q: obx_value(q, value_type)),
            6: maybe(p, lambda: units(p)),
            7: maybe(p, lambda: p.pick(("3.5-5.1", "<5", "neg", "(1 - 2)", "1 to 2", "4.0_10.0", "-1--2"))),
            8: maybe(
                p, lambda: repeated(p, lambda: code(p, ("H", "L", "N", "A", "HH", "LL", ">", "POS")), 10)
            ),
            11: field(p, coded(("F", "P", "C", "X", "N", "I", "S", "D", "W", "R", "U", "V", "O", "A", "B"))),
            14: maybe(p, lambda: field(p, dtm), 50),
            16: maybe(p, lambda: xcn(p), 10),
        },
    )


def nte(p: Picker) -> str:
    return segment(
        p, "NTE", {1: "1", 2: maybe(p, lambda: "L", 20), 3: field(p, lambda q: text(q, 6), repeats=True)}
    )


def orc(p: Picker) -> str:
    return segment(
        p,
        "ORC",
        {
            1: field(p, coded(("NW", "CA", "SC", "XO", "RE", "OK", "DC", "HD"))),
            2: maybe(p, lambda: ei(p), 70),
            3: maybe(p, lambda: ei(p), 60),
            4: maybe(p, lambda: ei(p), 20),
            5: maybe(p, lambda: code(p, ("A", "CA", "CM", "DC", "IP", "SC", "HD", "ER")), 50),
            9: maybe(p, lambda: field(p, dtm), 50),
            12: maybe(p, lambda: xcn(p), 30),
        },
    )


def obr(p: Picker, set_id: int) -> str:
    return segment(
        p,
        "OBR",
        {
            1: str(set_id),
            2: maybe(p, lambda: ei(p), 70),
            3: maybe(p, lambda: ei(p), 70),
            4: field(p, cwe),
            5: maybe(p, lambda: code(p, ("S", "A", "R", "P", "T")), 30),
            6: maybe(p, lambda: field(p, dtm), 30),
            7: maybe(p, lambda: field(p, dtm), 70),
            8: maybe(p, lambda: field(p, dtm), 30),
            11: maybe(p, lambda: code(p, ("G", "A", "L")), 20),
            16: maybe(p, lambda: xcn(p), 30),
            22: maybe(p, lambda: field(p, dtm), 50),
            25: field(p, coded(("F", "P", "C", "X", "I", "S", "R", "O", "A", "M", "N"))),
            31: maybe(p, lambda: repeated(p, lambda: cwe(p)), 20),
        },
    )


# -- messages ------------------------------------------------------------------------------------


def some(p: Picker, make: Callable[[], list[str]], low: int, high: int) -> list[str]:
    found: list[str] = []
    for _ in range(p.number(low, high)):
        found += make()
    return found


def adt(p: Picker) -> str:
    trigger = p.pick(
        ("A01", "A02", "A03", "A04", "A05", "A08", "A11", "A13", "A28", "A31", "A40", "A34", "A17")
    )
    segments = [msh(p, f"ADT^{trigger}^ADT_A01"), segment(p, "EVN", {1: trigger, 2: dtm(p)})]
    for _ in range(2 if trigger == "A17" else 1):
        segments.append(pid(p))
        segments += some(p, lambda: [nk1(p)], 0, 2)
        if trigger in ("A40", "A34"):
            segments.append(
                segment(p, "MRG", {1: repeated(p, lambda: cx(p)), 4: maybe(p, lambda: cx(p)), 7: xpn(p)})
            )
        else:
            segments.append(pv1(p))
        segments += some(p, lambda: [obx(p, 1)], 0, 2)
        segments += some(p, lambda: [segment(p, "AL1", {1: "1", 2: "DA", 3: cwe(p)})], 0, 1)
        segments += some(p, lambda: [segment(p, "DG1", {1: "1", 3: cwe(p), 6: "A"})], 0, 1)
    segments += some(p, lambda: [segment(p, "ZPI", {1: "1", 2: text(p, 2)})], 0, 1)
    return "\r".join(segments)


def oru(p: Picker) -> str:
    trigger = p.pick(("R01", "R01", "R30", "R32"))
    segments = [msh(p, f"ORU^{trigger}^ORU_R01"), pid(p)]
    if chance(p, 60):
        segments.append(pv1(p))
    for report in range(1, p.number(1, 3) + 1):
        if chance(p, 30):
            segments.append(orc(p))
        segments.append(obr(p, report))
        segments += some(p, lambda: [nte(p)], 0, 1)
        text_report = chance(p, 25)
        for n in range(1, p.number(1, 5) + 1):
            segments.append(obx(p, n, ("TX", "FT", "ST") if text_report else ()))
            segments += some(p, lambda: [nte(p)], 0, 2)
    return "\r".join(segments)


def orders(p: Picker) -> str:
    kind = p.pick(("ORM^O01^ORM_O01", "OML^O21^OML_O21"))
    segments = [msh(p, kind), pid(p), pv1(p)]
    for n in range(1, p.number(1, 3) + 1):
        if chance(p, 85):
            segments.append(orc(p))
        if chance(p, 85):
            segments.append(obr(p, n))
        segments += some(p, lambda: [nte(p)], 0, 1)
        segments += some(p, lambda: [obx(p, 1), *some(p, lambda: [nte(p)], 0, 1)], 0, 2)
    return "\r".join(segments)


def mdm(p: Picker) -> str:
    trigger = p.pick(("T01", "T02", "T04", "T06", "T08", "T11"))
    segments = [msh(p, f"MDM^{trigger}^MDM_T02"), segment(p, "EVN", {1: trigger, 2: dtm(p)}), pid(p), pv1(p)]
    if chance(p, 40):
        segments += [orc(p), obr(p, 1)]
    segments.append(
        segment(
            p,
            "TXA",
            {
                1: "1",
                2: field(p, cwe),
                3: maybe(p, lambda: code(p, ("TX", "FT", "HTML", "AP")), 60),
                4: maybe(p, lambda: dtm(p)),
                6: maybe(p, lambda: field(p, dtm)),
                12: field(p, ei),
                16: maybe(p, lambda: "report.pdf", 20),
                17: field(p, coded(("AU", "DI", "DO", "IN", "IP", "LA", "PA"))),
                19: maybe(p, lambda: code(p, ("AV", "OB", "CA", "UN")), 40),
                22: maybe(p, lambda: xcn(p), 30),
                25: maybe(p, lambda: text(p, 3), 30),
            },
        )
    )
    segments += [obx(p, n, ("TX", "FT", "ST", "ED", "ED", "NM")) for n in range(1, p.number(0, 3) + 1)]
    return "\r".join(segments)


def siu(p: Picker) -> str:
    trigger = p.pick(("S12", "S13", "S14", "S15", "S17", "S26"))
    tq = components("", "", "", maybe(p, lambda: dtm(p), 70), maybe(p, lambda: dtm(p), 40))
    segments = [
        msh(p, f"SIU^{trigger}^SIU_S12"),
        segment(
            p,
            "SCH",
            {
                1: maybe(p, lambda: ei(p), 60),
                2: maybe(p, lambda: ei(p), 60),
                6: maybe(p, lambda: cwe(p), 30),
                7: maybe(p, lambda: components("ROUTINE", "Routine", p.pick(("HL70277", "L"))), 50),
                8: maybe(p, lambda: cwe(p), 40),
                9: maybe(p, lambda: number(p), 50),
                10: maybe(p, lambda: code(p, ("MIN", "H", "S", "D", "min")), 50),
                11: tq,
                25: maybe(p, lambda: code(p, ("Booked", "Pending", "Cancelled", "Noshow", "Complete")), 50),
            },
        ),
    ]
    if chance(p, 40):
        segments.append(segment(p, "TQ1", {1: "1", 7: maybe(p, lambda: dtm(p)), 8: maybe(p, lambda: dtm(p))}))
    segments += some(p, lambda: [nte(p)], 0, 1)
    segments.append(pid(p))
    if chance(p, 50):
        segments.append(pv1(p))
    segments += some(p, lambda: [obx(p, 1)], 0, 1)
    segments.append("RGS|1")
    if chance(p, 80):
        segments.append(
            segment(
                p,
                "AIS",
                {
                    1: "1",
                    3: field(p, cwe),
                    4: maybe(p, lambda: dtm(p)),
                    7: maybe(p, lambda: number(p)),
                    8: maybe(p, lambda: code(p, ("MIN", "H"))),
                },
            )
        )
        segments += some(p, lambda: [nte(p)], 0, 1)
    segments += some(p, lambda: [segment(p, "AIP", {1: "1", 3: xcn(p)})], 0, 1)
    return "\r".join(segments)


def rxa(p: Picker) -> str:
    return segment(
        p,
        "RXA",
        {
            1: "0",
            2: "1",
            3: field(p, dtm),
            4: maybe(p, lambda: dtm(p), 40),
            5: field(p, lambda q: cwe(q, ("08", "20", "141", "998"))),
            6: maybe(p, lambda: p.pick(("0.5", "999", "1", "x")), 70),
            7: maybe(p, lambda: units(p), 50),
            15: maybe(p, lambda: "LOT-1", 40),
            16: maybe(p, lambda: dtm(p), 30),
            18: maybe(p, lambda: cwe(p), 10),
            19: maybe(p, lambda: repeated(p, lambda: cwe(p)), 15),
            20: maybe(p, lambda: code(p, ("CP", "PA", "RE", "NA")), 60),
            21: maybe(p, lambda: code(p, ("A", "D", "U")), 40),
            22: maybe(p, lambda: dtm(p), 30),
        },
    )


def rxr(p: Picker) -> str:
    return segment(p, "RXR", {1: field(p, cwe), 2: maybe(p, lambda: cwe(p), 50)})


def vxu(p: Picker) -> str:
    segments = [msh(p, "VXU^V04^VXU_V04"), pid(p)]
    segments += some(p, lambda: [nk1(p)], 0, 1)
    if chance(p, 50):
        segments.append(pv1(p))
    segments += some(p, lambda: [obx(p, 1)], 0, 1)
    for _ in range(p.number(1, 3)):
        if chance(p, 80):
            segments.append(orc(p))
        segments.append(rxa(p))
        segments += some(p, lambda: [rxr(p)], 0, 1)
        segments += some(p, lambda: [obx(p, 1), *some(p, lambda: [nte(p)], 0, 1)], 0, 2)
    return "\r".join(segments)


def generic(p: Picker) -> str:
    """A message type without a map of its own: segments the segment-driven map knows, mixed."""
    kind = p.pick(
        ("RDE^O11", "RDS^O13", "RAS^O17", "OUL^R22", "PPR^PC1", "DFT^P03", "BAR^P01", "QRY^A19", "OMP^O09")
    )
    makers: list[Callable[[], str]] = [
        lambda: pv1(p),
        lambda: orc(p),
        lambda: obr(p, 1),
        lambda: segment(
            p, "RXO", {1: cwe(p), 2: number(p), 4: units(p), 11: number(p), 12: units(p), 13: number(p)}
        ),
        lambda: segment(
            p,
            "RXE",
            {
                1: "^^^20240305",
                2: cwe(p),
                3: number(p),
                5: units(p),
                10: number(p),
                11: units(p),
                12: number(p),
            },
        ),
        lambda: segment(p, "RXD", {1: "1", 2: cwe(p), 3: dtm(p), 4: number(p), 5: units(p)}),
        lambda: rxa(p),
        lambda: rxr(p),
        lambda: obx(p, 1),
        lambda: nte(p),
        lambda: segment(
            p,
            "SPM",
            {
                1: "1",
                2: maybe(p, lambda: eip(p)),
                4: maybe(p, lambda: cwe(p)),
                7: maybe(p, lambda: cwe(p), 30),
                8: maybe(p, lambda: cwe(p), 30),
                17: maybe(p, lambda: components(dtm(p), maybe(p, lambda: dtm(p)))),
                18: maybe(p, lambda: dtm(p)),
                24: maybe(p, lambda: repeated(p, lambda: cwe(p)), 20),
            },
        ),
        lambda: segment(
            p,
            "PRB",
            {1: code(p, ("AD", "DE", "UC")), 2: dtm(p), 3: field(p, cwe), 16: maybe(p, lambda: dtm(p))},
        ),
        lambda: segment(p, "DG1", {1: "1", 3: field(p, cwe), 5: maybe(p, lambda: dtm(p))}),
        lambda: segment(
            p,
            "AL1",
            {
                1: "1",
                2: maybe(p, lambda: code(p, ("DA", "FA", "EA", "MA", "AA"))),
                3: field(p, cwe),
                4: maybe(p, lambda: code(p, ("SV", "MO", "MI", "U"))),
                5: maybe(p, lambda: repeated(p, lambda: text(p, 2))),
                6: maybe(p, lambda: dtm(p)),
            },
        ),
        lambda: segment(p, "PR1", {1: "1", 3: field(p, cwe), 5: maybe(p, lambda: dtm(p))}),
        lambda: segment(
            p,
            "FT1",
            {
                1: "1",
                4: components(dtm(p), maybe(p, lambda: dtm(p))),
                7: field(p, cwe),
                10: maybe(p, lambda: number(p)),
            },
        ),
        lambda: segment(p, "QRD", {1: dtm(p), 2: "R", 3: "I", 4: "Q1"}),
        lambda: segment(p, "ZXY", {1: "1", 2: text(p, 2)}),
    ]
    segments = [msh(p, kind)]
    if chance(p, 90):
        segments.append(pid(p))
    for _ in range(p.number(1, 8)):
        segments.append(p.pick(makers)())
        if chance(p, 10):
            segments.append(pid(p))
    return "\r".join(segments)


MESSAGE_KINDS: dict[str, Callable[[Picker], str]] = {
    "ADT": adt,
    "ORU": oru,
    "ORM/OML": orders,
    "MDM": mdm,
    "SIU": siu,
    "VXU": vxu,
    "generic": generic,
}


# Other delimiters than the usual ones (MSH-1, MSH-2), none of which a value above contains.
_OTHER_DELIMITERS = str.maketrans({"|": "!", "^": "$", "~": "`", "\\": ";", "&": "]"})


def build_message(p: Picker, kind: str | None = None) -> str:
    """One message of ``kind`` (a key of ``MESSAGE_KINDS``; any when None): CR, CRLF or LF
    segment terminators, sometimes a trailing one, a BOM or other delimiters."""
    make = MESSAGE_KINDS[kind] if kind is not None else p.pick(list(MESSAGE_KINDS.values()))
    text_ = make(p)
    if chance(p, 10):
        text_ = text_.translate(_OTHER_DELIMITERS)
    terminator = p.pick(("\r", "\r", "\r\n", "\n"))
    text_ = text_.replace("\r", terminator)
    if chance(p, 5):
        text_ = "\ufeff" + text_
    return text_ + (terminator if chance(p, 50) else "")


@st.composite
def messages(draw: st.DrawFn, kind: str) -> str:
    return build_message(DrawPicker(draw), kind)


# -- the checks ----------------------------------------------------------------------------------


def invalid(resources: list[dict[str, Any]]) -> list[str]:
    problems = []
    for resource in resources:
        try:
            validate_resource(resource)
        except FhirValidationError as exc:
            problems.append(str(exc))
    return problems


def deidentified(mapped: MappedMessage) -> list[dict[str, Any]]:
    keys = {pid: (k.authority, k.value) for pid, k in mapped.patient_keys.items()}
    # deidentify validates what it returns too, and says so with a DeidError naming paths.
    result = deidentify(mapped.resources, keys, mapped.phi_values, VAULT)
    return [item.resource for item in result.resources]


def check_message(text_: str) -> None:
    mapped = map_message(text_, NO_VALIDATION)
    assert not invalid(mapped.resources), invalid(mapped.resources)
    assert not invalid(deidentified(mapped))


@pytest.mark.parametrize("kind", sorted(MESSAGE_KINDS))
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_every_mapped_and_deidentified_resource_is_valid_fhir(kind: str, data: st.DataObject) -> None:
    check_message(data.draw(messages(kind), label="message"))


def corpus_messages() -> list[tuple[str, str]]:
    found = []
    for path in corpus_files():
        for index, text_ in enumerate(split_messages(path.read_text(encoding="utf-8"))):
            found.append((f"{path.name}#{index + 1}", text_))
    return found


# MANIFEST: "MALFORMED on purpose" (MSH-2 damaged by a wrong decoding): no mapping at all.
_UNMAPPABLE = frozenset({"hapi__ExtendedMinLowerLayerProtocolTest_L116_ADT_A01.hl7#1"})


def test_every_corpus_message_maps_and_deidentifies_to_valid_fhir_without_validating() -> None:
    problems: list[str] = []
    checked = 0
    for label, text_ in corpus_messages():
        if label in _UNMAPPABLE:
            continue
        mapped = map_message(text_, NO_VALIDATION)
        problems += [f"{label}: {p}" for p in invalid(mapped.resources)]
        problems += [f"{label} (de-identified): {p}" for p in invalid(deidentified(mapped))]
        checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 100


# -- what the property tests found (each once an invalid resource or a failed message) ------------

_MSH = "MSH|^~\\&|APP|HOSP|SIDECAR|HOSP|20240305101500+0800||{}|C-1|P|2.5.1"
_PID = "PID|1||MRN-4711^^^HOSP^MR||ZHANG^WEI||19800215|M"


def _mapped(kind: str, *segments: str) -> MappedMessage:
    return map_message("\r".join([_MSH.format(kind), _PID, *segments]), NO_VALIDATION)


def _one(mapped: MappedMessage, resource_type: str) -> dict[str, Any]:
    (found,) = [r for r in mapped.resources if r["resourceType"] == resource_type]
    return found


def test_data_of_unknown_type_is_octet_stream_and_survives_deidentification() -> None:
    # FHIR att-1: data needs a contentType; de-identification keeps only the contentType, so
    # without one the DocumentReference lost its only content and no longer validated.
    mapped = _mapped("MDM^T02", "TXA|1|CN|||||||||||DOC-1^HOSP|||||AU", "OBX|1|ED|DOC||^AP^^A^some text")
    attachment = _one(mapped, "DocumentReference")["content"][0]["attachment"]
    assert attachment["contentType"] == "application/octet-stream"
    (document,) = [r for r in deidentified(mapped) if r["resourceType"] == "DocumentReference"]
    assert document["content"] == [{"attachment": {"contentType": "application/octet-stream"}}]


def test_refills_out_of_the_unsigned_int_range_are_left_out() -> None:
    for refills in ("-2", "99999999999"):
        mapped = _mapped("RDE^O11", "ORC|NW|PL-7^HIS", f"RXE||00072^Aspirin^NDC|100||mg|||||||{refills}")
        assert "dispenseRequest" not in _one(mapped, "MedicationRequest")
        assert not invalid(mapped.resources)


def test_a_duration_beyond_positive_int_gives_no_duration_and_no_failure() -> None:
    for amount in ("99999999999", "9" * 400):
        mapped = _mapped("SIU^S12", f"SCH|A-1^HOSP||||||||{amount}|MIN|^^^20240305100000")
        appointment = _one(mapped, "Appointment")
        assert "minutesDuration" not in appointment and "end" not in appointment
        assert not invalid(mapped.resources)


def test_a_number_with_more_digits_than_int_converts_is_text() -> None:
    mapped = _mapped("ORU^R01", "OBR|1||FL-1|CBC", "OBX|1|NM|718-7^Hb^LN||" + "9" * 5000)
    assert _one(mapped, "Observation")["valueString"] == "9" * 5000
