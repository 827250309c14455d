"""A lean, lazy HL7 v2 tokenizer: segments and fields are split once, components on demand.

Hand-written instead of ``hl7.parse`` (python-hl7) because that builds container objects for
every field, component and subcomponent of the message up front: measured 3 ms for a
16-segment ORU, more than the whole mapping budget, and most of those fields are never read.
It also cannot be told to tolerate the damaged MSH-2 values that real feeds carry.

Field numbers are 1-based as in the standard; ``MSH-1`` is the field separator itself and
``MSH-2`` the encoding characters, so MSH field numbers line up with every other segment's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from core.errors import MappingError
from mapping.hl7.escape import Delimiters, unescape

_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")
_BATCH_ENVELOPE = frozenset({"FHS", "BHS", "BTS", "FTS"})
_DEFAULT_ENCODING = "^~\\&"


class Composite:
    """One repetition of a field, split into components and subcomponents, unescaped."""

    __slots__ = ("_parts",)

    def __init__(self, parts: tuple[tuple[str, ...], ...]) -> None:
        self._parts = parts

    def get(self, component: int, subcomponent: int = 1) -> str:
        """The text of ``component.subcomponent`` (1-based); "" when absent."""
        parts = self._parts
        # Bounds checked rather than IndexError caught: most reads are of absent components.
        if 0 < component <= len(parts):
            subs = parts[component - 1]
            if 0 < subcomponent <= len(subs):
                return subs[subcomponent - 1]
            if subcomponent > 0:
                return ""
        elif component > 0:
            return ""
        try:  # 0 and negative positions index from the end, as they always did
            return parts[component - 1][subcomponent - 1]
        except IndexError:
            return ""

    def heads(self, count: int) -> list[str]:
        """``get(1)`` to ``get(count)`` at once: the first subcomponent of each component."""
        found = [subs[0] if subs else "" for subs in self._parts[:count]]
        if len(found) < count:
            found += [""] * (count - len(found))
        return found

    @property
    def empty(self) -> bool:
        return not any(map(any, self._parts))

    def joined(self, separator: str = " ") -> str:
        """Every non-empty leaf, in order: the readable text of a value of unknown type."""
        return separator.join(leaf for subs in self._parts for leaf in subs if leaf)


class _Flat(Composite):
    """A repetition without subcomponents (most of them): one leaf per component, held flat
    instead of as a tuple of one-leaf tuples, which is cheaper to build and to read. It overrides
    every reader of Composite (``_parts`` is never set)."""

    __slots__ = ("_leaves",)

    def __init__(self, leaves: tuple[str, ...]) -> None:
        self._leaves = leaves

    @property
    def _nested(self) -> Composite:
        return Composite(tuple([(leaf,) for leaf in self._leaves]))

    def get(self, component: int, subcomponent: int = 1) -> str:
        leaves = self._leaves
        if 0 < component <= len(leaves) and subcomponent == 1:
            return leaves[component - 1]
        if component > 0 and subcomponent > 0:
            return ""
        return self._nested.get(component, subcomponent)  # positions from the end, as Composite

    def heads(self, count: int) -> list[str]:
        found = list(self._leaves[:count])
        if len(found) < count:
            found += [""] * (count - len(found))
        return found

    @property
    def empty(self) -> bool:
        return not any(self._leaves)

    def joined(self, separator: str = " ") -> str:
        return separator.join([leaf for leaf in self._leaves if leaf])


EMPTY = Composite(())


def _leaf(raw: str, delims: Delimiters) -> str:
    text = unescape(raw, delims).strip() if delims.escape in raw else raw.strip()
    # '""' is HL7's explicit null ("delete the stored value"); for a mapping it is "no value".
    return "" if text == '""' else text


class Segment:
    __slots__ = ("_fields", "_line", "_parsed", "delims", "name")

    def __init__(self, name: str, fields: list[str], delims: Delimiters, line: str | None = None) -> None:
        self.name = name
        self._fields = fields  # index n holds field n (index 0 holds the name)
        self.delims = delims
        self._parsed: dict[int, list[Composite]] = {}  # mappers and the PHI pass read fields twice
        self._line = line  # the text every field was split from, when known

    def raw(self, n: int) -> str:
        """Field ``n`` exactly as it was on the wire (escaped, all repetitions)."""
        return self._fields[n] if n < len(self._fields) else ""

    def _composite(self, raw: str) -> Composite:
        d = self.delims
        sub = d.subcomponent
        if sub not in raw and d.escape not in raw and '"' not in raw:
            # No subcomponents, escapes or nulls: each component is one stripped leaf.
            return _Flat(tuple([component.strip() for component in raw.split(d.component)]))
        parts = []
        for component in raw.split(d.component):
            if sub in component:
                parts.append(tuple([_leaf(s, d) for s in component.split(sub)]))
            else:
                parts.append((_leaf(component, d),))
        return Composite(tuple(parts))

    def repetitions(self, n: int) -> list[Composite]:
        """The non-empty repetitions of field ``n``."""
        cached = self._parsed.get(n)
        if cached is not None:
            return cached
        fields = self._fields
        raw = fields[n] if n < len(fields) else ""
        found: list[Composite] = []
        if raw:
            separator = self.delims.repetition
            for rep in raw.split(separator) if separator in raw else (raw,):
                if rep:
                    composite = self._composite(rep)
                    if not composite.empty:
                        found.append(composite)
        self._parsed[n] = found
        return found

    def first(self, n: int) -> Composite:
        """The first non-empty repetition of field ``n`` (``EMPTY`` when none)."""
        reps = self._parsed.get(n)
        if reps is None:
            reps = self.repetitions(n)
        return reps[0] if reps else EMPTY

    def value(self, n: int, component: int = 1, subcomponent: int = 1) -> str:
        """One leaf of the first repetition of field ``n``."""
        fields = self._fields
        if n >= len(fields):
            return ""
        raw = fields[n]
        if not raw:
            return ""
        d = self.delims
        if (
            component == 1
            and subcomponent == 1
            and d.component not in raw
            and d.repetition not in raw
            and d.subcomponent not in raw
        ):
            # The common simple field: skip building a Composite.
            text = unescape(raw, d).strip() if d.escape in raw else raw.strip()
            return "" if text == '""' else text
        return self.first(n).get(component, subcomponent)

    def texts(self, n: int) -> list[str]:
        """The non-empty repetitions of field ``n`` as whole text, escapes resolved but not split
        into components: for ST/TX/FT, where a stray component separator belongs to the text."""
        raw = self.raw(n)
        if not raw:
            return []
        found = (_leaf(r, self.delims) for r in raw.split(self.delims.repetition))
        return [t for t in found if t]

    def text(self, n: int) -> str:
        """The first non-empty repetition of field ``n`` as whole text ("" when none)."""
        fields = self._fields
        raw = fields[n] if n < len(fields) else ""
        if not raw:
            return ""
        if self.delims.repetition not in raw:
            return _leaf(raw, self.delims)  # one repetition: no list to build
        texts = self.texts(n)
        return texts[0] if texts else ""

    @property
    def field_count(self) -> int:
        """The number of the last field present (valued or not)."""
        return len(self._fields) - 1

    def may_hold_null(self) -> bool:
        """False when no field can be the explicit null (``is_null`` is False for every field)."""
        return self._line is None or '""' in self._line

    def is_null(self, n: int) -> bool:
        """Whether field ``n`` is HL7's explicit null ``""`` as a whole: in an update, "delete
        the stored value" (chapter 2), where an absent field means "no change"."""
        return self.raw(n).strip() == '""'

    def field_has_content(self, n: int) -> bool:
        """Whether field ``n`` carries anything beyond delimiters, blanks and ``""``."""
        raw = self.raw(n)
        if not raw:
            return False
        d = self.delims
        return bool(raw.strip(f' \t"{d.component}{d.repetition}{d.subcomponent}'))

    def valued_fields(self) -> list[int]:
        """The numbers of the fields (from 2 on) that carry content, as ``field_has_content``."""
        d = self.delims
        blank = f' \t"{d.component}{d.repetition}{d.subcomponent}'
        return [n for n, raw in enumerate(self._fields[2:], start=2) if raw and raw.strip(blank)]

    def has_content(self) -> bool:
        """Whether anything beyond a bare set ID is valued (``NK1|1``, ``EVN|`` or
        ``PV1|1||^^`` carry nothing)."""
        d = self.delims
        blank = f' \t"{d.component}{d.repetition}{d.subcomponent}'
        fields = self._fields
        if any(f.strip(blank) for f in fields[2:]):
            return True
        first = fields[1].strip(blank) if len(fields) > 1 else ""
        return bool(first) and not first.isdigit()


