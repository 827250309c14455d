"""Acceptance: messages in GB18030, UTF-8 and Latin-1 — labelled, unlabelled, mislabelled —
through a real MLLP socket into the embedded sidecar.

For each, the sender is acknowledged, the inbox keeps the exact bytes sent, ``repaired``
says whether MSH-18 (or, when it is empty, the default UTF-8) was wrong, and the stored
charset decodes the stored bytes to the intact names and address. All people, addresses
and numbers are invented.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from connectors import MllpClient
from connectors.hl7 import decode_message
from core.tables import InboxEntry, InboxStatus
from mapping import map_message
from sidecar.stats import collect
from tests.deployments import Embedded, msa


def resident_id_check_digit(first_17: str) -> str:
    """GB 11643-1999 (ISO 7064 MOD 11-2) check character of a resident identity number."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return "10X98765432"[sum(int(d) * w for d, w in zip(first_17, weights, strict=True)) % 11]


# Xihu district of Hangzhou (330106), born 1990-03-15, sequence 124 (even: female, as PID-8).
RESIDENT_ID = "33010619900315124" + resident_id_check_digit("33010619900315124")
MOBILE = "15858001234"
CHINESE_FAMILY, CHINESE_GIVEN = "欧阳", "娜娜"
CHINESE_ADDRESS = "浙江省杭州市西湖区文三路90号"
LATIN_FAMILY, LATIN_GIVEN, LATIN_CITY = "Müller", "Jürgen", "Ærøskøbing"


def chinese_adt(control_id: str, label: str) -> str:
    return (
        f"MSH|^~\\&|HIS|ZJHOSP|SIDECAR|ZJHOSP|20260301081500+0800||ADT^A01^ADT_A01|{control_id}|P|2.5.1"
        f"|||AL|NE||{label}\r"
        "EVN|A01|20260301081500+0800\r"
        f"PID|1||MRN5521007^^^ZJHOSP^MR~{RESIDENT_ID}^^^CHNMPS^NNCHN||{CHINESE_FAMILY}^{CHINESE_GIVEN}"
        f"||19900315|F|||{CHINESE_ADDRESS}^^杭州市^浙江省^310012^CHN||{MOBILE}^PRN^CP\r"
        "PV1|1|I|W4^412^B^ZJHOSP||||9921^Zhang^Wei|||MED|||||||||VN55012^^^ZJHOSP^VN\r"
    )


def latin_adt(control_id: str, label: str) -> str:
    return (
        f"MSH|^~\\&|HIS|DKHOSP|SIDECAR|DKHOSP|20260301081500+0100||ADT^A01^ADT_A01|{control_id}|P|2.5.1"
        f"|||AL|NE||{label}\r"
        "EVN|A01|20260301081500+0100\r"
        f"PID|1||MRN8830412^^^DKHOSP^MR||{LATIN_FAMILY}^{LATIN_GIVEN}||19700521|M|||"
        f"Vestergade 12^^{LATIN_CITY}^^5970^DNK||+4562520000^PRN^PH\r"
        "PV1|1|I|W2^201^A^DKHOSP||||4410^García^José|||MED|||||||||VN77120^^^DKHOSP^VN\r"
    )


@dataclass(frozen=True)
class Case:
    name: str
    encoding: str  # what the bytes really are
    label: str  # what MSH-18 says
    charset: str  # the codec the sidecar must find
    repaired: bool

    @property
    def control_id(self) -> str:
        return f"CS-{self.name}"

    @property
    def chinese(self) -> bool:
        return self.encoding != "latin-1"

    def raw(self) -> bytes:
        build = chinese_adt if self.chinese else latin_adt
        return build(self.control_id, self.label).encode(self.encoding)

    @property
    def family(self) -> str:
        return CHINESE_FAMILY if self.chinese else LATIN_FAMILY

    @property
    def expected_text(self) -> tuple[str, ...]:
        if self.chinese:
            return (f"{CHINESE_FAMILY}^{CHINESE_GIVEN}", CHINESE_ADDRESS, RESIDENT_ID, MOBILE)
        return (f"{LATIN_FAMILY}^{LATIN_GIVEN}", LATIN_CITY, "García^José")


