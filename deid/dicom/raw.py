"""Everything the DICOM de-identification touches inside pydicom's ``Dataset``, in one place.

pydicom keeps a dataset's elements in ``Dataset._dict``: tag to a decoded ``DataElement``, or
to the ``RawDataElement`` read from the file and not yet decoded. The de-identification's
fast path reads and rebuilds that dict directly, so that an element it keeps is carried over
as its raw bytes, never decoded and encoded again (docs/deid-performance.md), and so that a
conversion it needs for a decision is not stored back into the caller's dataset. pydicom has
no public API for either. tests/test_deid_dicom_raw.py checks each of these against the
installed pydicom, so an upgrade that moves them fails there first.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, TypeVar

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

__all__ = ["Elements", "character_set", "elements", "file_meta", "replace_elements", "shallow_copy"]

Elements = MutableMapping[BaseTag, DataElement | RawDataElement]
_D = TypeVar("_D", bound=Dataset)


def elements(ds: Dataset) -> Elements:
    """The dataset's own element dict (raw elements left raw)."""
    return ds._dict


def replace_elements(ds: Dataset, new: dict[Any, Any]) -> Elements:
    """Give ``ds`` the element dict ``new`` (and no private-block cache); returns the old
    one. Plain attributes: ``Dataset.__setattr__`` would look the names up as keywords."""
    old = ds._dict
    object.__setattr__(ds, "_dict", new)
    object.__setattr__(ds, "_private_blocks", {})
    return old


def shallow_copy(ds: _D) -> _D:
    """A copy of ``ds`` (encoding, preamble, file name... as attributes) sharing its element
    dict until ``replace_elements`` gives it one of its own."""
    import copy

    out = copy.copy(ds)
    object.__setattr__(out, "_private_blocks", {})
    return out


def character_set(ds: Dataset) -> Any:
    """The character set its text elements are decoded with (as the file declared it, else
    the one pydicom settled on)."""
    return ds.original_character_set or ds._character_set


def file_meta(ds: Dataset) -> Any:
    """The file meta a dataset carries, if any (not only a FileDataset may), without
    ``Dataset.__getattr__``'s keyword lookup."""
    return ds.__dict__.get("file_meta")