class Message:
    """One tokenized message: its delimiters and its segments in order (MSH first)."""

    __slots__ = ("delims", "segments", "text")

    def __init__(self, delims: Delimiters, segments: list[Segment], text: str) -> None:
        self.delims = delims
        self.segments = segments
        self.text = text

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)


def _delimiters(msh_line: str) -> Delimiters:
    if len(msh_line) < 4:
        raise MappingError("MSH is truncated: no field separator")
    field = msh_line[3]
    if field.isalnum() or field.isspace() or field == "\ufffd":
        raise MappingError("MSH-1 field separator is not a usable character")
    declared = msh_line[4:].split(field, 1)[0]
    if "\ufffd" in declared:
        raise MappingError("MSH-2 encoding characters contain U+FFFD (damaged by a wrong decoding)")
    chars: list[str] = []
    for ch in declared:
        if ch.isalnum() or ch.isspace():
            raise MappingError("MSH-2 encoding characters contain a letter, digit or space")
        # Seen in real feeds: '^~\\&' (an escaped backslash copied from source code). A repeated
        # character can only be a typo, so the first occurrence wins.
        if ch != field and ch not in chars:
            chars.append(ch)
    if not chars:
        raise MappingError("MSH-2 encoding characters missing")
    for ch in _DEFAULT_ENCODING:  # fill what a short MSH-2 leaves out, without clashing
        if len(chars) >= 4:
            break
        if ch not in chars and ch != field:
            chars.append(ch)
    if len(chars) < 4:
        raise MappingError("MSH-2 encoding characters incomplete")
    return Delimiters(
        field=field,
        component=chars[0],
        repetition=chars[1],
        escape=chars[2],
        subcomponent=chars[3],
        truncation=chars[4] if len(chars) > 4 else "",
    )


