"""The Merkle tree hash of RFC 9162 (Certificate Transparency 2.0, section 2.1) over the audit
log's entries, so that a signed checkpoint of the tree commits to every entry before it.

Standard library only: the offline verifier (issue 21) must run without the project.
Written by hand because the hashing is six lines of the RFC and no kept Python library
offers it without a transparency-log server around it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "EMPTY_ROOT",
    "Frontier",
    "Tree",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

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


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def _subtree(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf *hashes* (already hashed)."""
    level = list(hashes)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0] if level else EMPTY_ROOT


class Tree:
    """Every level of the tree over ``leaves`` (data), kept for proofs of many entries."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.levels: list[list[bytes]] = [[leaf_hash(d) for d in leaves]]
        while len(self.levels[-1]) > 1:
            level = self.levels[-1]
            paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                paired.append(level[-1])
            self.levels.append(paired)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    @property
    def root(self) -> bytes:
        return self.levels[-1][0] if self.size else EMPTY_ROOT

    def inclusion(self, index: int) -> list[bytes]:
        """The audit path of leaf ``index`` (RFC 9162 2.1.3.1), leaf side first."""
        if not 0 <= index < self.size:
            raise IndexError(index)
        path: list[bytes] = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):  # else this node is carried up unchanged
                path.append(level[sibling])
            index //= 2
        return path

    def consistency(self, old_size: int) -> list[bytes]:
        """The consistency proof from the first ``old_size`` leaves to this tree (RFC 9162
        2.1.4.1)."""
        if not 0 < old_size <= self.size:
            raise ValueError(f"no consistency proof from size {old_size} to {self.size}")
        return self._subproof(old_size, 0, self.size, True)

    def _subproof(self, m: int, start: int, end: int, whole: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if whole else [_subtree(self.levels[0][start:end])]
        k = _largest_power_of_two_below(n)
        if m <= k:
            right = _subtree(self.levels[0][start + k : end])
            return [*self._subproof(m, start, start + k, whole), right]
        left = _subtree(self.levels[0][start : start + k])
        return [*self._subproof(m - k, start + k, end, False), left]


def verify_inclusion(data: bytes, index: int, size: int, path: Sequence[bytes], expected_root: bytes) -> bool:
    """RFC 9162 2.1.3.2: does leaf ``data`` sit at ``index`` of the tree of ``size`` with
    ``expected_root``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf_hash(data)
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == expected_root


def verify_consistency(
    old_size: int, size: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2: is the tree of ``size`` with ``new_root`` an extension of the one of
    ``old_size`` with ``old_root``?"""
    if not 0 < old_size <= size:
        return False
    if old_size == size:
        return not path and old_root == new_root
    if not path:
        return False
    proof = list(path)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        proof.insert(0, old_root)
    fn, sn = old_size - 1, size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == old_root and sr == new_root and sn == 0


class Frontier:
    """The roots of the perfect subtrees along the tree's right edge: enough to append leaves
    and compute the root without keeping every leaf (a checkpoint loop over years of log)."""

    def __init__(self) -> None:
        self.size = 0
        self._nodes: list[bytes] = []  # largest subtree first

    def append(self, data: bytes) -> None:
        node, size = leaf_hash(data), self.size
        while size & 1:
            node = node_hash(self._nodes.pop(), node)
            size >>= 1
        self._nodes.append(node)
        self.size += 1

    @property
    def root(self) -> bytes:
        if not self._nodes:
            return EMPTY_ROOT
        node = self._nodes[-1]
        for left in reversed(self._nodes[:-1]):
            node = node_hash(left, node)
        return node
