"""Append-only, tamper-evident audit log."""

from audit.log import ChainReport, Outcome, append, verify

__all__ = ["ChainReport", "Outcome", "append", "verify"]