def _lines(text: str) -> list[str]:
    # With CR present, CR (or CRLF) ends segments and a bare LF is data inside a text field;
    # only a file that has no CR at all is read as LF-terminated.
    if "\r" in text:
        return text.replace("\r\n", "\r").split("\r")
    return text.split("\n")


def _is_segment_start(line: str, field: str) -> bool:
    return bool(_SEGMENT_NAME.fullmatch(line[:3])) and (len(line) == 3 or line[3] == field)


def parse(text: str) -> Message:
    """Tokenize one message. Tolerates a BOM, surrounding whitespace, CR/CRLF/LF terminators,
    blank lines and a batch envelope around a single message."""
    text = text.lstrip("\ufeff").strip()
    lines = [line for line in _lines(text) if line.strip()]
    while lines and lines[0][:3] in _BATCH_ENVELOPE:
        lines.pop(0)
    while lines and lines[-1][:3] in _BATCH_ENVELOPE:
        lines.pop()
    if not lines or not lines[0].startswith("MSH"):
        raise MappingError("not an HL7 message: does not start with MSH")
    delims = _delimiters(lines[0])
    fs = delims.field

    joined: list[str] = []
    for line in lines:
        if joined and not _is_segment_start(line, fs):
            # In LF-terminated text a wrapped free-text value continues on the next line.
            joined[-1] += "\n" + line
        else:
            joined.append(line)

    segments: list[Segment] = []
    for line in joined:
        name = line[:3]
        if name in _BATCH_ENVELOPE:
            raise MappingError(f"{name} inside the message: split the batch into messages first")
        if name == "MSH":
            if segments:
                raise MappingError("more than one MSH: split the batch into messages first")
            parts = line.split(fs)
            # MSH-1 is the separator itself and MSH-2 must not be split or unescaped.
            fields = ["MSH", fs, *parts[1:]]
        else:
            fields = line.split(fs)
        segments.append(Segment(name, fields, delims, line))
    return Message(delims, segments, text)
