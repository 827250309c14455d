"""What a received DICOM object must be before it is stored: within the size caps, a data
set that parses to its end, and pixel data as long as its image attributes require.

pydicom reads leniently: a value cut short is returned short, a length of 2 GB over the
last few bytes gives those bytes, and the SCU would get Success for an image we never
had (issue 17). So the Part-10 file pynetdicom spooled is walked here element header by
element header (PS3.5 7.1 elements, 7.5 sequences and items, A.4 encapsulated pixel
data), seeking over values: no value is read into memory but the few image attributes,
so a large object costs file seeks, not the GIL.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from pydicom.datadict import dictionary_VR
from pydicom.filereader import _read_file_meta_info as read_file_meta
from pydicom.filereader import read_preamble
from pydicom.uid import UID

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_MISMATCH",
    "TOO_LARGE",
    "Limits",
    "Problem",
    "check_object",
]

# PS3.4 Annex B.2.3, C-STORE statuses.
TOO_LARGE: Final = 0xA701  # Refused: Out of Resources (A7xx); A700 stays "our storage failed"
DATASET_MISMATCH: Final = 0xA900  # Data Set does not match SOP Class: pixels short of the image
CANNOT_UNDERSTAND: Final = 0xC000  # the data set cannot be parsed

_PIXEL_TAGS: Final = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel, Float, Double Float
_ROWS, _COLUMNS, _SAMPLES, _BITS, _FRAMES = 0x00280010, 0x00280011, 0x00280002, 0x00280100, 0x00280008
_PHOTOMETRIC = 0x00280004
_IMAGE_TAGS: Final = frozenset({_ROWS, _COLUMNS, _SAMPLES, _BITS, _FRAMES, _PHOTOMETRIC})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED: Final = 0xFFFFFFFF
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_MAX_DEPTH: Final = 16  # nested sequences; real objects use a handful
HEAD_BYTES: Final = 1 << 16  # what an oversized object leaves in quarantine: its meta and header


@dataclass(frozen=True)
class Limits:
    max_object_bytes: int
    max_element_bytes: int  # any element but pixel data (which the object cap bounds)


@dataclass(frozen=True)
class Problem:
    """Why an object is refused: the C-STORE status, the quarantine code and the reason
    (tags, lengths and settings only, never a value)."""

    status: int
    code: str
    reason: str


class _Malformed(Exception):
    pass


class _Oversized(Exception):
    pass


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def check_object(path: Path, limits: Limits) -> Problem | None:
    """None if the Part-10 file at ``path`` may be stored, else why not."""
    size = path.stat().st_size
    if size > limits.max_object_bytes:
        return Problem(
            TOO_LARGE,
            "oversized",
            f"object of {size} bytes is over dicom_max_object_bytes ({limits.max_object_bytes})",
        )
    with path.open("rb") as fp:
        try:
            read_preamble(fp, False)
            meta = read_file_meta(fp)
            syntax = UID(str(meta.get("TransferSyntaxUID", "")).strip())
        except Exception as exc:
            return Problem(CANNOT_UNDERSTAND, "bad-dicom", f"file meta cannot be read ({type(exc).__name__})")
        start = fp.tell()
        stream: BinaryIO = fp
        end = size
        if syntax.is_deflated:
            try:
                inflated = _inflate(fp, limits.max_object_bytes)
            except _Oversized:
                return Problem(
                    TOO_LARGE,
                    "oversized",
                    f"deflated data set inflates over dicom_max_object_bytes ({limits.max_object_bytes})",
                )
            except zlib.error:
                return Problem(CANNOT_UNDERSTAND, "bad-dicom", "deflated data set does not inflate")
            stream, start, end = io.BytesIO(inflated), 0, len(inflated)
        little = syntax != "1.2.840.10008.1.2.2"  # Explicit VR Big Endian (retired)
        implicit = syntax == "1.2.840.10008.1.2"
        walker = _Walker(stream, little, implicit, limits.max_element_bytes)
        try:
            stream.seek(start)
            walker.dataset(end, depth=0)
        except _Oversized as exc:
            return Problem(TOO_LARGE, "oversized", str(exc))
        except _Malformed as exc:
            return Problem(CANNOT_UNDERSTAND, "bad-dicom", f"data set does not parse to its end: {exc}")
    return _pixels_complete(walker, syntax)


def _inflate(fp: BinaryIO, cap: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    while chunk := fp.read(1 << 20):
        out += inflater.decompress(chunk, cap + 1 - len(out))
        if len(out) > cap or inflater.unconsumed_tail:
            raise _Oversized
    out += inflater.flush()
    if len(out) > cap:
        raise _Oversized
    return bytes(out)


class _Walker:
    """Walks element headers; keeps the top level's image attributes and pixel data shape."""

    def __init__(self, fp: BinaryIO, little: bool, implicit: bool, max_element: int) -> None:
        self.fp = fp
        self.order = "<" if little else ">"
        self.implicit = implicit
        self.max_element = max_element
        self.image: dict[int, bytes] = {}
        self.pixel_tag: int | None = None
        self.pixel_bytes = 0  # native: the value's length; encapsulated: all fragments
        self.fragments: int | None = None  # encapsulated: items after the offset table

    def _read(self, n: int, what: str) -> bytes:
        data = self.fp.read(n)
        if len(data) < n:
            raise _Malformed(f"{what} cut short")
        return data

    def dataset(self, end: int | None, depth: int) -> None:
        """Elements up to ``end`` (a defined length) or up to an item delimiter (None)."""
        if depth > _MAX_DEPTH:
            raise _Malformed(f"sequences nested deeper than {_MAX_DEPTH}")
        while end is None or self.fp.tell() < end:
            at = self.fp.tell()
            group, element, length, vr = self._header(at, end)
            tag = group << 16 | element
            if tag == _ITEM_END:
                if end is not None:
                    raise _Malformed(f"item delimiter at offset {at} inside a defined-length item")
                return
            if group == 0xFFFE:
                raise _Malformed(f"{_tag(tag)} where an element was expected (offset {at})")
            self._value(tag, vr, length, end, depth)
        assert end is not None  # an undefined-length item ends at its delimiter, above
        if self.fp.tell() != end:
            raise _Malformed(
                f"an element runs past the end of its item or data set by {self.fp.tell() - end}"
            )

    def _header(self, at: int, end: int | None) -> tuple[int, int, int, bytes | None]:
        head = self.fp.read(8)
        if len(head) < 8:
            raise _Malformed(f"element header cut short at offset {at}")
        group, element = struct.unpack(f"{self.order}HH", head[:4])
        vr = head[4:6]
        if self.implicit or group == 0xFFFE or not (b"AA" <= vr <= b"ZZ"):
            # Implicit VR; items and delimiters have no VR; and a writer that switched to
            # implicit VR inside an explicit data set, which pydicom reads too.
            (length,) = struct.unpack(f"{self.order}L", head[4:])
            return group, element, length, None
        if vr in _LONG_VRS:
            (length,) = struct.unpack(f"{self.order}L", self._read(4, "element header"))
        else:
            (length,) = struct.unpack(f"{self.order}H", head[6:])
        return group, element, length, vr

    def _is_sequence(self, tag: int, vr: bytes | None, length: int) -> bool:
        if tag in _PIXEL_TAGS:
            return False  # encapsulated pixel data is items too, but fragments, not data sets
        if vr == b"SQ":
            return True
        if vr not in (None, b"UN"):
            return False
        try:
            if dictionary_VR(tag) == "SQ":
                return True
        except KeyError:
            pass
        if length != _UNDEFINED:
            return False
        at = self.fp.tell()
        peek = self.fp.read(4)
        self.fp.seek(at)
        return len(peek) == 4 and struct.unpack(f"{self.order}HH", peek) == (0xFFFE, 0xE000)

    def _value(self, tag: int, vr: bytes | None, length: int, end: int | None, depth: int) -> None:
        top = depth == 0
        pixel = top and tag in _PIXEL_TAGS
        start = self.fp.tell()
        if length != _UNDEFINED:
            limit = self._size() if end is None else end
            if start + length > limit:
                raise _Malformed(f"{_tag(tag)} declares {length} bytes where {max(limit - start, 0)} remain")
            if length > self.max_element and not pixel:
                raise _Oversized(
                    f"element {_tag(tag)} of {length} bytes is over "
                    f"dicom_max_element_bytes ({self.max_element})"
                )
        if pixel:
            self.pixel_tag = tag
        if self._is_sequence(tag, vr, length):
            self._sequence(tag, None if length == _UNDEFINED else start + length, depth + 1)
            return
        if length == _UNDEFINED:
            self._fragments(tag, pixel)
            return
        if top and tag in _IMAGE_TAGS and length <= 16:
            self.image[tag] = self.fp.read(length)
            return
        if pixel:
            self.pixel_bytes = length
        self.fp.seek(start + length)

    def _sequence(self, tag: int, end: int | None, depth: int) -> None:
        while end is None or self.fp.tell() < end:
            at = self.fp.tell()
            head = self._read(8, f"{_tag(tag)} sequence")
            group, element, length = struct.unpack(f"{self.order}HHL", head)
            item = group << 16 | element
            if item == _SEQUENCE_END and end is None:
                return
            if item != _ITEM:
                raise _Malformed(f"{_tag(tag)} holds {_tag(item)} at offset {at} where an item was expected")
            if length == _UNDEFINED:
                self.dataset(None, depth)
            else:
                item_end = self.fp.tell() + length
                if item_end > (self._size() if end is None else end):
                    raise _Malformed(f"an item of {_tag(tag)} declares {length} bytes past its end")
                self.dataset(item_end, depth)
        if self.fp.tell() != end:
            raise _Malformed(f"{_tag(tag)} items run past its length")

    def _fragments(self, tag: int, pixel: bool) -> None:
        """An undefined-length value that is not a sequence: encapsulated fragments."""
        items = total = 0
        while True:
            head = self._read(8, f"{_tag(tag)} fragments")
            group, element, length = struct.unpack(f"{self.order}HHL", head)
            item = group << 16 | element
            if item == _SEQUENCE_END:
                break
            if item != _ITEM or length == _UNDEFINED:
                raise _Malformed(f"{_tag(tag)} holds {_tag(item)} where a fragment was expected")
            start = self.fp.tell()
            if start + length > self._size():
                raise _Malformed(f"a fragment of {_tag(tag)} declares {length} bytes where fewer remain")
            items += 1
            total += length
            if total > self.max_element and not pixel:
                raise _Oversized(
                    f"element {_tag(tag)} of over {total} bytes is over "
                    f"dicom_max_element_bytes ({self.max_element})"
                )
            self.fp.seek(start + length)
        if pixel:
            self.pixel_bytes = total
            self.fragments = max(items - 1, 0)  # the first item is the Basic Offset Table

    def _size(self) -> int:
        at = self.fp.tell()
        size = self.fp.seek(0, io.SEEK_END)
        self.fp.seek(at)
        return size

    def number(self, tag: int, default: int | None) -> int | None:
        """An image attribute's value: US as binary, NumberOfFrames (IS) as text."""
        value = self.image.get(tag)
        if value is None:
            return default
        if tag == _FRAMES:
            try:
                return int(value.decode("ascii").strip(" \x00"))
            except (UnicodeDecodeError, ValueError):
                return default
        if len(value) != 2:
            return default
        return int(struct.unpack(f"{self.order}H", value)[0])


