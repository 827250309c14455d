"""The Merkle tree hash of RFC 9162 (Certificate Transparency 2.0, section 2.1) over the audit
log's entries, so that a signed checkpoint of the tree commits to every entry before it.

Standard library only: the offline verifier (issue 21) must run without the project.
Written by hand because the hashing is six lines of the RFC and no kept Python library
offers it without a transparency-log server around it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["EMPTY_ROOT", "leaf_hash", "node_hash", "root"]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 2.1.1, for leaf *data* (hashed here), built bottom-up: the
    largest power of two below n splits each level, which is what pairing left to right and
    carrying an odd last node up unchanged gives."""
    if not leaves:
        return EMPTY_ROOT
    level = [leaf_hash(d) for d in leaves]
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]
