"""Private attributes kept under the Retain Safe Private option.

Everything private is removed unless it is on this list. The list is deliberately short:
diffusion parameters that research pipelines need and that vendors do not document
anywhere but in their private blocks. Each entry is taken from PS3.15 Table E.3.10-1
(Safe Private Attributes), identified by (private creator, group, element offset), since
the element number of a private attribute depends on the block the creator reserved.
Entries hold numbers or coded strings only, never free text.
"""

from __future__ import annotations

from typing import Final

SAFE_PRIVATE: Final[frozenset[tuple[str, int, int]]] = frozenset(
    {
        ("SIEMENS MR HEADER", 0x0019, 0x0C),  # B_value
        ("SIEMENS MR HEADER", 0x0019, 0x0D),  # DiffusionDirectionality
        ("SIEMENS MR HEADER", 0x0019, 0x0E),  # DiffusionGradientDirection
        ("SIEMENS MR HEADER", 0x0019, 0x27),  # B_matrix
        ("GEMS_PARM_01", 0x0043, 0x39),  # Slop_int_6..9 (b-value on GE)
        ("Philips Imaging DD 001", 0x2001, 0x03),  # Diffusion B-Factor
    }
)


def is_safe_private(creator: str, group: int, element: int) -> bool:
    """Whether the private data element (group, element) under ``creator`` is on the list."""
    return (creator.strip(), group, element & 0xFF) in SAFE_PRIVATE