def _photometric(walker: _Walker) -> str:
    return walker.image.get(_PHOTOMETRIC, b"").decode("ascii", "replace").strip(" \x00")


def _pixels_complete(walker: _Walker, syntax: UID) -> Problem | None:
    rows, columns = walker.number(_ROWS, None), walker.number(_COLUMNS, None)
    bits = walker.number(_BITS, None)
    if not rows or not columns or not bits:
        return None  # not an image, or one whose size we cannot know: nothing to compare
    samples = walker.number(_SAMPLES, 1) or 1
    frames = max(walker.number(_FRAMES, 1) or 1, 1)
    if walker.pixel_tag is None:
        return Problem(DATASET_MISMATCH, "incomplete-pixels", "image attributes but no pixel data")
    if walker.fragments is not None:
        if walker.fragments < frames or walker.pixel_bytes == 0:
            return Problem(
                DATASET_MISMATCH,
                "incomplete-pixels",
                f"{_tag(walker.pixel_tag)} holds {walker.fragments} fragments for {frames} frames",
            )
        return None
    if syntax.is_encapsulated and walker.pixel_tag == 0x7FE00010:
        return Problem(
            CANNOT_UNDERSTAND, "bad-dicom", "native pixel data under an encapsulated transfer syntax"
        )
    if _photometric(walker) == "YBR_FULL_422":
        samples = 2  # two luminance samples share one Cb and one Cr (PS3.3 C.7.6.3.1.2)
    needed = (rows * columns * samples * frames * bits + 7) // 8
    if walker.pixel_bytes < needed:
        return Problem(
            DATASET_MISMATCH,
            "incomplete-pixels",
            f"{_tag(walker.pixel_tag)} holds {walker.pixel_bytes} bytes where {rows} x {columns} x "
            f"{samples} x {bits} bits x {frames} frames need {needed}",
        )
    return None
