"""Check an audit export bundle offline: ``python -m audit.verify_bundle BUNDLE [--key PEM]``.

Standard library plus ``cryptography`` only, no database and nothing else of the project but
this package's hashing and checkpoint modules, so an auditor can run it on a machine of their
own. It checks, and exits 1 naming the first failure otherwise:

1. the bundle's signature over every byte before it (one byte changed anywhere fails);
2. the signed checkpoint it carries (the log's size and RFC 9162 root);
3. each entry: its hash from its fields, and its inclusion proof in that checkpoint's tree;
4. that each entry concerns the bundle's patient and is not older than its ``since``;
5. each earlier checkpoint: its signature, and the consistency proof that the log of the
   bundle's checkpoint extends it (nothing removed or rewritten since).

``--key``: the log's public key (PEM) as the auditor got it from the hospital; without it the
key inside the bundle is used, and its fingerprint printed to compare.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.checkpoint import KEY_NAME, ORIGIN, CheckpointError, parse
from audit.entry_hash import entry_digest
from audit.merkle import verify_consistency, verify_inclusion

__all__ = ["FORMAT", "BundleError", "Verified", "main", "signed_bundle", "verify"]

FORMAT = "hl7-fhir-sidecar/audit-bundle/v1"
_TRAILER = f"\n\u2014 {KEY_NAME} "
_KEYS = {"format", "patient", "since", "made", "public_key", "checkpoint", "entries", "checkpoints"}
_ENTRY_KEYS = {
    "seq",
    "at",
    "actor",
    "action",
    "outcome",
    "entity",
    "detail",
    "prev_hash",
    "hash",
    "inclusion",
}


class BundleError(ValueError):
    """Why a bundle does not verify."""


@dataclass(frozen=True)
class Verified:
    entries: int
    size: int
    root: bytes
    earlier: int
    fingerprint: str


def fingerprint(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def signed_bundle(payload: str, sign: Any) -> str:
    """``payload`` (JSON text) and a trailer line with ``sign(bytes)``'s signature of it."""
    body = payload if payload.endswith("\n") else payload + "\n"
    return body + _TRAILER.lstrip("\n") + base64.b64encode(sign(body.encode())).decode() + "\n"


def _split(text: str) -> tuple[str, bytes]:
    cut = text.rfind(_TRAILER)
    if cut < 0 or not text.endswith("\n"):
        raise BundleError("no signature line at the end of the bundle")
    try:
        signature = base64.b64decode(text[cut + len(_TRAILER) :].strip(), validate=True)
    except ValueError:
        raise BundleError("the signature line is not base64") from None
    return text[: cut + 1], signature


def _key(pem: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise BundleError(f"unreadable public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError("the public key is not an Ed25519 key")
    return key


def _proof(items: Any, what: str) -> list[bytes]:
    if not isinstance(items, list):
        raise BundleError(f"{what}: not a list of hashes")
    try:
        return [base64.b64decode(i, validate=True) for i in items]
    except (ValueError, TypeError):
        raise BundleError(f"{what}: not base64 hashes") from None


def verify(text: str, pinned: Ed25519PublicKey | None = None) -> Verified:
    """Every check of the module's docstring; raises BundleError on the first that fails."""
    payload, signature = _split(text)
    try:
        bundle = json.loads(payload)
    except ValueError:
        raise BundleError("the bundle is not JSON") from None
    if not isinstance(bundle, dict) or set(bundle) != _KEYS or bundle["format"] != FORMAT:
        raise BundleError(f"not a {FORMAT} bundle")
    key = _key(bundle["public_key"])
    if pinned is not None and fingerprint(pinned) != fingerprint(key):
        raise BundleError("the bundle was signed with another key than the one given")
    try:
        key.verify(signature, payload.encode())
    except InvalidSignature:
        raise BundleError("the bundle's signature does not verify: it was changed after export") from None
    try:
        checkpoint = parse(bundle["checkpoint"], key)
    except CheckpointError as exc:
        raise BundleError(f"checkpoint: {exc}") from None
    if checkpoint.origin != ORIGIN:
        raise BundleError(f"checkpoint of another log: {checkpoint.origin}")
    if not isinstance(bundle["entries"], list) or not isinstance(bundle["checkpoints"], list):
        raise BundleError("entries and checkpoints must be lists")
    for entry in bundle["entries"]:
        try:
            _check_entry(entry, checkpoint.size, checkpoint.root, bundle["patient"], bundle["since"])
        except (ValueError, TypeError, AttributeError) as exc:
            if isinstance(exc, BundleError):
                raise
            raise BundleError(f"a malformed entry: {type(exc).__name__}") from None
    for number, earlier in enumerate(bundle["checkpoints"], 1):
        try:
            old = parse(earlier["note"], key)
        except (CheckpointError, KeyError, TypeError) as exc:
            raise BundleError(f"earlier checkpoint {number}: {exc}") from None
        proof = _proof(earlier.get("consistency"), f"earlier checkpoint {number}")
        if not verify_consistency(old.size, checkpoint.size, old.root, checkpoint.root, proof):
            raise BundleError(
                f"the log of size {checkpoint.size} does not extend earlier checkpoint {number} "
                f"(size {old.size}): entries were removed or rewritten"
            )
    return Verified(
        len(bundle["entries"]), checkpoint.size, checkpoint.root, len(bundle["checkpoints"]), fingerprint(key)
    )


def _check_entry(entry: Any, size: int, root: bytes, patient: str | None, since: str | None) -> None:
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        raise BundleError("an entry has missing or unknown fields")
    seq = entry["seq"]
    fields = (seq, entry["at"], entry["actor"], entry["action"], entry["outcome"], entry["entity"])
    if entry_digest(*fields, entry["detail"], entry["prev_hash"]) != entry["hash"]:
        raise BundleError(f"entry {seq}: its fields do not match its hash")
    proof = _proof(entry["inclusion"], f"entry {seq}")
    if not isinstance(seq, int) or not verify_inclusion(entry["hash"].encode(), seq - 1, size, proof, root):
        raise BundleError(f"entry {seq}: not included in the checkpoint's tree")
    if patient is not None:
        named = json.loads(entry["detail"]).get("patients", [])
        if patient not in named and entry["entity"] != f"Patient/{patient}":
            raise BundleError(f"entry {seq} does not concern patient {patient}")
    if since is not None and entry["at"] < since:
        raise BundleError(f"entry {seq} is older than {since}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audit.verify_bundle", description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--key", type=Path, help="the log's public key (PEM), as the hospital gave it")
    args = parser.parse_args(argv)
    try:
        pinned = _key(args.key.read_text()) if args.key else None
        result = verify(args.bundle.read_text(encoding="utf-8"), pinned)
    except (BundleError, OSError, UnicodeDecodeError) as exc:
        print(f"bundle REJECTED: {exc}", file=sys.stderr)
        return 1
    print(
        f"bundle verified: {result.entries} entries, each included in the signed checkpoint of "
        f"{result.size} entries (root {base64.b64encode(result.root).decode()}); "
        f"{result.earlier} earlier checkpoint(s) consistent with it"
    )
    if not args.key:
        print(f"signed by the key in the bundle, fingerprint {result.fingerprint}: compare it with yours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
