"""Private attributes kept under the Retain Safe Private option.

Everything private is removed unless it is on this list. The list is deliberately short:
the diffusion parameters that research pipelines need and that vendors record only in
their private blocks. Every entry is a row of PS3.15 Table E.3.10-1 "Safe Private
Attributes" (checked against the 2026a edition), identified as the table does by
(private creator, group, element within the block), since the element number of a
private attribute depends on the block its creator reserved. Entries hold numbers or
coded strings only, never free text; the comments give the table's VR and meaning.
"""

from __future__ import annotations

from typing import Final

# PS3.15 Table E.3.10-1 (Safe Private Attributes), the diffusion rows.
SAFE_PRIVATE: Final[frozenset[tuple[str, int, int]]] = frozenset(
    {
        ("SIEMENS MR HEADER", 0x0019, 0x0C),  # (0019,xx0C) IS B Value
        ("SIEMENS MR HEADER", 0x0019, 0x0D),  # (0019,xx0D) CS Diffusion Directionality
        ("SIEMENS MR HEADER", 0x0019, 0x0E),  # (0019,xx0E) FD Diffusion Gradient Direction
        ("SIEMENS MR HEADER", 0x0019, 0x27),  # (0019,xx27) FD B Matrix
        ("GEMS_PARM_01", 0x0043, 0x39),  # (0043,xx39) IS 1st value is B Value
        ("Philips Imaging DD 001", 0x2001, 0x03),  # (2001,xx03) FL MR Image Diffusion B-Factor
        ("Philips Imaging DD 001", 0x2001, 0x04),  # (2001,xx04) CS MR Image Diffusion Direction
    }
)


def is_safe_private(creator: str, group: int, element: int) -> bool:
    """Whether the private data element (group, element) under ``creator`` is on the list."""
    return (creator.strip(), group, element & 0xFF) in SAFE_PRIVATE
