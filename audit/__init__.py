"""Append-only, tamper-evident audit log."""

from audit.log import ChainReport, Outcome, append, append_dbapi, verify

__all__ = ["ChainReport", "Outcome", "append", "append_dbapi", "verify"]