CASES = [
    # GB18030: the everyday case in Chinese hospitals, and its usual mislabels.
    Case("gb18030-labelled", "gb18030", "GB 18030-2000", "gb18030", repaired=False),
    Case("gb18030-unlabelled", "gb18030", "", "gb18030", repaired=True),
    Case("gb18030-as-utf8", "gb18030", "UNICODE UTF-8", "gb18030", repaired=True),
    Case("gb18030-as-8859-1", "gb18030", "8859/1", "gb18030", repaired=True),
    # UTF-8: unlabelled is correct, since the default is UTF-8.
    Case("utf8-labelled", "utf-8", "UNICODE UTF-8", "utf-8", repaired=False),
    Case("utf8-unlabelled", "utf-8", "", "utf-8", repaired=False),
    Case("utf8-as-gb18030", "utf-8", "GB 18030-2000", "utf-8", repaired=True),
    Case("utf8-as-8859-1", "utf-8", "8859/1", "utf-8", repaired=True),
    # Latin-1: decodes as anything single-byte, and often as GB18030 too.
    Case("latin1-labelled", "latin-1", "8859/1", "iso8859-1", repaired=False),
    Case("latin1-unlabelled", "latin-1", "", "iso8859-1", repaired=True),
    Case("latin1-as-utf8", "latin-1", "UNICODE UTF-8", "iso8859-1", repaired=True),
    Case("latin1-as-gb18030", "latin-1", "GB 18030-2000", "iso8859-1", repaired=True),
]


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Embedded]:
    dep = Embedded(tmp_path / "data")
    dep.start()
    yield dep
    dep.stop()


def send(dep: Embedded, *messages: bytes) -> list[list[str]]:
    with MllpClient().connect("127.0.0.1", dep.port, timeout=30) as client:
        return [msa(client.send(raw)) for raw in messages]


def test_the_synthetic_resident_id_is_well_formed() -> None:
    assert len(RESIDENT_ID) == 18 and RESIDENT_ID[:17].isdigit() and int(RESIDENT_ID[16]) % 2 == 0
    assert resident_id_check_digit("11010519491231002") == "X"  # the example of GB 11643
    assert len(MOBILE) == 11 and MOBILE.startswith("1")


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_message_is_kept_untouched_flagged_and_decodable(sidecar: Embedded, case: Case) -> None:
    raw = case.raw()
    [ack] = send(sidecar, raw)
    assert ack[1] in ("AA", "CA")  # enhanced mode (MSH-15 AL) may answer a commit ACK
    assert ack[2] == case.control_id
    sidecar.settle()

    with sidecar.db.sessions() as session:
        row = session.execute(select(InboxEntry)).scalar_one()
    assert row.raw == raw  # byte for byte, whatever the label said
    assert (row.charset, row.repaired) == (case.charset, case.repaired)
    assert row.status == InboxStatus.PROCESSED  # the worker decoded and mapped it too

    decoded = decode_message(row.raw, row.charset)
    assert not decoded.repaired  # the stored charset is the one that fits
    for value in case.expected_text:
        assert value in decoded.text

    # Mapping runs in memory on identified text; the stored resources are de-identified.
    patients = [r for r in map_message(decoded.text).resources if r["resourceType"] == "Patient"]
    assert [name["family"] for name in patients[0]["name"]] == [case.family]

    assert collect(sidecar.db)["inbox"]["repaired"] == int(case.repaired)


def test_repaired_messages_are_counted(sidecar: Embedded) -> None:
    acks = send(sidecar, *(case.raw() for case in CASES))
    assert [ack[1] in ("AA", "CA") for ack in acks] == [True] * len(CASES)
    assert [ack[2] for ack in acks] == [case.control_id for case in CASES]
    sidecar.settle()

    inbox = collect(sidecar.db)["inbox"]
    assert inbox["received"] == inbox["processed"] == len(CASES)
    assert inbox["repaired"] == sum(case.repaired for case in CASES)
    with sidecar.db.sessions() as session:
        rows = {row.control_id: row for row in session.execute(select(InboxEntry)).scalars()}
    for case in CASES:
        row = rows[case.control_id]
        assert (row.raw, row.charset, row.repaired) == (case.raw(), case.charset, case.repaired)
