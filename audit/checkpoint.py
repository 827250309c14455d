"""Signed checkpoints of the audit log (C2SP tlog-checkpoint in a C2SP signed note, Ed25519):
the log's size and RFC 9162 root, signed with a key kept outside the database, for an
auditor to keep. A later log that is not an extension of a kept checkpoint (entries removed
at the end, or rewritten with every hash after them recomputed) no longer has that root for
that size, and ``verify_against`` says so.

Standard library plus ``cryptography`` only, like the offline verifier this is for.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["KEY_NAME", "ORIGIN", "Checkpoint", "CheckpointError", "load_or_create_key", "parse", "sign"]

ORIGIN = "hl7-fhir-sidecar/audit-log"
KEY_NAME = "hl7-fhir-sidecar-audit"
_ED25519 = b"\x01"  # the signed-note signature type of Ed25519


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or whose signature does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    @property
    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def _key_id(public: Ed25519PublicKey) -> bytes:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(KEY_NAME.encode() + b"\n" + _ED25519 + raw).digest()[:4]


def sign(checkpoint: Checkpoint, key: Ed25519PrivateKey) -> str:
    """The signed note: the checkpoint's body, a blank line, one signature line."""
    signature = key.sign(checkpoint.body.encode())
    blob = base64.b64encode(_key_id(key.public_key()) + signature).decode()
    return f"{checkpoint.body}\n\u2014 {KEY_NAME} {blob}\n"


def parse(text: str, public: Ed25519PublicKey) -> Checkpoint:
    """The checkpoint of a signed note, if ``public`` signed it."""
    body, sep, signatures = text.partition("\n\n")
    lines = body.split("\n")
    if not sep or len(lines) < 3:
        raise CheckpointError("not a signed checkpoint (origin, size, root, blank line, signature)")
    try:
        checkpoint = Checkpoint(lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True))
    except ValueError as exc:
        raise CheckpointError(f"unreadable checkpoint body: {exc}") from None
    wanted = _key_id(public)
    for line in signatures.splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "\u2014" or parts[1] != KEY_NAME:
            continue
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except ValueError:
            continue
        if blob[:4] == wanted:
            try:
                public.verify(blob[4:], (body + "\n").encode())
            except InvalidSignature:
                raise CheckpointError("the checkpoint's signature does not verify") from None
            return checkpoint
    raise CheckpointError("the checkpoint carries no signature of this log's key")


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The log's signing key (PEM, PKCS#8), created with mode 0600 on first use."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise CheckpointError(f"{path} holds no Ed25519 private key")
    return loaded
